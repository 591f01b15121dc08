# -*- coding: utf-8 -*-
# Copyright: bao-kms-provider authors
# Apache License 2.0 (see LICENSE)
"""Filters for the kube_apiserver_kms role: facts of a kube-apiserver manifest and the kubeadm-config
ClusterConfiguration edit, both pure functions from module_utils (so the unit tests test what runs)."""

from __future__ import annotations

import importlib.util
import json
import os

from ansible.errors import AnsibleFilterError

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, "..", "module_utils", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_manifest = _load("kube_apiserver_manifest_edit")
_kubeadm = _load("kubeadm_cluster_configuration")


def manifest_facts(text, container="kube-apiserver"):
    """`slurp`ed manifest text -> encryption_config, automatic_reload, advertise_address, secure_port, etcd_*."""
    try:
        return _manifest.facts(text, container)
    except _manifest.ManifestError as e:
        raise AnsibleFilterError("kube-apiserver manifest: %s" % e)


def cluster_configuration(text, args, volumes, state="present", previous_config=None):
    """kubeadm-config's ClusterConfiguration text -> {'text': new text, 'changes': [...]}."""
    # Plain Python types: Ansible hands filters its own (tagged) str/dict subclasses, which PyYAML's
    # safe_dump refuses to represent.
    args, volumes = json.loads(json.dumps(args)), json.loads(json.dumps(volumes))
    text, state = str(text), str(state)
    previous_config = str(previous_config) if previous_config else None
    try:
        new, changes = _kubeadm.patch(text, args, volumes, state, previous_config)
    except _kubeadm.ClusterConfigurationError as e:
        raise AnsibleFilterError("kubeadm-config ClusterConfiguration: %s" % e)
    return {"text": new, "changes": changes}


class FilterModule:
    def filters(self):
        return {"kube_apiserver_manifest_facts": manifest_facts,
                "kubeadm_cluster_configuration": cluster_configuration}
