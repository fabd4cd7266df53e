#!/usr/bin/env bash
# Fails when a tracked file is an executable binary (a stale build output) or larger than
# 5 MB: build outputs belong in bin/ (ignored), caches outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=$((5 * 1024 * 1024))
bad=0
while IFS= read -r -d '' f; do
  [ -f "$f" ] || continue
  size=$(stat -c %s "$f")
  if [ "$size" -gt "$limit" ]; then
    echo "check-tracked: $f is $size bytes (over 5 MB): remove it from git (git rm --cached '$f')" >&2
    bad=1
  fi
  magic=$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')
  case "$magic" in
    7f454c46|cffaedfe|cefaedfe|feedfacf|feedface|4d5a*)
      echo "check-tracked: $f is an executable binary: remove it from git and build it with make build (bin/ is ignored)" >&2
      bad=1 ;;
  esac
  if [ -x "$f" ] && head -c 8192 "$f" | tr -d '\000' | cmp -s - <(head -c 8192 "$f"); then :; elif [ -x "$f" ]; then
    echo "check-tracked: $f is executable and not text: remove it from git" >&2
    bad=1
  fi
done < <(git ls-files -z)
exit $bad
