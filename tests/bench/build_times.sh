#!/usr/bin/env bash
# Release build times of the `rimir` binary at two commits, one after the other on this machine:
# a clean `cargo build --release --bin rimir`, then the rebuild after touching one file of the
# distributor and one of the head. Each commit builds in its own worktree and target directory.
#
#   bash tests/bench/build_times.sh [BEFORE] [AFTER]     (defaults: b295957, the single server
#                                                          crate, and HEAD)
# Prints one line per build, in seconds. Needs the crates in Cargo's cache (or network).
set -euo pipefail
cd "$(dirname "$0")/../.."
before=${1:-b295957}
after=${2:-HEAD}
jobs=${CARGO_BUILD_JOBS:-2}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/before" 2>/dev/null || true; git worktree remove --force "$work/after" 2>/dev/null || true; rm -rf "$work"' EXIT

# The file of the distributor and of the head at a commit (the layout moved in between).
pick() {
  local tree=$1; shift
  for f in "$@"; do
    if [ -f "$tree/$f" ]; then echo "$tree/$f"; return; fi
  done
  echo "none of $* in $tree" >&2
  exit 1
}

timed() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }'
}

for side in before after; do
  rev=${!side}
  git worktree add --detach "$work/$side" "$rev" >/dev/null 2>&1
  tree=$work/$side
  build() { (cd "$tree" && CARGO_TARGET_DIR=$work/$side-target CARGO_BUILD_JOBS=$jobs cargo build --release --bin rimir); }
  dist=$(pick "$tree" tsdb/server/distributor/src/lib.rs tsdb/src/distributor.rs)
  head=$(pick "$tree" tsdb/engine/src/head/mod.rs tsdb/src/head/mod.rs)
  echo "$side ($(git rev-parse --short "$rev")) clean: $(timed build) s"
  test -x "$work/$side-target/release/rimir"
  sleep 1; touch "$dist"
  echo "$side ($(git rev-parse --short "$rev")) touch ${dist#"$tree"/}: $(timed build) s"
  sleep 1; touch "$head"
  echo "$side ($(git rev-parse --short "$rev")) touch ${head#"$tree"/}: $(timed build) s"
done
