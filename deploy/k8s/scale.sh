#!/usr/bin/env bash
# Scales the Starling StatefulSet up or down by one pod at a time, with the Raft membership
# change each step needs. Only the safe order is automated:
#   up:   kubectl scale (new pod starts empty and waits) -> `starling cluster join` through an
#         existing member -> wait until the new pod is ready (caught up).
#   down: `starling cluster leave` of the highest ordinal (Raft stops counting it) -> kubectl
#         scale -> optional deletion of its volume (--delete-pvc).
# Never below 3 replicas (the founding members 0..2, which the ConfigMap's peers name).
#
# Usage: deploy/k8s/scale.sh REPLICAS [--namespace NS] [--delete-pvc]
set -euo pipefail

ns=starling
delete_pvc=0
target=""
while [ $# -gt 0 ]; do
    case "$1" in
        --namespace|-n) ns="$2"; shift 2 ;;
        --delete-pvc) delete_pvc=1; shift ;;
        *) target="$1"; shift ;;
    esac
done
[ -n "$target" ] || { echo "usage: $0 REPLICAS [--namespace NS] [--delete-pvc]" >&2; exit 2; }
[ "$target" -ge 3 ] || { echo "refusing to go below 3 replicas (the founding voters)" >&2; exit 2; }

k() { kubectl -n "$ns" "$@"; }
current="$(k get statefulset starling -o jsonpath='{.spec.replicas}')"
starling() { k exec starling-0 -c starling -- /usr/local/bin/starling "$@"; }

while [ "$current" -lt "$target" ]; do
    ordinal="$current"; id=$((ordinal + 1))
    echo "== adding starling-$ordinal as node $id"
    k scale statefulset starling --replicas=$((current + 1))
    # The member asks the new pod to prove the cluster secret before adding it, so the pod
    # must be up: retry while it starts.
    for attempt in $(seq 1 30); do
        if starling cluster join --admin 127.0.0.1:8080 --node-id "$id" \
            --raft-address "starling-$ordinal.starling-headless:7946"; then
            break
        fi
        [ "$attempt" -lt 30 ] || { echo "join of node $id failed" >&2; exit 1; }
        sleep 5
    done
    k wait --for=condition=Ready "pod/starling-$ordinal" --timeout=300s
    current=$((current + 1))
done

while [ "$current" -gt "$target" ]; do
    ordinal=$((current - 1)); id=$((ordinal + 1))
    echo "== removing node $id (starling-$ordinal)"
    starling cluster leave --admin 127.0.0.1:8080 --node-id "$id"
    k scale statefulset starling --replicas="$ordinal"
    k wait --for=delete "pod/starling-$ordinal" --timeout=120s || true
    if [ "$delete_pvc" = 1 ]; then
        k delete pvc "data-starling-$ordinal"
    else
        echo "   its volume data-starling-$ordinal is kept; delete it before scaling up again"
    fi
    current="$ordinal"
done
k exec starling-0 -c starling -- /usr/local/bin/starling cluster status --admin 127.0.0.1:8080
