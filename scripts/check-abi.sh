#!/usr/bin/env bash
# Checks the ABI of libisl against the committed baseline in abi/.
#
#   scripts/check-abi.sh [BUILD_DIR]            check (default BUILD_DIR: build)
#   scripts/check-abi.sh --update [BUILD_DIR]   regenerate abi/isl.symbols and abi/libisl.abi
#
# (a) The exported symbols (nm -D --defined-only, with their version nodes) must equal
#     abi/isl.symbols, and the functions declared ISL_API in include/isl.h must be exactly
#     the exported ones.
# (b) If abidiff (abigail-tools) and abi/libisl.abi exist and the library has DWARF debug
#     info, abidiff compares the types and functions of the public header. Any change it
#     reports fails (libabigail flags removals and signature changes as incompatible, and
#     cannot always tell whether other changes, e.g. moved struct members, break
#     callers); after review, an intended compatible change is recorded with --update.
#     Changes libabigail knows to be harmless (e.g. appended enumerators) pass. A release build has no debug info; CI uses a debugoptimized build:
#
#   meson setup build-abi --buildtype=debugoptimized -Dtests=false -Dpython=disabled \
#       -Djava=disabled -Ddocs=disabled
#   ninja -C build-abi lib/libisl.so.<project version>
#   scripts/check-abi.sh build-abi
#
# Exit status: 0 compatible, 1 ABI mismatch, 2 usage or tool error.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
update=0
if [ "${1:-}" = "--update" ]; then
  update=1
  shift
fi
build=${1:-$root/build}
lib=$build/lib/libisl.so
symbols=$root/abi/isl.symbols
baseline=$root/abi/libisl.abi
header=$root/include/isl.h

if [ ! -e "$lib" ]; then
  echo "check-abi: $lib not found (build it first: ninja -C $build)" >&2
  exit 2
fi
lib=$(readlink -f "$lib")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Defined dynamic symbols with their versions, without the version nodes themselves.
nm -D --defined-only "$lib" | awk '$2 != "A" { print $3 }' | LC_ALL=C sort > "$tmp/symbols"

has_debug_info() {
  readelf -S "$1" 2>/dev/null | grep -q '\.debug_info'
}

abidw_args=(--headers-dir "$root/include" --drop-private-types --exported-interfaces-only
            --no-corpus-path --no-comp-dir-path --short-locs)

if [ "$update" = 1 ]; then
  mkdir -p "$root/abi"
  cp "$tmp/symbols" "$symbols"
  echo "check-abi: wrote $symbols ($(wc -l < "$symbols") symbols)"
  if ! command -v abidw > /dev/null; then
    echo "check-abi: abidw not found (apt install abigail-tools); $baseline not updated" >&2
    exit 2
  fi
  if ! has_debug_info "$lib"; then
    echo "check-abi: $lib has no debug info; use a debugoptimized build for --update" >&2
    exit 2
  fi
  abidw "${abidw_args[@]}" --out-file "$baseline" "$lib"
  echo "check-abi: wrote $baseline"
  exit 0
fi

status=0

# (a) Symbols.
if [ ! -f "$symbols" ]; then
  echo "check-abi: $symbols is missing; create it with scripts/check-abi.sh --update" >&2
  exit 2
fi
if diff -u "$symbols" "$tmp/symbols" > "$tmp/symbols.diff"; then
  echo "check-abi: exported symbols match abi/isl.symbols ($(wc -l < "$symbols"))"
else
  echo "check-abi: exported symbols differ from abi/isl.symbols (- baseline, + $lib):"
  tail -n +3 "$tmp/symbols.diff" | grep '^[-+]' || true
  if grep -q '^-[^-]' "$tmp/symbols.diff"; then
    echo "check-abi: symbols were removed or re-versioned: incompatible" >&2
  else
    echo "check-abi: symbols were added: record them with scripts/check-abi.sh --update" >&2
  fi
  status=1
fi

# Header declarations versus exports.
grep -o 'ISL_API[^;(]*\bisl_[a-z0-9_]*[[:space:]]*(' "$header" |
  grep -o 'isl_[a-z0-9_]*[[:space:]]*($' | tr -d ' (' | LC_ALL=C sort -u > "$tmp/declared"
sed 's/@.*//' "$tmp/symbols" | LC_ALL=C sort -u > "$tmp/exported"
if ! diff -u "$tmp/declared" "$tmp/exported" > "$tmp/decl.diff"; then
  echo "check-abi: ISL_API declarations of include/isl.h (-) and exports (+) differ:" >&2
  tail -n +3 "$tmp/decl.diff" | grep '^[-+]' >&2 || true
  status=1
fi

# (b) Types and functions with libabigail.
if ! command -v abidiff > /dev/null; then
  echo "check-abi: abidiff not found (apt install abigail-tools): type check skipped"
elif [ ! -f "$baseline" ]; then
  echo "check-abi: $baseline missing: type check skipped"
elif ! has_debug_info "$lib"; then
  echo "check-abi: $lib has no debug info: type check skipped (use a debugoptimized build)"
else
  set +e
  abidiff --headers-dir2 "$root/include" --drop-private-types --exported-interfaces-only \
    "$baseline" "$lib" > "$tmp/abidiff.txt" 2>&1
  rc=$?
  set -e
  # abidiff's exit status is a bit field: 1 error, 2 usage error, 4 ABI change,
  # 8 incompatible ABI change.
  if [ $((rc & 3)) -ne 0 ]; then
    cat "$tmp/abidiff.txt" >&2
    echo "check-abi: abidiff failed (status $rc)" >&2
    exit 2
  elif [ $((rc & 8)) -ne 0 ]; then
    cat "$tmp/abidiff.txt"
    echo "check-abi: INCOMPATIBLE ABI change against abi/libisl.abi" >&2
    status=1
  elif [ $((rc & 4)) -ne 0 ]; then
    cat "$tmp/abidiff.txt"
    echo "check-abi: ABI change against abi/libisl.abi: review it; if it keeps old binaries" \
      "working (e.g. only additions), record it with scripts/check-abi.sh --update" >&2
    status=1
  else
    echo "check-abi: abidiff finds no change against abi/libisl.abi"
  fi
fi

exit $status
