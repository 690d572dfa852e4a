#!/usr/bin/env python3
"""Checks deploy/k8s offline: every manifest the kustomization lists validates against the
Kubernetes API schemas (kubernetes-validate, strict: no unknown fields), every manifest in the
directory is listed, the Secret has no default (it is generated from secret.env, which is not
in git), and every PUSHFLEET_* setting the manifests give is one `pushfleet` reads; the same
for the Redis Cluster overlay (deploy/k8s/cluster), whose patches must name objects of the base."""
import argparse
import os
import re
import subprocess
import sys

import yaml

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "k8s")


def fail(message):
    print(f"deploy/k8s: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", required=True, help="the pushfleet binary (its --help lists the settings)")
    args = parser.parse_args()

    with open(os.path.join(HERE, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    resources = kustomization.get("resources", [])
    manifests = sorted(name for name in os.listdir(HERE) if name.endswith(".yaml") and name != "kustomization.yaml")
    if sorted(resources) != manifests:
        fail(f"kustomization.yaml lists {sorted(resources)}, the directory has {manifests}")

    generators = kustomization.get("secretGenerator", [])
    if [g.get("envs") for g in generators] != [["secret.env"]]:
        fail("the Secret must come from secret.env (no default secret in git)")
    tracked = subprocess.run(["git", "ls-files", os.path.join(HERE, "secret.env")], capture_output=True, text=True).stdout.strip()
    if tracked:
        fail("secret.env is in git")

    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                             *[os.path.join(HERE, name) for name in resources]], capture_output=True, text=True)
    if result.returncode != 0:
        fail("schema validation failed:\n" + result.stdout + result.stderr)

    known = set()
    for command in ("node", "control"):
        text = subprocess.run([args.bin, command, "--help"], capture_output=True, text=True).stdout
        known |= set(re.findall(r"PUSHFLEET_[A-Z_]+", re.sub(r"\s+", "", text)))
    known |= {"PUSHFLEET_SECRET", "PUSHFLEET_REDIS", "PUSHFLEET_LOG_LEVEL"}
    used = set()
    for name in resources:
        with open(os.path.join(HERE, name)) as f:
            for document in yaml.safe_load_all(f):
                used |= set(re.findall(r"PUSHFLEET_[A-Z_]+", yaml.safe_dump(document)))
    overlay = check_cluster_overlay(resources)
    for document in overlay:
        used |= set(re.findall(r"PUSHFLEET_[A-Z_]+", yaml.safe_dump(document)))
    unknown = sorted(used - known)
    if unknown:
        fail(f"settings pushfleet does not read: {unknown}")
    print(f"deploy/k8s: {len(resources)} manifests valid (strict), no default secret, {len(used)} settings all known; "
          f"the cluster overlay's {len(overlay)} objects valid")


def check_cluster_overlay(base_resources):
    """deploy/k8s/cluster: the base plus a Redis Cluster; its manifests and patches validate
    (strict), every file is listed, what it deletes exists in the base. Returns its objects."""
    directory = os.path.join(HERE, "cluster")
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    resources = [name for name in kustomization.get("resources", []) if name != "../"]
    patches = [patch["path"] for patch in kustomization.get("patches", [])]
    if "../" not in kustomization.get("resources", []):
        fail("cluster/kustomization.yaml does not build on the base (../)")
    files = sorted(name for name in os.listdir(directory) if name.endswith(".yaml") and name != "kustomization.yaml")
    if sorted(resources + patches) != files:
        fail(f"cluster/kustomization.yaml lists {sorted(resources + patches)}, the directory has {files}")
    base = {}
    for name in base_resources:
        with open(os.path.join(HERE, name)) as f:
            for document in yaml.safe_load_all(f):
                base[(document["kind"], document["metadata"]["name"])] = document
    objects, validated = [], []
    for name in resources + patches:
        with open(os.path.join(directory, name)) as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
        deletes = [d for d in documents if d.get("$patch") == "delete"]
        for document in deletes:
            if (document["kind"], document["metadata"]["name"]) not in base:
                fail(f"cluster/{name} deletes {document['kind']} {document['metadata']['name']}, which the base does not have")
        if name in patches:
            for document in documents:
                if document.get("$patch") != "delete" and (document["kind"], document["metadata"]["name"]) not in base:
                    fail(f"cluster/{name} patches {document['kind']} {document['metadata']['name']}, which the base does not have")
        if len(deletes) < len(documents):
            validated.append(os.path.join(directory, name))
        objects += documents
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *validated],
                            capture_output=True, text=True)
    if result.returncode != 0:
        fail("cluster overlay: schema validation failed:\n" + result.stdout + result.stderr)
    return objects


if __name__ == "__main__":
    main()
