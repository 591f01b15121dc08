//! `bao-kms-provider.toml(5)`, rendered from docs/configuration.md, so the man page and the doc
//! are one text. Handles the Markdown that doc uses: headings, the field table (one `.TP` entry
//! per field), paragraphs, `-` lists with indented continuation lines, and code blocks.
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};

const SOURCE: &str = include_str!("../../docs/configuration.md");
pub const FILE_NAME: &str = "bao-kms-provider.toml.5";

/// Inline Markdown to roff: code spans and bold become bold, a link becomes its text (with the
/// target when it is a URL; other docs are named as docs/NAME).
fn inline(md: &str) -> Vec<Inline> {
    let mut out = Vec::new();
    let mut rest = md;
    while !rest.is_empty() {
        let next = rest.find(['`', '[', '*']).unwrap_or(rest.len());
        if next > 0 {
            out.push(roman(&rest[..next]));
            rest = &rest[next..];
            continue;
        }
        if let Some(code) = rest.strip_prefix('`') {
            if let Some((span, after)) = code.split_once('`') {
                out.push(bold(span));
                rest = after;
                continue;
            }
        } else if let Some(strong) = rest.strip_prefix("**") {
            if let Some((span, after)) = strong.split_once("**") {
                out.push(bold(span));
                rest = after;
                continue;
            }
        } else if let Some(link) = rest.strip_prefix('[') {
            if let Some((text, after)) = link.split_once("](") {
                if let Some((target, after)) = after.split_once(')') {
                    out.extend(inline(text));
                    out.push(roman(link_target(text, target)));
                    rest = after;
                    continue;
                }
            }
        }
        out.push(roman(&rest[..1]));
        rest = &rest[1..];
    }
    out
}

fn link_target(text: &str, target: &str) -> String {
    let file = target.split('#').next().unwrap_or_default();
    if target.starts_with("http") {
        format!(" <{target}>")
    } else if file.is_empty() || text.contains(file) {
        String::new()
    } else {
        format!(" (docs/{file})")
    }
}

fn cells(row: &str) -> Vec<&str> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split(" | ").map(str::trim).collect()
}

/// Collects text lines into one paragraph or list item until a blank line or a new block.
struct Page {
    roff: Roff,
    para: Vec<String>,
    code: bool,
}

impl Page {
    fn flush(&mut self) {
        if !self.para.is_empty() {
            let text = self.para.join(" ");
            self.roff.text(inline(&text));
            self.para.clear();
        }
    }

    fn code_line(&mut self, line: &str) {
        self.roff.text([roman(line)]);
    }

    fn line(&mut self, line: &str) {
        if self.code {
            if line.starts_with("```") {
                self.roff.control("fi", []).control("RE", []);
                self.code = false;
            } else {
                self.code_line(line);
            }
            return;
        }
        if line.starts_with("```") {
            self.flush();
            self.roff.control("RS", ["4"]).control("nf", []);
            self.code = true;
        } else if let Some(code) = line.strip_prefix("    ").filter(|_| self.para.is_empty()) {
            self.roff.control("RS", ["4"]).control("nf", []);
            self.code_line(code);
            self.roff.control("fi", []).control("RE", []);
        } else if let Some(h) = line.strip_prefix("### ") {
            self.flush();
            self.roff.control("SS", [h.replace('`', "").as_str()]);
        } else if let Some(h) = line.strip_prefix("## ") {
            self.flush();
            let title = h.replace('`', "").to_uppercase();
            self.roff.control("SH", [title.as_str()]);
        } else if line.starts_with("| field") || line.starts_with("|---") {
            self.flush();
        } else if line.starts_with('|') {
            self.flush();
            let c = cells(line);
            if let [field, default, meaning] = c[..] {
                self.roff.control("TP", []);
                self.roff.text(inline(field));
                let mut body = vec![roman("Default: ")];
                body.extend(inline(default));
                body.push(roman(". "));
                body.extend(inline(meaning));
                self.roff.text(body);
            }
        } else if let Some(item) = line.strip_prefix("- ") {
            self.flush();
            self.roff.control("IP", ["\\(bu", "2"]);
            self.para.push(item.to_owned());
        } else if line.trim().is_empty() {
            self.flush();
            self.roff.control("PP", []);
        } else if !line.starts_with('#') && !line.starts_with("<!--") {
            self.para.push(line.trim().to_owned());
        }
    }
}

pub fn render(date: &str) -> Roff {
    let mut page = Page {
        roff: Roff::default(),
        para: Vec::new(),
        code: false,
    };
    page.roff.control(
        "TH",
        [
            "BAO-KMS-PROVIDER.TOML",
            "5",
            date,
            "bao-kms-provider",
            "File Formats",
        ],
    );
    page.roff.control("SH", ["NAME"]);
    page.roff.text([roman(
        "bao-kms-provider.toml - configuration of bao-kms-provider",
    )]);
    page.roff.control("SH", ["SYNOPSIS"]);
    page.roff.text([italic("/etc/openbao-kms/config.toml")]);
    page.roff.control("SH", ["DESCRIPTION"]);
    for line in SOURCE.lines().skip_while(|l| l.starts_with("# ")) {
        page.line(line);
    }
    page.flush();
    page.roff.control("SH", ["SEE ALSO"]);
    page.roff.text([
        bold("bao-kms-provider"),
        roman("(8), "),
        bold("bao-kms-provider-check-config"),
        roman("(8); the documentation in /usr/share/doc/bao-kms-provider/docs/."),
    ]);
    page.roff
}
