#!/usr/bin/env bash
# Builds localhost/python:3.11-local, a Debian bookworm + Python 3.11 base image, from Debian's
# packages alone (no registry pull), for `bentoml containerize` on machines without registry
# access. Skips the build when the image exists. Needs root, debootstrap and podman.
set -euo pipefail
IMAGE=${BASE_IMAGE:-localhost/python:3.11-local}
if podman image exists "$IMAGE" 2>/dev/null; then
  echo "$IMAGE exists"
  exit 0
fi
rootfs=$(mktemp -d /tmp/base-rootfs.XXXXXX)
trap 'umount "$rootfs/proc" 2>/dev/null || true; rm -rf "$rootfs"' EXIT
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends python3 python3-pip python3-venv ca-certificates >/dev/null && apt-get clean'
umount "$rootfs/proc"
# this machine's CA bundle, so pip/uv inside the build reach the package index as the host does
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
# the generated Dockerfile installs uv system-wide with pip
rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
tar -C "$rootfs" -c . | podman import \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV UV_NATIVE_TLS=1' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$IMAGE" >/dev/null
echo "built $IMAGE"
