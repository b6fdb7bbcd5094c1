#!/bin/sh
# Build, with podman, the images docker/compose.yaml runs, on a machine that reaches Debian's
# archive and PyPI but no image registry (docker/README.md, "Without a Docker engine"):
#   1. the base (base.sh): Debian and a Python virtual environment, unless it exists;
#   2. the project's image: docker/Dockerfile on that base (BASE_IMAGE), as in production;
#   3. PostgreSQL (postgres.Containerfile), for the `postgres` service.
# Image names: BASE_IMAGE, TUNEFUSE_IMAGE, POSTGRES_IMAGE. Other `podman build` flags for
# step 2 (--build-arg ...): BUILD_ARGS. Prints each image's size and build time.
#
# Where this machine's pip takes packages from local folders (`pip config list`: find-links,
# file:// indexes), those folders are lent to the build read-only, with a pip.conf naming
# them, so the image gets the same files pip here gets instead of downloading them again; so is
# the CA bundle pip here trusts (`cert`), if any.
set -eu
cd "$(dirname "$0")/../.."
BASE_IMAGE=${BASE_IMAGE:-localhost/tunefuse-base:bookworm}
TUNEFUSE_IMAGE=${TUNEFUSE_IMAGE:-localhost/tunefuse:podman}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-localhost/tunefuse-postgres:15}

podman image exists "$BASE_IMAGE" || sh docker/podman/base.sh "$BASE_IMAGE"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/tunefuse-build.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
lend=""
conf="[global]"
pip_value() {  # the value of pip's KEY, from any of its configuration files or variables
    { python3 -m pip config list 2>/dev/null || true; } \
        | sed -n "s/^[^.]*\.$1='\(.*\)'\$/\1/p" | tr ' ' '\n' | sed '/^$/d' | sort -u
}
links=""
for v in $(pip_value find-links); do
    [ -d "$v" ] && { links="$links $v"; lend="$lend -v $v:$v:ro"; }
done
indexes=""
for v in $(pip_value extra-index-url); do
    dir=${v#file://}
    # A local "simple" index links to files beside it (../../files/...): lend its parent.
    [ "$dir" != "$v" ] && [ -d "$dir" ] \
        && { indexes="$indexes $v"; parent=$(dirname "$dir"); lend="$lend -v $parent:$parent:ro"; }
done
# A CA bundle pip is told to trust (a proxy that re-signs TLS): the build trusts it too.
for v in $(pip_value cert | head -n 1); do
    [ -f "$v" ] && { lend="$lend -v $v:/etc/ssl/pip-ca.crt:ro"; conf="$conf
cert = /etc/ssl/pip-ca.crt"; }
done
[ -n "$links" ] && conf="$conf
find-links =$links"
[ -n "$indexes" ] && conf="$conf
extra-index-url =$indexes"
printf '%s\n' "$conf" > "$work/pip.conf"
[ -n "$lend" ] && echo "build.sh: lending local pip folders to the build:$lend"

built() {  # NAME SECONDS
    echo "build.sh: $1 in $2 s, $(podman image inspect --format '{{.Size}}' "$1" \
        | awk '{printf "%.2f GB", $1 / 1e9}')"
}
t0=$(date +%s)
# shellcheck disable=SC2086  # $lend and $BUILD_ARGS are lists of flags
podman build --layers -f docker/Dockerfile -t "$TUNEFUSE_IMAGE" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" -v "$work/pip.conf:/etc/pip.conf:ro" $lend \
    ${BUILD_ARGS:-} .
t1=$(date +%s)
podman build --layers -f docker/podman/postgres.Containerfile -t "$POSTGRES_IMAGE" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" .
t2=$(date +%s)
built "$TUNEFUSE_IMAGE" $((t1 - t0))
built "$POSTGRES_IMAGE" $((t2 - t1))
