#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: bao-kms-provider authors
# Apache License 2.0 (see LICENSE)
"""Point a kubeadm kube-apiserver static pod at a KMS EncryptionConfiguration, editing text in place."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kube_apiserver_manifest
short_description: Add the encryption provider flag, volumes and mounts to a kube-apiserver static pod manifest
description:
  - Adds C(--encryption-provider-config=PATH) to the kube-apiserver container's C(command), optionally
    C(--encryption-provider-config-automatic-reload=true), a read-only hostPath volume and mount for the
    directory holding the EncryptionConfiguration and a read-write one for the KMS socket directory.
  - The manifest is parsed to find where each line belongs, the new lines are inserted as text at those
    places so every other line stays exactly as it was, and the result is parsed again and compared with
    the intended structural change before anything is written.
  - Running it again changes nothing. Supports check mode and diff mode; the diff lists the changes it makes,
    never the manifest's content (its other flags may carry secrets).
  - Before writing, the original is copied to O(backup_dir), which must be outside the manifest's
    directory (kubelet runs every manifest it finds there, a backup included).
options:
  path:
    description: The static pod manifest.
    type: path
    default: /etc/kubernetes/manifests/kube-apiserver.yaml
  encryption_config:
    description: Absolute path of the EncryptionConfiguration file (the same path on the host and in the pod).
    type: path
    required: true
  config_dir:
    description: Directory mounted read-only into the pod (type Directory). Defaults to the parent of O(encryption_config).
    type: path
  socket_dir:
    description: Directory of the KMS unix socket, mounted read-write (type DirectoryOrCreate).
    type: path
    default: /run/openbao-kms
  automatic_reload:
    description:
      - C(true) adds or sets C(--encryption-provider-config-automatic-reload=true), C(false) removes the flag,
        C(keep) leaves whatever the manifest has.
    type: raw
    default: keep
  existing_config:
    description:
      - What to do when the manifest already points at another EncryptionConfiguration (C(aescbc), C(aesgcm),
        C(secretbox), another C(kms) provider...). C(refuse) stops with a message naming that file: objects
        written under it would become unreadable if the flag were simply replaced.
      - C(merge) repoints the flag to O(encryption_config); the caller must already have carried the existing
        providers into that file (the kube_apiserver_kms role does).
    type: str
    choices: [refuse, merge]
    default: refuse
  state:
    description:
      - C(present) adds the flag, volumes and mounts. C(absent) removes exactly what C(present) adds (the
        flag only while it points at O(encryption_config)); with O(previous_config) the flag is pointed back
        at that file instead of removed.
    type: str
    choices: [present, absent]
    default: present
  previous_config:
    description: With O(state=absent), the EncryptionConfiguration to point the flag back at (merge mode).
    type: path
  backup_dir:
    description: Where the original manifest is copied before a change, as C(NAME.YYYYmmddTHHMMSS).
    type: path
    default: /etc/kubernetes/backup
  container:
    description: Name of the API server container in the pod.
    type: str
    default: kube-apiserver
  config_volume:
    description: Volume name for O(config_dir).
    type: str
    default: openbao-kms-config
  socket_volume:
    description: Volume name for O(socket_dir).
    type: str
    default: openbao-kms-socket
requirements:
  - PyYAML on the managed host
author:
  - bao-kms-provider authors
"""

EXAMPLES = r"""
- name: Point kube-apiserver at the EncryptionConfiguration
  kube_apiserver_manifest:
    encryption_config: /etc/kubernetes/encryption/openbao-kms/encryption-config.yaml
"""

RETURN = r"""
backup_file:
  description: Where the original manifest was copied (only when something changed and not in check mode).
  returned: changed
  type: str
changes:
  description: One line per edit made (or that would be made in check mode).
  returned: always
  type: list
  elements: str
before:
  description: The manifest's facts before the edit (encryption_config, automatic_reload, advertise_address, secure_port).
  returned: always
  type: dict
after:
  description: The same facts for the manifest as it is after the edit (as it would be, in check mode).
  returned: always
  type: dict
"""

import os
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.kube_apiserver_manifest_edit import ManifestError, Spec, facts, plan


# ---------------------------------------------------------------------------- the module

def _inside(child, parent):
    child, parent = os.path.realpath(child), os.path.realpath(parent)
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _backup(path, backup_dir):
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    base = os.path.join(backup_dir, "%s.%s" % (os.path.basename(path), stamp))
    target, n = base, 1
    while os.path.exists(target):
        target, n = "%s.%d" % (base, n), n + 1
    shutil.copy2(path, target)
    os.chmod(target, 0o600)
    return target


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "default": "/etc/kubernetes/manifests/kube-apiserver.yaml"},
            "encryption_config": {"type": "path", "required": True},
            "config_dir": {"type": "path"},
            "socket_dir": {"type": "path", "default": "/run/openbao-kms"},
            "automatic_reload": {"type": "raw", "default": "keep"},
            "existing_config": {"type": "str", "choices": ["refuse", "merge"], "default": "refuse"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "previous_config": {"type": "path"},
            "backup_dir": {"type": "path", "default": "/etc/kubernetes/backup"},
            "container": {"type": "str", "default": "kube-apiserver"},
            "config_volume": {"type": "str", "default": "openbao-kms-config"},
            "socket_volume": {"type": "str", "default": "openbao-kms-socket"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        import yaml  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        module.fail_json(msg="PyYAML is required on the managed host (Debian: python3-yaml, RHEL: python3-pyyaml)")
    path = p["path"]
    if _inside(p["backup_dir"], os.path.dirname(path)):
        module.fail_json(msg="backup_dir %s is inside %s; kubelet would run a backup there as a second pod"
                         % (p["backup_dir"], os.path.dirname(path)))
    try:
        spec = Spec(p["encryption_config"], p["config_dir"], p["socket_dir"], p["automatic_reload"],
                    p["container"], p["config_volume"], p["socket_volume"], existing_config=p["existing_config"],
                    state=p["state"], previous_config=p["previous_config"])
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
        before = facts(text, p["container"])
        new_text, changes = plan(text, spec)
        after = facts(new_text, p["container"])
    except (OSError, UnicodeDecodeError) as e:
        module.fail_json(msg="cannot read %s: %s" % (path, e))
    except ManifestError as e:
        module.fail_json(msg="%s: %s" % (path, e))
    result = {"changed": bool(changes), "changes": changes, "path": path, "before": before, "after": after}
    if module._diff:  # pylint: disable=protected-access
        # What changes, never the manifest itself: its other flags may carry secrets.
        result["diff"] = {"prepared": "".join("%s: %s\n" % (path, c) for c in changes)}
    if not changes or module.check_mode:
        module.exit_json(**result)
    if spec.state == "present" and not os.path.isfile(spec.encryption_config):
        module.fail_json(msg="%s does not exist; kube-apiserver would not start. Write it first." % spec.encryption_config,
                         **result)
    try:
        result["backup_file"] = _backup(path, p["backup_dir"])
        fd, tmp = tempfile.mkstemp(prefix=".kube-apiserver.", dir=p["backup_dir"])
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(new_text)
    except OSError as e:
        module.fail_json(msg="cannot back up %s to %s: %s" % (path, p["backup_dir"], e), **result)
    module.atomic_move(tmp, path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
