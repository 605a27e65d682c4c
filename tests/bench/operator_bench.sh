#!/usr/bin/env bash
# Operator benchmark: time from `kubectl apply` of a new MimirCluster to every child and AWS
# resource existing, and the operator's RSS with N MimirClusters reconciled — against the fake
# API server (tests/) and moto, everything on 127.0.0.1.
#
#   cargo build --release -p rimir-operator && cargo build -p rimir-e2e --bin fake-apiserver
#   bash tests/bench/operator_bench.sh [N=100] [PROFILE=release]
# (the fake API server's own speed does not matter here, so its debug build is used)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-100}
profile=${2:-release}
bin=target/$profile
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

moto_port=$(port)
moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
api_port=$(port)
target/debug/fake-apiserver --listen "127.0.0.1:$api_port" --kubeconfig-out "$work/kubeconfig" \
  --simulate-workloads >"$work/api.log" 2>&1 &
for _ in $(seq 100); do
  [ -s "$work/kubeconfig" ] && curl -s "http://127.0.0.1:$moto_port/" >/dev/null 2>&1 && break
  sleep 0.1
done
export KUBECONFIG=$work/kubeconfig AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  AWS_REGION=eu-west-3 AWS_EC2_METADATA_DISABLED=true
k() { kubectl --cache-dir "$work/kcache" "$@"; }
k apply --server-side -f crds/mimirclusters.rimir.io.yaml >/dev/null
k create namespace monitoring >/dev/null
"$bin/rimir-operator" run --aws-endpoint-url "http://127.0.0.1:$moto_port" \
  --metrics-address "127.0.0.1:$(port)" >"$work/op.log" 2>&1 &
op=$!
cluster() {
  cat <<YAML
apiVersion: rimir.io/v1alpha1
kind: MimirCluster
metadata: {name: $1, namespace: monitoring}
spec:
  aws: {region: eu-west-3, accountId: "123456789012", oidcIssuer: oidc.eks.eu-west-3.amazonaws.com/id/BENCH}
  storage: {bucketName: rimir-bench-$1}
---
YAML
}
# 1. One cluster: apply → bucket, role, inline policy, SA, ConfigMap, StatefulSets, PDB.
start=$(date +%s.%N)
cluster first | k apply -f - >/dev/null
until k get pdb -n monitoring -o name 2>/dev/null | grep -q first &&
      k get mimirclusters first -n monitoring -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -q True; do
  sleep 0.05
done
end=$(date +%s.%N)
echo "apply -> every resource and Ready: $(python3 -c "print(f'{$end-$start:.2f}')") s"
# 2. N clusters.
for i in $(seq -w 1 "$n"); do cluster "c$i"; done | k apply -f - >/dev/null
deadline=$((SECONDS + 300))
until [ "$(k get mimirclusters -n monitoring -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c Ready)" -ge "$((n + 1))" ]; do
  [ $SECONDS -lt $deadline ] || { echo "not all Ready after 300 s"; break; }
  sleep 1
done
ready=$(k get mimirclusters -n monitoring -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c Ready || true)
sleep 5
grep -E 'VmRSS|VmHWM' "/proc/$op/status" | tr -s ' ' | tr '\n' ' '
echo "with $ready of $((n + 1)) MimirClusters Ready ($profile build)"
