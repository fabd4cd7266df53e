#!/usr/bin/env bash
# Installs what etcdbake's tests need on a fresh Debian 12 machine, idempotently.
# Caches live outside the repository: ${XDG_CACHE_HOME:-$HOME/.cache}/etcdbake.
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/etcdbake"
tools="$cache/tools"
mkdir -p "$tools"

# Debian packages: cgo headers for Ignition's own ignition-apply, openssl for
# certificate checks in tests; mmdebstrap for the base root filesystem; the standard disk
# tools the image tests check against (sgdisk, sfdisk, fsck.vfat, fsck.ext4, qemu-img); QEMU and
# OVMF for boot tests.
need=()
for p in libblkid-dev openssl pkg-config mmdebstrap gdisk fdisk dosfstools e2fsprogs qemu-utils qemu-system-x86 ovmf; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi

# ignition-apply: the real Ignition (v2.25.0) applying a config to a directory tree.
# It dispatches on argv[0], so it is reached through a link named ignition-apply.
ign_version=v2.25.0
if [ ! -x "$tools/ignition-$ign_version/internal" ]; then
  echo "setup: building ignition-apply $ign_version"
  GOBIN="$tools/ignition-$ign_version" go install "github.com/coreos/ignition/v2/internal@$ign_version"
fi
ln -sfn "ignition-$ign_version/internal" "$tools/ignition-apply"
echo "setup: ignition-apply at $tools/ignition-apply"
