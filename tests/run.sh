#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests run against
# (Debian's prometheus 2.42 for promtool and a real Prometheus, node_exporter, Debian's kubectl
# for the fake API server tests, and moto server for S3/IAM/STS), then checks formatting and
# lints and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v promtool >/dev/null || ! command -v prometheus-node-exporter >/dev/null; then
  echo "== installing prometheus, promtool and node_exporter (Debian packages)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-node-exporter >/dev/null
fi
if ! command -v kubectl >/dev/null; then
  echo "== installing kubectl (Debian kubernetes-client)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    kubernetes-client >/dev/null
fi
# moto before 5.2.2 answers CompleteMultipartUpload with a wrong XML root (getmoto/moto#10055),
# which the AWS SDK rejects; older installs are upgraded.
if ! command -v moto_server >/dev/null ||
   ! python3 -c 'import sys, moto; sys.exit(tuple(map(int, moto.__version__.split(".")[:3])) < (5, 2, 2))' 2>/dev/null; then
  echo "== installing moto server >= 5.2.2 (PyPI)"
  python3 -m pip install -q -U 'moto[server]>=5.2.2'
fi
promtool --version | head -1

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace --no-fail-fast "$@"
