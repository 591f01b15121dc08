# -*- coding: utf-8 -*-
# Copyright: bao-kms-provider authors
# Apache License 2.0 (see LICENSE)
"""Reading EncryptionConfigurations on data: pure functions, no I/O. The order of the providers
per rollout stage is not computed here: `bao-kms-provider encryption-config --stage` does that (the
kube_apiserver_encryption_config module runs it). Here: validating a file, what the provider's own
render holds, whether a file lists the provider, and a summary that shows provider types, never keys.

Error messages name entries and provider types, never key material: existing files hold keys.
"""

from __future__ import annotations

import hashlib
import json

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"
PROVIDER_TYPES = ("aescbc", "aesgcm", "secretbox", "kms", "identity")
KEY_TYPES = ("aescbc", "aesgcm", "secretbox")
IDENTITY = {"identity": {}}


class EncryptionConfigError(Exception):
    """An EncryptionConfiguration that cannot be used or merged safely."""


def parse(text, what):
    """Parse and validate an EncryptionConfiguration; `what` names it in errors (a path)."""
    import yaml  # pylint: disable=import-outside-toplevel

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        # The parser's message quotes the offending line, which may hold a key: say where only.
        mark = getattr(e, "problem_mark", None)
        raise EncryptionConfigError("%s is not valid YAML%s" % (
            what, " (line %d)" % (mark.line + 1) if mark is not None else ""))
    validate(doc, what)
    return doc


def validate(doc, what):
    if not isinstance(doc, dict):
        raise EncryptionConfigError("%s is not a YAML mapping" % what)
    if doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        raise EncryptionConfigError(
            "%s has kind %r, apiVersion %r; expected kind %s, apiVersion %s (the old 'EncryptionConfig' "
            "format is not read by current kube-apiserver: convert it first)"
            % (what, doc.get("kind"), doc.get("apiVersion"), KIND, API_VERSION))
    unknown = sorted(set(doc) - {"kind", "apiVersion", "resources"})
    if unknown:
        raise EncryptionConfigError("%s: unknown top-level fields %s" % (what, ", ".join(unknown)))
    entries = doc.get("resources")
    if not isinstance(entries, list) or not entries:
        raise EncryptionConfigError("%s: 'resources' must be a non-empty list" % what)
    for n, entry in enumerate(entries):
        where = "%s: resources[%d]" % (what, n)
        if not isinstance(entry, dict) or set(entry) - {"resources", "providers"}:
            raise EncryptionConfigError("%s must have exactly 'resources' and 'providers'" % where)
        names = entry.get("resources")
        if not isinstance(names, list) or not names or not all(isinstance(r, str) and r for r in names):
            raise EncryptionConfigError("%s.resources must be a non-empty list of strings" % where)
        providers = entry.get("providers")
        if not isinstance(providers, list) or not providers:
            raise EncryptionConfigError("%s.providers must be a non-empty list" % where)
        for m, provider in enumerate(providers):
            if not isinstance(provider, dict) or len(provider) != 1 or next(iter(provider)) not in PROVIDER_TYPES:
                raise EncryptionConfigError("%s.providers[%d] must be one of %s"
                                            % (where, m, ", ".join(PROVIDER_TYPES)))
            kind, body = next(iter(provider.items()))
            if kind == "kms" and not (isinstance(body, dict) and body.get("name") and body.get("endpoint")):
                raise EncryptionConfigError("%s.providers[%d].kms needs a name and an endpoint" % (where, m))
            if kind in KEY_TYPES and not (isinstance(body, dict) and isinstance(body.get("keys"), list)
                                          and body["keys"] and all(isinstance(k, dict) and k.get("name")
                                                                   and k.get("secret") for k in body["keys"])):
                raise EncryptionConfigError("%s.providers[%d].%s needs a list of keys with name and secret"
                                            % (where, m, kind))


def _is_ours(provider, name):
    return "kms" in provider and provider["kms"].get("name") == name


def _resource(name):
    """'secrets' and 'secrets.' are the same core resource."""
    return name[:-1] if name.endswith(".") and not name.startswith("*") else name


def covers(pattern, resource):
    """Whether an entry's resource name (maybe a wildcard) selects `resource` (resource or resource.group)."""
    pattern, resource = _resource(pattern), _resource(resource)
    if pattern == "*.*" or pattern == resource:
        return True
    group = resource.partition(".")[2]
    if pattern == "*.":
        return group == ""
    return pattern.startswith("*.") and group == pattern[2:]


def _covered_by(entry, resource):
    return any(covers(p, resource) for p in entry["resources"])


def our_parts(rendered):
    """(kms provider, resources, identity fallback) from `bao-kms-provider encryption-config` output."""
    validate(rendered, "the rendered EncryptionConfiguration")
    entry = rendered["resources"][0]
    providers = entry["providers"]
    if len(rendered["resources"]) != 1 or "kms" not in providers[0]:
        raise EncryptionConfigError("the rendered EncryptionConfiguration is not one entry with kms first")
    return providers[0], list(entry["resources"]), IDENTITY in providers[1:]


def lists(doc, name):
    return any(_is_ours(p, name) for e in doc["resources"] for p in e["providers"])


def summary(doc, name, resources):
    """What may be shown: provider types per entry (no keys), whether our provider is first for every
    entry selecting one of our resources, and a hash of the whole document."""
    entries = []
    first = True
    for entry in doc["resources"]:
        types = []
        for p in entry["providers"]:
            kind = next(iter(p))
            types.append("kms:%s" % p["kms"]["name"] if kind == "kms" else kind)
        entries.append({"resources": list(entry["resources"]), "providers": types})
    for r in resources:
        selecting = next((e for e in doc["resources"] if _covered_by(e, r)), None)
        if selecting is None or not _is_ours(selecting["providers"][0], name):
            first = False
    return {"entries": entries, "kms_first": first, "lists_kms": lists(doc, name),
            "has_keys": any(next(iter(p)) in KEY_TYPES for e in doc["resources"] for p in e["providers"]),
            "sha256": hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()}


def render(doc):
    """JSON (valid YAML, read by kube-apiserver) with a stable key order."""
    return json.dumps(doc, indent=2) + "\n"
