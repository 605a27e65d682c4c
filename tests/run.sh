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
# moto is pinned: before 5.2.2 it answers CompleteMultipartUpload with a wrong XML root
# (getmoto/moto#10055), which the AWS SDK rejects; 5.2.6 checks IAM policies against S3 API
# operation names instead of IAM actions (ListObjectsV2 needs `s3:ListObjectsV2` rather than
# `s3:ListBucket`), which breaks the least-privilege proof of the operator's inline policy.
moto_version=5.2.5
if ! command -v moto_server >/dev/null ||
   [ "$(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$moto_version" ]; then
  echo "== installing moto server $moto_version (PyPI)"
  python3 -m pip install -q "moto[server]==$moto_version"
fi
promtool --version | head -1

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace --no-fail-fast "$@"
