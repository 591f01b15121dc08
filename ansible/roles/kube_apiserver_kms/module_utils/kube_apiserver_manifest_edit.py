# -*- coding: utf-8 -*-
# Copyright: bao-kms-provider authors
# Apache License 2.0 (see LICENSE)
"""The manifest edit behind the kube_apiserver_manifest module: pure text in, text out.

Parses the kube-apiserver static pod manifest to find where each line belongs, inserts the new
lines as text at those places (so every other line stays byte for byte), then parses the result
again and compares it with the intended structural change. No I/O; PyYAML is imported lazily so
the caller can report its absence.
"""

from __future__ import annotations

import copy
import os
import re

FLAG = "--encryption-provider-config"
RELOAD_FLAG = "--encryption-provider-config-automatic-reload"
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
SAFE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ITEM_PREFIX = re.compile(r"^( *)- +$")


class ManifestError(Exception):
    """The manifest does not have the structure this module can edit safely."""


KEEP = "keep"
EXISTING_MODES = ("refuse", "merge")


def reload_setting(value):
    """'keep' (leave the flag as it is), True (present, =true) or False (absent)."""
    if value is None or value == KEEP:
        return KEEP
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ManifestError("automatic_reload %r: expected keep, true or false" % (value,))


class Spec:
    """What the manifest should carry.

    existing_config: what to do when the manifest already points at another EncryptionConfiguration.
    "refuse" (the default) stops: replacing it would make every object written under it unreadable.
    "merge" repoints the flag to ours; the caller has carried the existing providers into our file.
    state "absent" takes our flag, volumes and mounts out again (previous_config: put that path back).
    """

    def __init__(self, encryption_config, config_dir=None, socket_dir="/run/openbao-kms",
                 automatic_reload=KEEP, container="kube-apiserver",
                 config_volume="openbao-kms-config", socket_volume="openbao-kms-socket",
                 existing_config="refuse", state="present", previous_config=None):
        self.encryption_config = encryption_config
        self.config_dir = (config_dir or os.path.dirname(encryption_config)).rstrip("/") or "/"
        self.socket_dir = socket_dir.rstrip("/") or "/"
        self.automatic_reload = reload_setting(automatic_reload)
        if existing_config not in EXISTING_MODES:
            raise ManifestError("existing_config %r: expected one of %s" % (existing_config, ", ".join(EXISTING_MODES)))
        if state not in ("present", "absent"):
            raise ManifestError("state %r: expected present or absent" % (state,))
        self.existing_config = existing_config
        self.state = state
        self.previous_config = previous_config or None
        if self.previous_config is not None and (not SAFE_PATH.match(self.previous_config)
                                                 or self.previous_config == encryption_config):
            raise ManifestError("previous_config %r must be an absolute path other than encryption_config"
                                % (self.previous_config,))
        self.container = container
        self.config_volume = config_volume
        self.socket_volume = socket_volume
        for field, value in (("encryption_config", self.encryption_config),
                             ("config_dir", self.config_dir), ("socket_dir", self.socket_dir)):
            if not SAFE_PATH.match(value) or "/../" in value + "/":
                raise ManifestError("%s %r must be an absolute path of letters, digits, '.', '_', '-' and '/'"
                                    % (field, value))
        if not (self.encryption_config + "/").startswith(self.config_dir + "/"):
            raise ManifestError("encryption_config %s is not inside config_dir %s (the pod only sees config_dir)"
                                % (self.encryption_config, self.config_dir))
        for field, value in (("config_volume", config_volume), ("socket_volume", socket_volume)):
            if not SAFE_NAME.match(value) or len(value) > 63:
                raise ManifestError("%s %r is not a DNS-1123 label" % (field, value))
        if config_volume == socket_volume:
            raise ManifestError("config_volume and socket_volume must differ")

    @property
    def flag(self):
        return "%s=%s" % (FLAG, self.encryption_config)

    def mounts(self):
        return [{"mountPath": self.config_dir, "name": self.config_volume, "readOnly": True},
                {"mountPath": self.socket_dir, "name": self.socket_volume}]

    def volumes(self):
        return [{"hostPath": {"path": self.config_dir, "type": "Directory"}, "name": self.config_volume},
                {"hostPath": {"path": self.socket_dir, "type": "DirectoryOrCreate"}, "name": self.socket_volume}]


# ---------------------------------------------------------------------------- node helpers

def _get(node, key):
    """Value node of `key` in a mapping node, or None."""
    for k, v in node.value:
        if getattr(k, "value", None) == key:
            return v
    return None


def _kind(node):
    return type(node).__name__  # ScalarNode, SequenceNode, MappingNode


def _last_line(node):
    """Index of the last line holding text of this node."""
    if _kind(node) == "ScalarNode" or node.flow_style or not node.value:
        end = node.end_mark
        return end.line if end.column > 0 else end.line - 1
    last = node.value[-1]
    return _last_line(last[1] if _kind(node) == "MappingNode" else last)


def _item_prefix(lines, item, what):
    """The '   - ' text in front of a block sequence item (so new items look the same)."""
    line = lines[item.start_mark.line]
    prefix = line[:item.start_mark.column]
    if not ITEM_PREFIX.match(prefix):
        raise ManifestError("%s: line %d is not a block sequence item ('- ...' on its own line)"
                            % (what, item.start_mark.line + 1))
    return prefix


def _scalar_span_is_line(lines, node, what):
    """A scalar item that is alone on its line, so the line can be replaced or removed."""
    if node.start_mark.line != node.end_mark.line:
        raise ManifestError("%s: line %d spans several lines; edit it by hand" % (what, node.start_mark.line + 1))
    rest = lines[node.start_mark.line][node.end_mark.column:].strip()
    if rest and not rest.startswith("#"):
        raise ManifestError("%s: line %d holds more than one item" % (what, node.start_mark.line + 1))


def _plain(value):
    return {k: v for k, v in value.items() if not (k == "readOnly" and v is False)}


class _Edits:
    """Line insertions/replacements, applied bottom-up so indexes stay valid. New lines get the
    file's own line ending (CRLF files stay CRLF)."""

    def __init__(self, newline="\n"):
        self.inserts = {}   # line index -> [text]
        self.replaces = {}  # line index -> text or None (delete)
        self.changes = []
        self.newline = newline

    def insert(self, index, texts, why):
        self.inserts.setdefault(index, []).extend(texts)
        self.changes.append(why)

    def replace(self, index, text, why):
        self.replaces[index] = text
        self.changes.append(why)

    def delete(self, first, last, why):
        for index in range(first, last + 1):
            self.replaces[index] = None
        self.changes.append(why)

    def apply(self, lines):
        out = list(lines)
        if out and not out[-1].endswith("\n") and len(out) in self.inserts:
            out[-1] += self.newline
        for index in sorted(set(self.inserts) | set(self.replaces), reverse=True):
            if index in self.replaces:
                if self.replaces[index] is None:
                    del out[index]
                else:
                    out[index] = self.replaces[index]
            if index in self.inserts:
                out[index:index] = [t + self.newline for t in self.inserts[index]]
        return "".join(out)


# ---------------------------------------------------------------------------- planning

def _find_container(root, spec):
    if _kind(root) != "MappingNode":
        raise ManifestError("the manifest is not a YAML mapping")
    kind = _get(root, "kind")
    if kind is None or kind.value != "Pod":
        raise ManifestError("kind is %r, expected Pod" % (kind.value if kind is not None else None))
    pod_spec = _get(root, "spec")
    if pod_spec is None or _kind(pod_spec) != "MappingNode":
        raise ManifestError("spec is missing or not a mapping")
    containers = _get(pod_spec, "containers")
    if containers is None or _kind(containers) != "SequenceNode":
        raise ManifestError("spec.containers is missing or not a list")
    found = [c for c in containers.value if _kind(c) == "MappingNode"
             and getattr(_get(c, "name"), "value", None) == spec.container]
    if len(found) != 1:
        raise ManifestError("expected exactly one container named %r in spec.containers, found %d"
                            % (spec.container, len(found)))
    return pod_spec, found[0]


def _command_items(container, spec):
    command = _get(container, "command")
    if command is None or _kind(command) != "SequenceNode" or command.flow_style or not command.value:
        raise ManifestError("container %r has no block list 'command'" % spec.container)
    items = command.value
    for item in items:
        if _kind(item) != "ScalarNode":
            raise ManifestError("container %r: command holds a non-string item at line %d"
                                % (spec.container, item.start_mark.line + 1))
    args = _get(container, "args")
    if args is not None and _kind(args) == "SequenceNode" and any(
            _kind(a) == "ScalarNode" and a.value.startswith(FLAG) for a in args.value):
        raise ManifestError("container %r sets %s in 'args'; move it to 'command' by hand" % (spec.container, FLAG))
    if items[0].value != "kube-apiserver":
        raise ManifestError("command[0] is %r, expected kube-apiserver" % items[0].value)
    bare = [i for i in items if i.value == FLAG]
    if bare:
        raise ManifestError("line %d has %s without '=PATH'; fix it by hand" % (bare[0].start_mark.line + 1, FLAG))
    flags = [i for i in items if i.value.startswith(FLAG + "=")]
    if len(flags) > 1:
        raise ManifestError("command carries %s %d times (lines %s); fix it by hand"
                            % (FLAG, len(flags), ", ".join(str(f.start_mark.line + 1) for f in flags)))
    reloads = [i for i in items if _is_reload(i.value)]
    if len(reloads) > 1:
        raise ManifestError("command carries %s %d times; fix it by hand" % (RELOAD_FLAG, len(reloads)))
    return items, flags, reloads


def _replace_item(lines, node, text, edits, why):
    _scalar_span_is_line(lines, node, "command")
    line = lines[node.start_mark.line]
    edits.replace(node.start_mark.line, line[:node.start_mark.column] + text + line[node.end_mark.column:], why)


def _plan_command(lines, container, spec, edits):
    items, flags, reloads = _command_items(container, spec)
    prefix = _item_prefix(lines, items[-1], "command")
    after_last = _last_line(items[-1]) + 1
    new = []
    if spec.state == "absent":
        if flags and flags[0].value == spec.flag:
            if spec.previous_config:
                _replace_item(lines, flags[0], "%s=%s" % (FLAG, spec.previous_config), edits,
                              "put back %s=%s" % (FLAG, spec.previous_config))
            else:
                _item_prefix(lines, flags[0], "command")
                _scalar_span_is_line(lines, flags[0], "command")
                edits.replace(flags[0].start_mark.line, None, "remove %s" % spec.flag)
    elif not flags:
        new.append(prefix + spec.flag)
        edits.changes.append("add %s" % spec.flag)
    elif flags[0].value != spec.flag:
        other = flags[0].value[len(FLAG) + 1:]
        if spec.existing_config != "merge":
            raise ManifestError(
                "kube-apiserver already uses the EncryptionConfiguration %s (line %d). Replacing it would make "
                "every object written under it unreadable. Set kube_apiserver_kms_existing_config: merge to carry "
                "its providers into %s (module option existing_config=merge)"
                % (other, flags[0].start_mark.line + 1, spec.encryption_config))
        _replace_item(lines, flags[0], spec.flag, edits, "replace %s with %s" % (flags[0].value, spec.flag))
    if spec.automatic_reload is True:
        if not reloads:
            new.append(prefix + RELOAD_FLAG + "=true")
            edits.changes.append("add %s=true" % RELOAD_FLAG)
        elif reloads[0].value not in (RELOAD_FLAG + "=true", RELOAD_FLAG):
            _replace_item(lines, reloads[0], RELOAD_FLAG + "=true", edits, "set %s=true" % RELOAD_FLAG)
    elif spec.automatic_reload is False:
        for node in reloads:
            _scalar_span_is_line(lines, node, "command")
            _item_prefix(lines, node, "command")
            edits.replace(node.start_mark.line, None, "remove %s" % node.value)
    if new:
        edits.inserts.setdefault(after_last, []).extend(new)


def _plan_remove_list(lines, parent, key, wanted, edits, what):
    """state=absent: remove our entries (same name and content) from the block list parent[key]."""
    import yaml  # pylint: disable=import-outside-toplevel

    node = _get(parent, key)
    if node is None or _kind(node) != "SequenceNode" or not node.value:
        return
    ours = {e["name"]: e for e in wanted}
    remove = []
    for item in node.value:
        entry = yaml.safe_load(yaml.serialize(item))
        if isinstance(entry, dict) and entry.get("name") in ours:
            if _plain(entry) != _plain(ours[entry["name"]]):
                raise ManifestError("%s: entry %r is %r, not what this module adds; remove it by hand"
                                    % (what, entry["name"], entry))
            if node.flow_style:
                raise ManifestError("%s is a flow list; remove %r by hand" % (what, entry["name"]))
            remove.append(item)
    if not remove:
        return
    if len(remove) == len(node.value):
        raise ManifestError("%s holds only this module's entries; removing them would leave it empty. "
                            "Edit it by hand" % what)
    for item in remove:
        _item_prefix(lines, item, what)
        edits.delete(item.start_mark.line, _last_line(item), "remove %s %s" % (what, _get(item, "name").value))


def _render_item(entry, prefix, nest):
    """Block YAML for one list item of scalars and one level of nested mapping, keys in order."""
    indent = " " * len(prefix)
    out = []
    for key, value in entry.items():
        lead = prefix if not out else indent
        if isinstance(value, dict):
            out.append("%s%s:" % (lead, key))
            out.extend("%s%s%s: %s" % (indent, " " * nest, k, _scalar(v)) for k, v in value.items())
        else:
            out.append("%s%s: %s" % (lead, key, _scalar(value)))
    return out


def _scalar(value):
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _plan_list(lines, parent, key, wanted, edits, what, match_key):
    """Ensure each entry of `wanted` is in the block list parent[key], appending what is missing."""
    import yaml  # pylint: disable=import-outside-toplevel

    node = _get(parent, key)
    existing = []
    if node is not None:
        if _kind(node) == "ScalarNode" and node.value in ("", "null", "~"):
            raise ManifestError("%s is empty (null); write '%s: []' or add an entry by hand" % (what, key))
        if _kind(node) != "SequenceNode":
            raise ManifestError("%s is not a list" % what)
        existing = yaml.safe_load(yaml.serialize(node)) or []
    missing = []
    for entry in wanted:
        same_name = [e for e in existing if isinstance(e, dict) and e.get("name") == entry["name"]]
        same_target = [e for e in existing if isinstance(e, dict) and e.get(match_key[0]) is not None
                       and _path_of(e, match_key) == _path_of(entry, match_key) and e.get("name") != entry["name"]]
        if same_target:
            raise ManifestError("%s: %r already uses %s under the name %r"
                                % (what, _path_of(entry, match_key), "/".join(match_key), same_target[0].get("name")))
        if len(same_name) > 1:
            raise ManifestError("%s: %d entries are named %r" % (what, len(same_name), entry["name"]))
        if same_name:
            if _plain(same_name[0]) != _plain(entry):
                raise ManifestError("%s: entry %r is %r, expected %r; fix or remove it by hand"
                                    % (what, entry["name"], same_name[0], entry))
            continue
        missing.append(entry)
    if not missing:
        return
    if node is not None and not node.flow_style and node.value:
        last = node.value[-1]
        prefix = _item_prefix(lines, last, what)
        nest = 2
        for item in node.value:
            host_path = _get(item, "hostPath") if _kind(item) == "MappingNode" else None
            if host_path is not None and _kind(host_path) == "MappingNode" and host_path.value:
                nest = host_path.value[0][0].start_mark.column - item.start_mark.column
                break
        texts = []
        for entry in missing:
            texts.extend(_render_item(entry, prefix, nest))
        edits.insert(_last_line(last) + 1, texts, "add %s %s" % (what, ", ".join(e["name"] for e in missing)))
        return
    # No list yet (or an empty flow list): write the key with a block list, kubeadm style.
    if node is not None:
        key_node = next(k for k, v in parent.value if v is node)
        column = key_node.start_mark.column
        if node.start_mark.line != key_node.start_mark.line or _last_line(node) != key_node.start_mark.line:
            raise ManifestError("%s: an empty list spread over several lines; edit it by hand" % what)
        at = key_node.start_mark.line
        line = lines[at]
        edits.replace(at, line[:column] + key + ":" + edits.newline, "replace empty %s" % what)
        anchor = at + 1
    else:
        column = parent.value[0][0].start_mark.column
        anchor = _last_line(parent) + 1
        edits.inserts.setdefault(anchor, []).append(" " * column + key + ":")
    texts = []
    for entry in missing:
        texts.extend(_render_item(entry, " " * column + "- ", 2))
    edits.insert(anchor, texts, "add %s %s" % (what, ", ".join(e["name"] for e in missing)))


def _path_of(entry, match_key):
    value = entry
    for k in match_key:
        value = value.get(k) if isinstance(value, dict) else None
    return value


def _is_reload(arg):
    return arg == RELOAD_FLAG or arg.startswith(RELOAD_FLAG + "=")


def _reload_value(arg):
    """True/False for a reload flag (a bare flag is true, as Go's bool flags)."""
    return arg == RELOAD_FLAG or arg.split("=", 1)[1].strip().lower() in ("true", "1", "t")


def expected_document(doc, spec):
    """The intended change on the parsed manifest: what the edited text must parse to."""
    want = copy.deepcopy(doc)
    container = next(c for c in want["spec"]["containers"] if c.get("name") == spec.container)
    command, has_flag, has_reload = [], False, False
    for arg in container["command"]:
        if arg.startswith(FLAG + "="):
            has_flag = True
            if spec.state == "absent":
                if arg == spec.flag:
                    if spec.previous_config:
                        command.append("%s=%s" % (FLAG, spec.previous_config))
                    continue
                command.append(arg)
            else:
                command.append(spec.flag)
        elif _is_reload(arg):
            if spec.automatic_reload is KEEP:
                command.append(arg)
            elif spec.automatic_reload:
                command.append(arg if arg in (RELOAD_FLAG, RELOAD_FLAG + "=true") else RELOAD_FLAG + "=true")
            has_reload = True
        else:
            command.append(arg)
    if not has_flag and spec.state == "present":
        command.append(spec.flag)
    if spec.automatic_reload is True and not has_reload:
        command.append(RELOAD_FLAG + "=true")
    container["command"] = command
    for holder, key, wanted in ((container, "volumeMounts", spec.mounts()), (want["spec"], "volumes", spec.volumes())):
        current = holder.get(key) or []
        ours = {e["name"] for e in wanted}
        if spec.state == "absent":
            if key in holder:
                holder[key] = [e for e in current if not (isinstance(e, dict) and e.get("name") in ours)]
            continue
        names = {e.get("name") for e in current if isinstance(e, dict)}
        holder[key] = current + [e for e in wanted if e["name"] not in names]
    return want


def _newline(text):
    return "\r\n" if "\r\n" in text else "\n"


def _parse(text):
    import yaml  # pylint: disable=import-outside-toplevel

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError("not valid YAML: %s" % e)
    if root is None:
        raise ManifestError("the manifest is empty")
    return root, doc


def plan(text, spec):
    """Return (new_text, changes). new_text == text when nothing needs doing."""
    root, doc = _parse(text)
    lines = text.splitlines(True)
    pod_spec, container = _find_container(root, spec)
    edits = _Edits(_newline(text))
    _plan_command(lines, container, spec, edits)
    if spec.state == "absent":
        _plan_remove_list(lines, container, "volumeMounts", spec.mounts(), edits,
                          "container %r volumeMounts" % spec.container)
        _plan_remove_list(lines, pod_spec, "volumes", spec.volumes(), edits, "spec.volumes")
    else:
        _plan_list(lines, container, "volumeMounts", spec.mounts(), edits,
                   "container %r volumeMounts" % spec.container, ("mountPath",))
        _plan_list(lines, pod_spec, "volumes", spec.volumes(), edits, "spec.volumes", ("hostPath", "path"))
    if not edits.changes:
        return text, []
    new_text = edits.apply(lines)
    verify(doc, new_text, spec)
    return new_text, edits.changes


def facts(text, container="kube-apiserver"):
    """What the rollout needs to know about a manifest, without changing it: the EncryptionConfiguration
    it points at (None without the flag), the automatic reload flag (None when absent, else its bool), and
    where this host's API server listens (advertise address from the flag or kubeadm's annotation, port)."""
    root, doc = _parse(text)
    spec = Spec("/nonexistent/x", container=container)
    _, container_node = _find_container(root, spec)
    _, flags, reloads = _command_items(container_node, spec)
    command = [i.value for i in _command_items(container_node, spec)[0]]

    def flag(name):
        found = [a.split("=", 1)[1] for a in command if a.startswith(name + "=")]
        return found[-1] if found else None

    endpoint = ((doc.get("metadata") or {}).get("annotations") or {}).get(
        "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint")
    address = flag("--advertise-address")
    port = flag("--secure-port")
    if endpoint and ":" in endpoint:
        host, _, endpoint_port = endpoint.rpartition(":")
        address = address or host.strip("[]")
        port = port or endpoint_port
    return {
        "encryption_config": flags[0].value[len(FLAG) + 1:] if flags else None,
        "automatic_reload": _reload_value(reloads[0].value) if reloads else None,
        "advertise_address": address,
        "secure_port": int(port) if port and port.isdigit() else 6443,
        "etcd_servers": [u for u in (flag("--etcd-servers") or "").split(",") if u],
        "etcd_cafile": flag("--etcd-cafile"),
        "etcd_certfile": flag("--etcd-certfile"),
        "etcd_keyfile": flag("--etcd-keyfile"),
    }


def verify(original_doc, new_text, spec):
    """The edited text parses, carries the flag as intended, and differs only by the intended change."""
    import yaml  # pylint: disable=import-outside-toplevel

    try:
        new_doc = yaml.safe_load(new_text)
    except yaml.YAMLError as e:
        raise ManifestError("internal error: the edited manifest does not parse (%s); nothing written" % e)
    want = expected_document(original_doc, spec)
    if new_doc != want:
        raise ManifestError("internal error: the edited manifest differs from the intended change; nothing written")
    container = next(c for c in new_doc["spec"]["containers"] if c.get("name") == spec.container)
    count = sum(1 for c in container["command"] if c.startswith(FLAG + "="))
    if spec.state == "present" and count != 1:
        raise ManifestError("internal error: %s is not present exactly once; nothing written" % FLAG)
    if spec.state == "absent" and spec.flag in container["command"]:
        raise ManifestError("internal error: %s is still present; nothing written" % spec.flag)
