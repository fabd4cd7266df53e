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
# OVMF for boot tests; nftables for the firewall tests (real nft in network namespaces).
need=()
for p in libblkid-dev openssl pkg-config mmdebstrap gdisk fdisk dosfstools e2fsprogs qemu-utils qemu-system-x86 ovmf nftables openssh-client; do
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

# weed: SeaweedFS, a real S3-compatible server for the backup target tests. `go install`
# refuses it (its go.mod has replace directives), so it is built inside a writable copy of
# the module (about 4.5 min on 2 cores with a cold module cache; cached after that).
weed_version=v0.0.0-20261109003541-7506e5f91cd6
if [ ! -x "$tools/weed-$weed_version/weed" ]; then
  echo "setup: building SeaweedFS weed $weed_version (a few minutes, once)"
  src=$(go mod download -json "github.com/seaweedfs/seaweedfs@$weed_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  rm -rf "$tools"/.weed-build.*   # a build cut short
  work=$(mktemp -d "$tools/.weed-build.XXXXXX")
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  (cd "$work" && go build -trimpath -o "$work/weed.bin" ./weed)
  mkdir -p "$tools/weed-$weed_version"
  mv "$work/weed.bin" "$tools/weed-$weed_version/weed"
  rm -rf "$work"
fi
ln -sfn "weed-$weed_version/weed" "$tools/weed"
echo "setup: weed at $tools/weed"
