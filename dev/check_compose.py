#!/usr/bin/env python3
"""Static checks of docker-compose.yml (no Docker engine needed).

- the YAML parses and has services, networks and volumes;
- every ${VAR} it references is defined in .env.example;
- every build context, Dockerfile and bind-mounted host path exists, and is relative
  (no host-specific absolute paths, so it works on Linux and macOS alike);
- every depends_on target is a service, every network and named volume is declared;
- every service is on the one named network;
- files the Grafana provisioning references exist;
- safe to expose: every published port is bound to an address variable whose
  .env.example value is 127.0.0.1, Kafka publishes nothing, every secret is used with a
  ${VAR:?} guard, every image is pinned (no `latest`), anonymous Grafana is off by default.
"""
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
errors = []


def fail(msg):
    errors.append(msg)


compose_text = (ROOT / "docker-compose.yml").read_text()
compose = yaml.safe_load(compose_text)
env_example = (ROOT / ".env.example").read_text()
defined = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", env_example, re.M))

# $${VAR} is an escaped dollar (evaluated inside the container), not interpolation.
for var in set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", compose_text)):
    if var not in defined:
        fail(f"${{{var}}} is used in docker-compose.yml but not defined in .env.example")

services = compose.get("services") or {}
networks = set((compose.get("networks") or {}).keys())
volumes = set((compose.get("volumes") or {}).keys())
if not services:
    fail("no services")
if len(networks) != 1:
    fail(f"expected exactly one named network, found {sorted(networks)}")

for name, svc in services.items():
    build = svc.get("build")
    if build is not None:
        ctx = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if not (ROOT / ctx / dockerfile).is_file():
            fail(f"{name}: build file {ctx}/{dockerfile} missing")
    if "image" not in svc and build is None:
        fail(f"{name}: neither image nor build")
    deps = svc.get("depends_on") or {}
    for dep in deps if isinstance(deps, list) else deps.keys():
        if dep not in services:
            fail(f"{name}: depends_on unknown service {dep}")
    svc_networks = svc.get("networks") or []
    if set(svc_networks) != networks:
        fail(f"{name}: must be on the network(s) {sorted(networks)}, is on {svc_networks}")
    for vol in svc.get("volumes") or []:
        src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
        if src.startswith("/"):
            fail(f"{name}: absolute host path {src} is not portable")
        elif src.startswith("."):
            if not (ROOT / src).exists():
                fail(f"{name}: bind mount {src} does not exist")
        elif src not in volumes:
            fail(f"{name}: named volume {src} is not declared")

# Safe to expose.
example_values = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", env_example, re.M))
for name, svc in services.items():
    for port in svc.get("ports") or []:
        m = re.match(r"^\$\{([A-Z_][A-Z0-9_]*):\?[^}]*\}:[^:]+:\d+$", str(port))
        if not m:
            fail(f"{name}: port {port} must be ADDR_VAR:HOST_PORT:CONTAINER_PORT with a ${{ADDR_VAR:?}} guard")
        elif example_values.get(m.group(1)) != "127.0.0.1":
            fail(f"{name}: {m.group(1)} must default to 127.0.0.1 in .env.example")
    image = svc.get("image", "")
    if image and svc.get("build") is None:
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            fail(f"{name}: image {image} is not pinned to a version")
if (services.get("kafka") or {}).get("ports"):
    fail("kafka: publishes a port (its listeners are plain text)")
for m in re.finditer(r"\$\{([A-Z_]*(?:PASSWORD|SECRET_KEY)[A-Z_]*)([^}]*)\}", compose_text):
    if not m.group(2).startswith(":?"):
        fail(f"${{{m.group(1)}}} is used without a ${{VAR:?}} guard")
if example_values.get("GRAFANA_ANONYMOUS_ENABLED", "false") != "false":
    fail("GRAFANA_ANONYMOUS_ENABLED must default to false")
graf = (services.get("grafana") or {}).get("environment") or {}
if str(graf.get("GF_AUTH_ANONYMOUS_ENABLED", "false")) not in ("false", "${GRAFANA_ANONYMOUS_ENABLED:-false}"):
    fail("grafana: anonymous access must be off unless GRAFANA_ANONYMOUS_ENABLED says otherwise")

grafana_env = set((services.get("grafana", {}).get("environment") or {}).keys())
for path in (ROOT / "deploy/grafana/provisioning").rglob("*.yaml"):
    doc = yaml.safe_load(path.read_text())
    if not doc:
        fail(f"{path}: empty")
    for var in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", path.read_text()):
        if var not in grafana_env:
            fail(f"{path.relative_to(ROOT)}: ${{{var}}} is not passed to the grafana service")

if errors:
    print("docker-compose checks failed:", *errors, sep="\n  - ")
    sys.exit(1)
print(f"docker-compose.yml ok: {len(services)} services, network {sorted(networks)[0]}")
