# -*- coding: utf-8 -*-
# Copyright: bao-kms-provider authors
# Apache License 2.0 (see LICENSE)
"""The kubeadm-config ClusterConfiguration edit: pure text in, text out.

`kubeadm upgrade apply|node` and `kubeadm join --control-plane` regenerate the kube-apiserver static
pod from this document, so a flag or mount added only to the manifest is lost on the next upgrade.
This adds (or removes) ours in apiServer.extraArgs and apiServer.extraVolumes, in both shapes:
kubeadm.k8s.io/v1beta3 (extraArgs a map) and v1beta4 (extraArgs a list of {name, value}).
"""

from __future__ import annotations

import copy

VERSIONS = ("kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4")
FLAG = "encryption-provider-config"


class ClusterConfigurationError(Exception):
    """A ClusterConfiguration this edit cannot change safely."""


def _args_get(extra, v4):
    if v4:
        return {a.get("name"): a.get("value") for a in extra}
    return dict(extra)


def patch(text, args, volumes, state="present", previous_config=None):
    """Return (new_text, changes). args: {flag name without dashes: value}; volumes: extraVolumes entries
    ({name, hostPath, mountPath, readOnly, pathType}). state=absent removes exactly these (the
    encryption-provider-config flag only while it has our value; put back previous_config if given)."""
    import yaml  # pylint: disable=import-outside-toplevel

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ClusterConfigurationError("not valid YAML: %s" % e)
    if not isinstance(doc, dict) or doc.get("kind") != "ClusterConfiguration":
        raise ClusterConfigurationError("expected kind ClusterConfiguration")
    if doc.get("apiVersion") not in VERSIONS:
        raise ClusterConfigurationError("apiVersion %r: expected one of %s" % (doc.get("apiVersion"), ", ".join(VERSIONS)))
    v4 = doc["apiVersion"].endswith("v1beta4")
    new = copy.deepcopy(doc)
    api = new.setdefault("apiServer", {}) or {}
    new["apiServer"] = api
    extra = api.get("extraArgs") or ([] if v4 else {})
    if v4 != isinstance(extra, list):
        raise ClusterConfigurationError("apiServer.extraArgs is a %s, expected a %s for %s"
                                        % (type(extra).__name__, "list" if v4 else "map", doc["apiVersion"]))
    current = _args_get(extra, v4)
    changes = []
    for name, value in args.items():
        have = current.get(name)
        if state == "present":
            if have == value:
                continue
            changes.append("set extraArgs %s=%s" % (name, value))
            if v4:
                extra = [a for a in extra if a.get("name") != name] + [{"name": name, "value": value}]
            else:
                extra[name] = value
        elif have == value:
            back = previous_config if name == FLAG and previous_config else None
            changes.append("put back extraArgs %s=%s" % (name, back) if back else "remove extraArgs %s" % name)
            if v4:
                extra = [({"name": name, "value": back} if a.get("name") == name else a) for a in extra
                         if back or a.get("name") != name]
            elif back:
                extra[name] = back
            else:
                del extra[name]
    # Empty lists and maps are left out (kubeadm reads a missing and an empty one alike).
    if extra:
        api["extraArgs"] = extra
    else:
        api.pop("extraArgs", None)
    vols = list(api.get("extraVolumes") or [])
    for volume in volumes:
        same = [v for v in vols if v.get("name") == volume["name"]]
        if same and {k: v for k, v in same[0].items() if v is not False} != {k: v for k, v in volume.items() if v is not False}:
            raise ClusterConfigurationError("apiServer.extraVolumes %r is %r, expected %r; fix it by hand"
                                            % (volume["name"], same[0], volume))
        if state == "present" and not same:
            vols.append(dict(volume))
            changes.append("add extraVolumes %s" % volume["name"])
        elif state == "absent" and same:
            vols = [v for v in vols if v.get("name") != volume["name"]]
            changes.append("remove extraVolumes %s" % volume["name"])
    if vols:
        api["extraVolumes"] = vols
    else:
        api.pop("extraVolumes", None)
    if not api and "apiServer" not in doc:
        new.pop("apiServer")   # a revert gives back what was there, an empty apiServer included
    if not changes:
        return text, []
    return yaml.safe_dump(new, default_flow_style=False, sort_keys=False), changes
