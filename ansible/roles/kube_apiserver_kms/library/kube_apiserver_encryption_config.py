#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: bao-kms-provider authors
# Apache License 2.0 (see LICENSE)
"""Write the EncryptionConfiguration for a rollout stage, carrying an existing one's providers."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kube_apiserver_encryption_config
short_description: Write kube-apiserver's EncryptionConfiguration for bao-kms-provider, on data
description:
  - Has C(bao-kms-provider encryption-config --stage) (O(render_argv)) compute the EncryptionConfiguration
    for a rollout stage from the file as it is (O(path)) or, in merge mode on the first run, the cluster's
    existing EncryptionConfiguration (O(existing)), and writes it to O(path) (mode 0600) when it differs.
    The provider order of each stage is the provider's, stated once in its C(--help).
  - Stage C(read) and C(rollback) put the existing providers (or identity) first and the KMS provider after
    them; C(write) puts the KMS provider first and keeps the existing providers after it. A C(read) stage
    keeps a file that already lists the KMS provider.
  - Key material of existing providers is never returned, logged or shown in a diff; it is copied only into O(path).
  - O(state=query) writes nothing and returns what the file holds (provider types, whether the KMS provider is
    first, a hash).
options:
  path:
    description: Our EncryptionConfiguration file.
    type: path
    required: true
  rendered:
    description: The JSON C(bao-kms-provider encryption-config) printed. Required unless O(state=query).
    type: str
  render_argv:
    description: The C(bao-kms-provider encryption-config) command that printed O(rendered), without C(--stage),
      C(--existing-config) and C(--drop-previous), which the module adds. Required unless O(state=query).
    type: list
    elements: str
  provider_name:
    description: The KMS provider's name (for O(state=query) without O(rendered)).
    type: str
  resources:
    description: Our resources (for O(state=query) without O(rendered)).
    type: list
    elements: str
  stage:
    description: Rollout stage.
    type: str
    choices: [read, write, rollback]
    default: write
  existing:
    description: The EncryptionConfiguration the manifest points at today when that is not O(path).
    type: path
  existing_config:
    description: C(refuse) fails when O(existing) is set; C(merge) carries its providers into O(path).
    type: str
    choices: [refuse, merge]
    default: refuse
  drop_previous:
    description: Write stage only, after the migration rewrote everything; drops the providers carried over.
    type: bool
    default: false
  state:
    description: C(present) writes, C(query) only reports.
    type: str
    choices: [present, query]
    default: present
author:
  - bao-kms-provider authors
"""

EXAMPLES = r"""
- name: Write the EncryptionConfiguration for the write pass
  kube_apiserver_encryption_config:
    path: /etc/kubernetes/encryption/openbao-kms/encryption-config.yaml
    rendered: "{{ rendered.stdout }}"
    render_argv: [bao-kms-provider, encryption-config, --config, /etc/openbao-kms/config.toml]
    stage: write
"""

RETURN = r"""
summary:
  description: Provider types per entry, kms_first, lists_kms, has_keys and sha256 of the file as written (or queried).
  returned: always
  type: dict
before:
  description: The same summary for the file before the change (null when it did not exist).
  returned: always
  type: dict
exists:
  description: Whether O(path) exists (state=query).
  returned: always
  type: bool
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.kube_apiserver_encryption_config import (EncryptionConfigError, lists, parse, render,
                                                                   summary, our_parts)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def staged(module, argv, stage, existing_path, drop_previous):
    """The provider's EncryptionConfiguration for `stage`, merged with the file at existing_path."""
    cmd = list(argv) + ["--stage", stage]
    if existing_path:
        cmd += ["--existing-config", existing_path]
    if drop_previous and stage == "write":
        cmd.append("--drop-previous")
    rc, out, err = module.run_command(cmd)
    if rc != 0:
        # The provider names the file and field, never a key.
        raise EncryptionConfigError("%s (exit %d): %s" % (" ".join(cmd), rc, err.strip()))
    try:
        doc = json.loads(out)
        # Each entry as "resources" then "providers", as files written before have it, so an
        # unchanged configuration is byte for byte the same file.
        return {"apiVersion": doc["apiVersion"], "kind": doc["kind"],
                "resources": [{"resources": e["resources"], "providers": e["providers"]} for e in doc["resources"]]}
    except (ValueError, KeyError, TypeError) as e:
        raise EncryptionConfigError("%s printed no EncryptionConfiguration: %s" % (" ".join(cmd), e))


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "rendered": {"type": "str"},
            "render_argv": {"type": "list", "elements": "str"},
            "provider_name": {"type": "str"},
            "resources": {"type": "list", "elements": "str"},
            "stage": {"type": "str", "choices": ["read", "write", "rollback"], "default": "write"},
            "existing": {"type": "path"},
            "existing_config": {"type": "str", "choices": ["refuse", "merge"], "default": "refuse"},
            "drop_previous": {"type": "bool", "default": False},
            "state": {"type": "str", "choices": ["present", "query"], "default": "present"},
        },
        required_if=[("state", "present", ("rendered", "render_argv"))],
        supports_check_mode=True,
    )
    p = module.params
    path = p["path"]
    try:
        import yaml  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        module.fail_json(msg="PyYAML is required on the managed host (Debian: python3-yaml, RHEL: python3-pyyaml)")
    try:
        if p["rendered"]:
            try:
                rendered = json.loads(p["rendered"])
            except ValueError as e:
                raise EncryptionConfigError("rendered is not the JSON of `bao-kms-provider encryption-config`: %s" % e)
            kms, resources, _ = our_parts(rendered)
            name = kms["kms"]["name"]
        else:
            rendered, name, resources = None, p["provider_name"], p["resources"] or []
            if not name:
                raise EncryptionConfigError("provider_name (or rendered) is required")
        current = parse(_read(path), path) if os.path.exists(path) else None
        before = summary(current, name, resources) if current is not None else None
        if p["state"] == "query":
            module.exit_json(changed=False, exists=current is not None, summary=before, before=before)
        # Which file the provider merges with: ours once it lists the provider (later runs), else the
        # cluster's existing configuration (merge mode, first run), else none.
        merge_with = path if current is not None and lists(current, name) else None
        if p["existing"] and os.path.realpath(p["existing"]) != os.path.realpath(path):
            if p["existing_config"] != "merge":
                raise EncryptionConfigError(
                    "kube-apiserver already uses the EncryptionConfiguration %s. Replacing it would make every "
                    "object written under it unreadable. Set kube_apiserver_kms_existing_config: merge to carry its "
                    "providers into %s" % (p["existing"], path))
            if merge_with is None:
                if lists(parse(_read(p["existing"]), p["existing"]), name):
                    raise EncryptionConfigError(
                        "the existing EncryptionConfiguration %s already has a kms provider named %r; choose another "
                        "provider_name" % (p["existing"], name))
                merge_with = p["existing"]
        new = staged(module, p["render_argv"], p["stage"], merge_with, p["drop_previous"])
    except (OSError, UnicodeDecodeError) as e:
        module.fail_json(msg="cannot read an EncryptionConfiguration: %s" % e)
    except EncryptionConfigError as e:
        module.fail_json(msg=str(e))
    text = render(new)
    old_text = _read(path) if current is not None else ""
    after = summary(new, name, resources)
    result = {"changed": text != old_text, "summary": after, "before": before, "exists": current is not None}
    if module._diff and not after["has_keys"] and not (before or {}).get("has_keys"):  # pylint: disable=protected-access
        result["diff"] = {"before": old_text, "after": text, "before_header": path, "after_header": path}
    if not result["changed"] or module.check_mode:
        module.exit_json(**result)
    directory = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".encryption-config.", dir=directory)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        module.fail_json(msg="cannot write %s: %s" % (path, e), **result)
    module.atomic_move(tmp, path)
    os.chmod(path, 0o600)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
