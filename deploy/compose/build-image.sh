#!/usr/bin/env bash
# Build the webchat image with no Docker engine and no registry (`make image`), then check it.
#
# podman (vfs storage, as root) builds the Dockerfile on a Debian 12 base made here with
# debootstrap and cached in $WEBCHAT_IMAGE_CACHE (not in the repository). The build stage still
# fetches webchat's dependencies from PyPI. Then the image's own files are checked: who it runs
# as, its HEALTHCHECK, no compiler, pip or setuptools; and webchat is started from them as that
# user, probed with the image's HEALTHCHECK command. It is started with chroot, not
# `podman run`: where the container runtime may not set resource limits (no CAP_SYS_RESOURCE,
# as in some sandboxes) `podman run` fails before the image runs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${WEBCHAT_IMAGE_CACHE:-/var/cache/webchat-image}
BASE=localhost/webchat-base:bookworm
IMAGE=${WEBCHAT_IMAGE:-localhost/webchat:local}
pm() { podman --storage-driver vfs --cgroup-manager cgroupfs --events-backend file "$@"; }

[ "$(id -u)" = 0 ] || { echo "build-image.sh: run as root (podman with vfs storage, chroot)"; exit 1; }
command -v podman >/dev/null && command -v debootstrap >/dev/null ||
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends podman debootstrap

if ! pm image exists "$BASE"; then
  if [ ! -x "$CACHE/rootfs/usr/bin/python3" ]; then
    rm -rf "$CACHE/rootfs.partial" && mkdir -p "$CACHE"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$CACHE/rootfs.partial" http://deb.debian.org/debian
    mv "$CACHE/rootfs.partial" "$CACHE/rootfs"
  fi
  # This machine's CA store, so pip in the build trusts whatever TLS the host trusts.
  cp /etc/ssl/certs/ca-certificates.crt "$CACHE/rootfs/etc/ssl/certs/ca-certificates.crt"
  tar -C "$CACHE/rootfs" -c . |
    pm import --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" - "$BASE" >/dev/null
fi

pm build --format docker --network host --isolation chroot \
  --build-arg BASE_IMAGE="$BASE" --tag "$IMAGE" "$ROOT"

user=$(pm image inspect --format '{{.User}}' "$IMAGE")
probe=$(pm image inspect --format '{{json .HealthCheck.Test}}' "$IMAGE")
[ "$user" = 10001:10001 ] || { echo "FAIL: runs as '$user', expected 10001:10001"; exit 1; }
case "$probe" in *'/healthz'*) ;; *) echo "FAIL: HEALTHCHECK $probe"; exit 1 ;; esac

rootfs=$(pm image mount "$IMAGE")
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  pm image unmount "$IMAGE" >/dev/null || true
}
trap cleanup EXIT
for tool in gcc cc c++ make; do
  [ ! -e "$rootfs/usr/bin/$tool" ] || { echo "FAIL: /usr/bin/$tool in the image"; exit 1; }
done
for module in pip setuptools wheel; do
  [ ! -e "$rootfs/opt/webchat/lib/python3.11/site-packages/$module" ] ||
    { echo "FAIL: $module in the image's virtualenv"; exit 1; }
done

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
environment=(PATH=/opt/webchat/bin:/usr/bin:/bin HOST=127.0.0.1 PORT="$port")
in_image() { chroot --userspec=10001:10001 "$rootfs" /usr/bin/env -i "${environment[@]}" "$@"; }
# Not through the function: chroot and env exec, so $! is webchat itself (stopped on exit).
chroot --userspec=10001:10001 "$rootfs" /usr/bin/env -i "${environment[@]}" webchat & server=$!
# The image's own HEALTHCHECK command (["CMD", ...]), as the container runtime would run it.
mapfile -t check < <(python3 -c 'import json, sys; print(*json.loads(sys.argv[1])[1:], sep="\n")' "$probe")
for _ in $(seq 100); do
  if in_image "${check[@]}" 2>/dev/null; then
    echo "OK: $IMAGE runs as $user, has no build tools, and its HEALTHCHECK passes"
    exit 0
  fi
  kill -0 "$server" 2>/dev/null || { echo "FAIL: webchat exited"; server=""; exit 1; }
  sleep 0.2
done
echo "FAIL: the HEALTHCHECK did not pass within 20 s"
exit 1
