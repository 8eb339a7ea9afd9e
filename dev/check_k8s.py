#!/usr/bin/env python3
"""Checks of deploy/k8s/ (no cluster needed).

Usage: check_k8s.py KUBERNETES_VALIDATE CLICKSTREAM_BINARY

- every manifest validates (strictly: no unknown fields) against Kubernetes' own OpenAPI
  schemas of the oldest version we support (kubernetes-validate, pinned in dev/lib.sh);
- every container runs a `clickstream` subcommand, and every environment variable it sets
  is one that subcommand reads (its `--help` lists `[env: NAME]`), so a renamed setting
  cannot silently stop reaching the pods;
- every ConfigMap key is read by at least one of the workloads using it;
- every Secret reference points at the one `clickstream` Secret (or a CA Secret), with a
  key the README of deploy/k8s documents; all images carry the same pinned tag;
- the processors have a PodDisruptionBudget; the lake writer is a single Recreate replica.
"""
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy/k8s"
KUBE_VERSION = "1.29.0"
# Read by the libraries (libpq-style TLS settings), not by a flag.
LIBRARY_ENV = {"PGSSLMODE", "PGSSLROOTCERT"}

errors = []


def fail(msg):
    errors.append(msg)


validator, binary = sys.argv[1], sys.argv[2]
files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
out = subprocess.run(
    [validator, "--strict", "--quiet", "-k", KUBE_VERSION, *map(str, files)],
    capture_output=True, text=True,
)
if out.returncode != 0:
    fail("kubernetes-validate:\n" + out.stdout + out.stderr)

kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
if sorted(kustomization["resources"]) != sorted(p.name for p in files):
    fail(f"kustomization.yaml resources {kustomization['resources']} != {[p.name for p in files]}")

docs = [d for p in files for d in yaml.safe_load_all(p.read_text()) if d]
readme = (K8S / "README.md").read_text()
configmap = next(d for d in docs if d["kind"] == "ConfigMap")
cm_keys = set(configmap["data"])
cm_used = set()
helps = {}


def env_of(sub):
    if sub not in helps:
        h = subprocess.run([binary, sub, "--help"], capture_output=True, text=True)
        if h.returncode != 0:
            fail(f"`clickstream {sub} --help` failed: {h.stderr}")
        helps[sub] = set(re.findall(r"\[env: ([A-Z0-9_]+)", h.stdout))
    return helps[sub]


images = set()
for d in docs:
    spec = d.get("spec", {})
    pod = spec.get("template", {}).get("spec")
    if not pod:
        continue
    name = d["metadata"]["name"]
    for c in pod["containers"]:
        images.add(c["image"])
        sub = c["args"][0]
        known = env_of(sub) | LIBRARY_ENV
        for e in c.get("env", []):
            if e["name"] not in known:
                fail(f"{name}: {e['name']} is not read by `clickstream {sub}`")
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                if ref["name"] != "clickstream":
                    fail(f"{name}: secret {ref['name']} (expected `clickstream`)")
                if f"`{ref['key']}`" not in readme:
                    fail(f"{name}: secret key {ref['key']} is not documented in deploy/k8s/README.md")
        if any(f.get("configMapRef", {}).get("name") == "clickstream" for f in c.get("envFrom", [])):
            cm_used |= cm_keys & known
    for v in pod.get("volumes", []):
        s = v.get("secret", {}).get("secretName")
        if s and f"`{s}`" not in readme:
            fail(f"{name}: secret volume {s} is not documented in deploy/k8s/README.md")
for k in sorted(cm_keys - cm_used):
    fail(f"ConfigMap key {k} is read by no workload")
if len(images) != 1 or any(i.endswith(":latest") or ":" not in i for i in images):
    fail(f"images must be one pinned tag: {sorted(images)}")
kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
if ("PodDisruptionBudget", "clickstream-processor") not in kinds:
    fail("the processors have no PodDisruptionBudget")
lake = next((d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "clickstream-lake"), None)
if not lake or lake["spec"].get("replicas") != 1 or lake["spec"].get("strategy", {}).get("type") != "Recreate":
    fail("the lake writer must be one replica with the Recreate strategy")

if errors:
    print("deploy/k8s checks failed:", *errors, sep="\n  - ")
    sys.exit(1)
print(f"deploy/k8s ok: {len(docs)} resources valid for Kubernetes {KUBE_VERSION}")
