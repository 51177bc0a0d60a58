#!/usr/bin/env bash
# Chaos tests on the three-node compose cluster (docs/chaos.md): builds the FROM-scratch image
# (deploy/docker/build.sh; incremental, quick when nothing changed), then runs
#   STARLING_RUN_DOCKER_TESTS=1 cargo test -p starling --test chaos -- --nocapture
# and removes the compose project `starling-chaos` (containers and volumes) on the way out,
# whatever happened (the test does it too, unless it was killed).
#
# Usage:  tests/chaos/run.sh                          CI length: ~5 min of faults, >= 30 faults
#         STARLING_CHAOS_SECS=3600 tests/chaos/run.sh the long soak
# Environment (all optional): STARLING_CHAOS_SECS, STARLING_CHAOS_FAULTS, STARLING_CHAOS_RATE,
#   STARLING_TEST_SEED (replay), STARLING_CHAOS_HISTORY (history file),
#   STARLING_CHAOS_IMAGE (default starling:chaos), STARLING_CHAOS_SKIP_BUILD=1 (use the image
#   as it is when it exists).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"

image="${STARLING_CHAOS_IMAGE:-starling:chaos}"
export STARLING_CHAOS_IMAGE="$image"

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi
cleanup() {
    # The compose file insists on a secret even to tear down; any value does.
    STARLING_CLUSTER_SECRET=teardown-only-0000000000 \
        "${compose[@]}" -p starling-chaos -f deploy/compose/docker-compose.yml \
        down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [ "${STARLING_CHAOS_SKIP_BUILD:-0}" = 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "chaos: using the existing image $image" >&2
else
    deploy/docker/build.sh "$image"
fi

STARLING_RUN_DOCKER_TESTS=1 cargo test -p starling --test chaos -- --nocapture
