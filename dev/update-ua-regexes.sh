#!/usr/bin/env bash
# Regenerates crates/collector/data/uap-regexes.json from the uap-core regexes.yaml that the
# `ua-parser` crate ships (the version in Cargo.lock), keeping only the browser and OS
# parsers the collector uses. Needs python3 with PyYAML; run after bumping ua-parser.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="$(grep -A1 '^name = "ua-parser"$' "$root/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')"
cargo fetch --manifest-path "$root/Cargo.toml" >/dev/null
src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ua-parser-"$version"/uap-core | head -1)"
python3 - "$src" "$root/crates/collector/data/uap-regexes.json" <<'PY'
import json, sys, yaml
src, out = sys.argv[1], sys.argv[2]
doc = yaml.safe_load(open(f"{src}/regexes.yaml"))
version = json.load(open(f"{src}/package.json"))["version"]
keep = {"uap_core_version": version,
        "user_agent_parsers": doc["user_agent_parsers"],
        "os_parsers": doc["os_parsers"],
        "device_parsers": []}
json.dump(keep, open(out, "w"), separators=(",", ":"))
PY
echo "wrote crates/collector/data/uap-regexes.json (uap-core from ua-parser $version)"
