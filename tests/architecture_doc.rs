//! docs/architecture.md against the code: its module map against the `mod` lines of src/lib.rs,
//! its dependency list against the modules each module names, and its public API list against
//! the `pub` items of the public modules. Each failure names what is missing on which side.
//! Reads source text only (no build of the crate under another configuration).
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const DOC: &str = "docs/architecture.md";
/// The crate's name as the binary spells it in `src/main.rs`.
const CRATE: &str = "bao_kms_provider";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: impl AsRef<Path>) -> String {
    let p = root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn doc() -> String {
    read(DOC)
}

/// The fenced block that follows `<!-- architecture_doc: NAME -->` in the doc.
fn doc_block(doc: &str, name: &str) -> Vec<String> {
    let marker = format!("<!-- architecture_doc: {name} -->");
    let after = doc
        .split_once(&marker)
        .unwrap_or_else(|| panic!("{DOC} has no `{marker}` line"))
        .1;
    let mut lines = after.lines().skip_while(|l| l.trim().is_empty());
    let fence = lines.next().unwrap_or_default();
    assert!(
        fence.starts_with("```"),
        "{DOC}: a fenced block must follow `{marker}`"
    );
    lines
        .take_while(|l| !l.starts_with("```"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// A module declared in src/lib.rs: name, `pub`, declared inline (`pub mod pb { ... }`), and the
/// cargo feature its `#[cfg(feature = "...")]` requires.
#[derive(Debug)]
struct Module {
    name: String,
    public: bool,
    inline: bool,
    feature: Option<String>,
}

/// The `#[cfg(feature = "X")]` on a line, if any.
fn cfg_feature(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("#[cfg(feature = \"")?;
    Some(rest.split('"').next()?.to_owned())
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The `mod` / `pub mod` lines of src/lib.rs (at column 0).
fn lib_modules() -> Vec<Module> {
    let mut out = Vec::new();
    let mut feature = None;
    for line in read("src/lib.rs").lines() {
        if let Some(f) = cfg_feature(line) {
            feature = Some(f);
            continue;
        }
        if line.starts_with("#[") || line.starts_with("///") {
            continue;
        }
        let (public, rest) = match (line.strip_prefix("pub mod "), line.strip_prefix("mod ")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            (None, None) => {
                feature = None;
                continue;
            }
        };
        let name = ident(rest);
        out.push(Module {
            inline: rest[name.len()..].trim_start().starts_with('{'),
            name,
            public,
            feature: feature.take(),
        });
    }
    assert!(!out.is_empty(), "src/lib.rs declares no modules");
    out
}

/// The backticked names in the first column of the doc's "## Module map" table.
fn doc_module_map(doc: &str) -> BTreeSet<String> {
    let section = doc
        .split_once("## Module map")
        .unwrap_or_else(|| panic!("{DOC} has no `## Module map` section"))
        .1;
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| l.split('`').next().unwrap_or_default().to_owned())
        .collect()
}

/// Every `.rs` file of a module: src/NAME.rs and everything under src/NAME/.
fn module_files(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = root().join("src");
    let mut out = Vec::new();
    let file = src.join(format!("{name}.rs"));
    if file.is_file() {
        out.push(file);
    }
    walk(&src.join(name), &mut out);
    out.sort();
    out
}

/// The names that follow `prefix` (e.g. `crate::`) in `text`.
fn named_after(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .filter(|(i, _)| {
            // `crate::` must not be the tail of a longer path or identifier (`$crate::`, `xcrate::`).
            !text[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '$')
        })
        .map(|(i, _)| ident(&text[i + prefix.len()..]))
        .filter(|n| !n.is_empty())
        .collect()
}

/// The modules each module (and `main`) names in its sources, as the code has them.
fn code_dependencies(modules: &[Module]) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeSet<String> = modules.iter().map(|m| m.name.clone()).collect();
    let mut out = BTreeMap::new();
    for m in modules {
        let mut deps = BTreeSet::new();
        for f in module_files(&m.name) {
            let text = fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            deps.extend(named_after(&text, "crate::"));
        }
        deps.retain(|d| names.contains(d) && *d != m.name);
        out.insert(m.name.clone(), deps);
    }
    let mut main = named_after(&read("src/main.rs"), &format!("{CRATE}::"));
    main.retain(|d| names.contains(d));
    out.insert("main".to_owned(), main);
    out
}

/// The doc's dependency block: `module → a, b` per line, `(none)` for no dependency.
fn doc_dependencies(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for line in doc_block(doc, "dependencies") {
        let (from, to) = line
            .split_once('→')
            .unwrap_or_else(|| panic!("{DOC}: dependency line without `→`: {line}"));
        let deps = to
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty() && *d != "(none)")
            .map(String::from)
            .collect();
        let from = from.trim().to_owned();
        assert!(
            out.insert(from.clone(), deps).is_none(),
            "{DOC}: `{from}` has two dependency lines"
        );
    }
    out
}

/// The path of a child module file: `a/mod.rs` or `a.rs` declares `b` in `a/b.rs` or `a/b/mod.rs`.
fn child_file(parent: &Path, child: &str) -> PathBuf {
    let dir = if parent.file_name().is_some_and(|n| n == "mod.rs") {
        parent.parent().expect("parent dir").to_path_buf()
    } else {
        parent.with_extension("")
    };
    let flat = dir.join(format!("{child}.rs"));
    if flat.is_file() {
        flat
    } else {
        dir.join(child).join("mod.rs")
    }
}

/// The names a `pub use` brings in: `a::b` → `b`, `a::{b, c as d}` → `b`, `d`.
fn use_names(path: &str) -> Vec<String> {
    let last = |p: &str| -> String {
        let p = p.trim();
        match p.split_once(" as ") {
            Some((_, alias)) => alias.trim().to_owned(),
            None => p.rsplit("::").next().unwrap_or(p).trim().to_owned(),
        }
    };
    match path.split_once('{') {
        Some((_, list)) => list
            .trim_end_matches('}')
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "self")
            .map(last)
            .collect(),
        None => vec![last(path)],
    }
}

/// The public paths a module file exports (`prefix::item`), each with the cargo feature its
/// `#[cfg(feature = "...")]` (or its module's) requires. Only items at column 0 count: methods
/// and inline modules' contents are indented.
fn public_items(
    file: &Path,
    prefix: &str,
    inherited: Option<&str>,
    out: &mut BTreeSet<(String, Option<String>)>,
) {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut lines = text.lines();
    let mut feature: Option<String> = None;
    while let Some(line) = lines.next() {
        if let Some(f) = cfg_feature(line) {
            feature = Some(f);
            continue;
        }
        if line.starts_with("#[") || line.starts_with("///") || line.starts_with("//!") {
            continue;
        }
        let this_feature = feature.take().or_else(|| inherited.map(String::from));
        let Some(rest) = line.strip_prefix("pub ") else {
            continue;
        };
        if let Some(u) = rest.strip_prefix("use ") {
            let mut stmt = u.to_owned();
            while !stmt.contains(';') {
                stmt.push_str(lines.next().unwrap_or(";"));
            }
            for name in use_names(stmt.split(';').next().unwrap_or_default()) {
                out.insert((format!("{prefix}::{name}"), this_feature.clone()));
            }
            continue;
        }
        if let Some(m) = rest.strip_prefix("mod ") {
            let name = ident(m);
            let path = format!("{prefix}::{name}");
            if m[name.len()..].trim_start().starts_with(';') {
                public_items(
                    &child_file(file, &name),
                    &path,
                    this_feature.as_deref(),
                    out,
                );
            } else {
                out.insert((path, this_feature));
            }
            continue;
        }
        let mut words = rest.split_whitespace();
        let item = loop {
            match words.next() {
                Some("async" | "const" | "unsafe" | "extern") => {
                    // `pub const fn x` or `pub const X: ...`: the next word decides.
                    if rest.starts_with("const ") && !rest.starts_with("const fn") {
                        break words.next();
                    }
                }
                Some("fn" | "struct" | "enum" | "trait" | "type" | "static" | "union") => {
                    break words.next();
                }
                other => break other,
            }
        };
        let name = ident(item.unwrap_or_default());
        assert!(
            !name.is_empty(),
            "{}: unparsed public item: {line}",
            file.display()
        );
        out.insert((format!("{prefix}::{name}"), this_feature));
    }
}

/// The crate's public API as the code has it.
fn code_api(modules: &[Module]) -> BTreeSet<(String, Option<String>)> {
    let mut out = BTreeSet::new();
    for m in modules.iter().filter(|m| m.public) {
        if m.inline {
            out.insert((m.name.clone(), m.feature.clone()));
            continue;
        }
        let flat = root().join("src").join(format!("{}.rs", m.name));
        let file = if flat.is_file() {
            flat
        } else {
            root().join("src").join(&m.name).join("mod.rs")
        };
        public_items(&file, &m.name, m.feature.as_deref(), &mut out);
    }
    out
}

/// The doc's public API block: `path` or `path [feature]` per line.
fn doc_api(doc: &str) -> BTreeSet<(String, Option<String>)> {
    doc_block(doc, "public-api")
        .into_iter()
        .map(|l| match l.split_once('[') {
            Some((path, f)) => (
                path.trim().to_owned(),
                Some(f.trim_end_matches(']').trim().to_owned()),
            ),
            None => (l, None),
        })
        .collect()
}

fn show(item: &(String, Option<String>)) -> String {
    match &item.1 {
        Some(f) => format!("{} [{f}]", item.0),
        None => item.0.clone(),
    }
}

/// What is in one set and not the other, as readable lines.
fn differences<T: Ord + Clone>(
    code: &BTreeSet<T>,
    doc: &BTreeSet<T>,
    what: &str,
    show: impl Fn(&T) -> String,
) -> Vec<String> {
    let mut out = Vec::new();
    for x in code.difference(doc) {
        out.push(format!(
            "{what}: `{}` is in the code but missing from {DOC}",
            show(x)
        ));
    }
    for x in doc.difference(code) {
        out.push(format!(
            "{what}: `{}` is in {DOC} but not in the code",
            show(x)
        ));
    }
    out
}

#[test]
fn module_map_lists_every_module_of_lib_rs() {
    let code: BTreeSet<String> = lib_modules().into_iter().map(|m| m.name).collect();
    let problems = differences(&code, &doc_module_map(&doc()), "module map", String::clone);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Everything lives in the library: the binary declares no module of its own.
    let main = read("src/main.rs");
    assert!(
        !main
            .lines()
            .any(|l| l.starts_with("mod ") || l.starts_with("pub mod ")),
        "src/main.rs declares a module; {DOC} says everything lives in src/lib.rs"
    );
}

#[test]
fn dependency_list_matches_what_each_module_names() {
    let code = code_dependencies(&lib_modules());
    let doc = doc_dependencies(&doc());
    let mut problems = differences(
        &code.keys().cloned().collect(),
        &doc.keys().cloned().collect(),
        "dependency list, module",
        String::clone,
    );
    for (module, deps) in &code {
        if let Some(listed) = doc.get(module) {
            problems.extend(differences(
                deps,
                listed,
                &format!("dependencies of `{module}`"),
                String::clone,
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dependency_rules_hold() {
    let deps = code_dependencies(&lib_modules());
    let names = |m: &str| deps.get(m).cloned().unwrap_or_default();
    let mut problems = Vec::new();
    // The rules docs/architecture.md states under "Dependencies between modules".
    for (module, forbidden) in [
        ("kms", &["openbao", "provider", "keys", "config"][..]),
        ("keys", &["openbao", "config"][..]),
    ] {
        for f in forbidden {
            if names(module).contains(*f) {
                problems.push(format!("`{module}` names `crate::{f}` (src/{module}/)"));
            }
        }
    }
    for leaf in ["config", "deadline", "keys", "support", "systemd"] {
        if !names(leaf).is_empty() {
            problems.push(format!("`{leaf}` depends on {:?}", names(leaf)));
        }
    }
    for only_config in ["telemetry", "hardening"] {
        let extra: Vec<_> = names(only_config)
            .into_iter()
            .filter(|d| d != "config")
            .collect();
        if !extra.is_empty() {
            problems.push(format!("`{only_config}` depends on {extra:?}"));
        }
    }
    // No cycles: a depth-first walk never comes back to a module on its own path.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        problems: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            problems.push(format!("cycle: {} → {m}", path[i..].join(" → ")));
            return;
        }
        if !done.insert(m.to_owned()) {
            return;
        }
        path.push(m.to_owned());
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, path, done, problems);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in deps.keys() {
        visit(m, &deps, &mut Vec::new(), &mut done, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn public_api_list_matches_the_pub_items() {
    let problems = differences(
        &code_api(&lib_modules()),
        &doc_api(&doc()),
        "public API",
        show,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
