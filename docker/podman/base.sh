#!/bin/sh
# A local base image for docker/Dockerfile, made from Debian's archive only (no image registry):
# a minimal Debian rootfs (debootstrap) with Python 3 and a virtual environment whose `python`
# and `pip` come first on PATH, which is what the Dockerfile asks of its BASE_IMAGE (PyTorch's
# image has them from conda). Needs root, debootstrap and podman.
#
#   sh docker/podman/base.sh [TAG]        # default localhost/tunefuse-base:bookworm
#
# DEBIAN_SUITE (bookworm: Python 3.11) and DEBIAN_MIRROR choose the archive.
set -eu
TAG=${1:-localhost/tunefuse-base:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/tunefuse-base.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$WORK/rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; echo "base.sh: debootstrap $SUITE from $MIRROR failed" >&2; exit 1; }
chroot "$WORK/rootfs" python3 -m venv /opt/venv
chroot "$WORK/rootfs" /opt/venv/bin/python -m pip --version
chroot "$WORK/rootfs" apt-get clean
rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin

tar -C "$WORK/rootfs" --numeric-owner -c . | podman import --quiet \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python"]' \
    - "$TAG" > /dev/null
echo "base.sh: $TAG from Debian $SUITE ($(podman image inspect --format '{{.Size}}' "$TAG") bytes)"
