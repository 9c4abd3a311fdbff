#!/bin/sh
# Makes the Debian 12 base image of deploy/Dockerfile without a registry:
# debootstraps a minimal bookworm root from the Debian mirror this machine's
# apt uses, then imports it (tar | docker import). Containers built from it
# install their packages from the same mirror. Needs root, debootstrap and a
# running Docker daemon; takes about a minute. Does nothing when the image
# exists (--force makes it again).
#
#   deploy/docker/base-image.sh [--force] [IMAGE]      (IMAGE: moe-debian:12)
#   DEBIAN_MIRROR=http://HOST/debian deploy/docker/base-image.sh
#
# Where Docker Hub is reachable, `--build-arg BASE_IMAGE=debian:12` builds
# deploy/Dockerfile from the official image instead.
set -eu
force=0
[ "${1:-}" = "--force" ] && { force=1; shift; }
image=${1:-moe-debian:12}
if [ $force = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "base-image: $image exists (--force to make it again)"
    exit 0
fi
command -v debootstrap >/dev/null 2>&1 ||
    { echo "base-image: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }

# sources_uri SUITE: the first URI apt is configured to fetch SUITE from, in
# one-line (sources.list, *.list) or deb822 (*.sources) form.
sources_uri() {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] && awk -v s="$1" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++;
            if ($2 ~ /^\[/) i++; if ($(i + 1) == s) { print $i; exit } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] && awk -v s="$1" 'BEGIN { RS = ""; FS = "\n" }
            { uri = ""; hit = 0
              for (n = 1; n <= NF; n++) {
                  if ($n ~ /^URIs:/) { split($n, a, " "); uri = a[2] }
                  if ($n ~ /^Suites:/) { m = split($n, b, " "); for (j = 2; j <= m; j++) if (b[j] == s) hit = 1 }
              }
              if (hit && uri != "") { print uri; exit } }' "$f"
    done
}
mirror=${DEBIAN_MIRROR:-$(sources_uri bookworm | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}
security=$(sources_uri bookworm-security | head -n 1)

work=$(mktemp -d "${TMPDIR:-/tmp}/moe-base-XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 1' HUP INT TERM PIPE
echo "base-image: debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 5 "$work/debootstrap.log" >&2; echo "base-image: debootstrap failed" >&2; exit 1; }
{
    echo "deb $mirror bookworm main"
    echo "deb $mirror bookworm-updates main"
    [ -z "$security" ] || echo "deb $security bookworm-security main"
} >"$work/root/etc/apt/sources.list"
rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/* \
       "$work"/root/var/log/*.log
tar -C "$work/root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase bookworm $mirror" - "$image" >/dev/null
echo "base-image: $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
