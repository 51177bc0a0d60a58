#!/usr/bin/env bash
# Builds Starling's container image on a Docker engine without registry access:
#   1. a static, stripped release binary (glibc with crt-static; cargo, target dir of its own),
#   2. starling-probe (deploy/docker/probe.rs, std only, built with rustc, static),
#   3. a build context with the root filesystem, then `docker build` of Dockerfile (FROM scratch).
#
# Usage: deploy/docker/build.sh [IMAGE]        (default: $STARLING_IMAGE or starling:dev)
# Environment:
#   STARLING_IMAGE               image name and tag
#   STARLING_STATIC_TARGET_DIR   cargo target dir of the static build
#                                (default: ${CARGO_TARGET_DIR:-<repo>/target}/static)
#   STARLING_SKIP_CARGO=1        reuse the binary already built there
# Prints the image id and size at the end.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
image="${1:-${STARLING_IMAGE:-starling:dev}}"
triple=x86_64-unknown-linux-gnu
target_dir="${STARLING_STATIC_TARGET_DIR:-${CARGO_TARGET_DIR:-$repo/target}/static}"

say() { echo "build.sh: $*" >&2; }

if [ "${STARLING_SKIP_CARGO:-0}" != 1 ]; then
    say "static release build (target dir $target_dir)"
    # --target is required: without it build scripts and proc-macros would be linked static too.
    # RUSTFLAGS differs from the normal build's, hence the separate target directory.
    (cd "$repo" && unset CARGO_ENCODED_RUSTFLAGS &&
        RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$target_dir" \
            cargo build --release --target "$triple" -p starling --bin starling)
fi
bin="$target_dir/$triple/release/starling"
[ -x "$bin" ] || { say "no binary at $bin"; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/starling" "$ctx/datadir/data"

strip -o "$root/usr/local/bin/starling" "$bin"
rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols --target "$triple" \
    -o "$root/usr/local/bin/starling-probe" "$repo/deploy/docker/probe.rs"
rm -f "$root"/usr/local/bin/*.d

for b in starling starling-probe; do
    # A static-pie binary has no program interpreter; anything else cannot run in scratch.
    if readelf -l "$root/usr/local/bin/$b" | grep -q 'Requesting program interpreter'; then
        say "$b is dynamically linked; it would not run in a FROM scratch image"
        exit 1
    fi
done

install -m 0644 "$repo/deploy/docker/starling.toml" "$root/etc/starling/starling.toml"
printf 'root:x:0:0:root:/:/sbin/nologin\nstarling:x:10001:10001:Starling broker:/data:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nstarling:x:10001:\n' >"$root/etc/group"
chmod 0755 "$root/usr/local/bin/"*
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 0750 "$ctx/datadir/data"
cp "$repo/deploy/docker/Dockerfile" "$ctx/Dockerfile"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)"
revision="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"

# Without the buildx plugin the CLI falls back to the legacy builder; say so instead of warning.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
say "docker build -t $image"
docker build --quiet -t "$image" \
    --label "org.opencontainers.image.title=starling" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$revision" \
    "$ctx" >/dev/null
size="$(docker image inspect -f '{{.Size}}' "$image")"
say "built $image: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }'))"
docker image inspect -f '{{.Id}}' "$image"
