#!/usr/bin/env bash
# Builds skein's local test images without a registry: a busybox-static root
# filesystem with applet links, imported with `docker import`.
#
#   skein-test:v1         httpd on port 8080 serving /www; / says "skein-test v1",
#                         /health says "ok"; SIGTERM stops it at once
#   skein-test:v2         the same, saying "skein-test v2"
#   skein-test:unhealthy  the same server (saying "skein-test unhealthy") but
#                         without /health, so a check like
#                         `wget -q -O- http://127.0.0.1:8080/health` fails
#
# Every image carries the label skein.test-image=<hash of this script and of
# the busybox binary>; an image whose label matches is left alone, so running
# this again is quick and changes nothing. Needs a running Docker engine and
# /bin/busybox from the Debian package busybox-static (scripts/setup.sh
# installs it). BUSYBOX=/path overrides the binary.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'make-test-image: %s\n' "$*" >&2; exit 1; }

BUSYBOX="${BUSYBOX:-/bin/busybox}"
REPO="skein-test"
TAGS=(v1 v2 unhealthy)
# Applets linked into /bin: what tests and benchmarks use, plus a few basics.
APPLETS=(sh ash httpd wget nc sleep echo cat ls kill killall ps true false env
  printf test "[" mkdir rm cp mv touch grep sed head tail wc date hostname id
  nslookup ping sync yes seq tr cut sort uniq timeout)

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running? scripts/setup.sh starts it)"
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: apt-get install busybox-static (scripts/setup.sh does)"
if command -v file >/dev/null 2>&1 && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
  die "$BUSYBOX is not statically linked: install busybox-static, not busybox"
fi

self_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-64)
bb_hash=$(sha256sum "$BUSYBOX" | cut -c1-64)
stamp=$(printf '%s %s' "$self_hash" "$bb_hash" | sha256sum | cut -c1-16)

current() { # current TAG -> the image's stamp label, or nothing
  docker image inspect --format '{{ index .Config.Labels "skein.test-image" }}' "$REPO:$1" 2>/dev/null || true
}

todo=()
for tag in "${TAGS[@]}"; do
  [ "$(current "$tag")" = "$stamp" ] || todo+=("$tag")
done
if [ ${#todo[@]} -eq 0 ]; then
  log "test images up to date: ${TAGS[*]/#/$REPO:}"
  exit 0
fi

# httpd as PID 1 would ignore SIGTERM (a stop would wait out the grace
# period): a shell that exits on TERM runs it instead.
SERVE="trap 'exit 0' TERM INT; httpd -f -p 8080 -h /www & wait \$!"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for tag in "${todo[@]}"; do
  root="$work/$tag"
  mkdir -p "$root/bin" "$root/www" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" \
    "$root/dev" "$root/root" "$root/var/run"
  chmod 1777 "$root/tmp"
  cp "$BUSYBOX" "$root/bin/busybox"
  chmod 0755 "$root/bin/busybox"
  for a in "${APPLETS[@]}"; do
    ln -sf busybox "$root/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf 'skein-test %s\n' "$tag" >"$root/www/index.html"
  if [ "$tag" != unhealthy ]; then
    printf 'ok\n' >"$root/www/health"
  fi
  log "importing $REPO:$tag"
  tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
    docker import \
      --change 'ENV PATH=/bin' \
      --change 'EXPOSE 8080/tcp' \
      --change "LABEL skein.test-image=$stamp" \
      --change "CMD [\"sh\", \"-c\", \"$SERVE\"]" \
      - "$REPO:$tag" >/dev/null
  [ "$(current "$tag")" = "$stamp" ] || die "docker import of $REPO:$tag did not produce the expected image"
done
log "test images ready: ${TAGS[*]/#/$REPO:}"
