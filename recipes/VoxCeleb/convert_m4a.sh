#!/usr/bin/env bash
# Convert VoxCeleb2's AAC (.m4a) files to 16 kHz mono 16-bit WAV with FFmpeg, keeping the
# <speaker>/<session>/<utterance> layout, so that prepare.py (which reads WAV/FLAC through
# soundfile) can use them.
#
#   recipes/VoxCeleb/convert_m4a.sh SRC_DIR DST_DIR [JOBS]
#
#   SRC_DIR  VoxCeleb2 folder holding the speaker folders (e.g. vox2_dev_aac/dev/aac)
#   DST_DIR  output folder (same layout, .wav)
#   JOBS     parallel ffmpeg processes (default: number of CPUs)
#
# Files already converted (a non-empty DST .wav) are skipped, so an interrupted run can be
# resumed; each file is written to a temporary name and renamed when ffmpeg succeeds, so
# no half-written WAV is left behind. VoxCeleb2-dev is about 1.09 M files (~2,300 h): expect
# hours, and ~300 GB of WAV.
#
# Needs ffmpeg (Debian: apt-get install -y ffmpeg). Not exercised by the test suite: the
# project's machines have no ffmpeg and no VoxCeleb2 (its file handling was checked by hand
# with a stand-in ffmpeg).
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
SRC=$(cd "$1" && pwd)
mkdir -p "$2"
DST=$(cd "$2" && pwd)
JOBS=${3:-$(nproc)}
command -v ffmpeg >/dev/null || { echo "error: ffmpeg not found: install it with: apt-get install -y ffmpeg" >&2; exit 1; }

convert_one() {
    local rel="$1" src="$2" dst="$3"
    local out="$dst/${rel%.m4a}.wav"
    [ -s "$out" ] && return 0
    mkdir -p "$(dirname "$out")"
    local tmp="$(dirname "$out")/.$(basename "$out").part$$.wav"  # hidden: prepare.py ignores it
    if ffmpeg -nostdin -loglevel error -y -i "$src/$rel" -ac 1 -ar 16000 -c:a pcm_s16le "$tmp"; then
        mv -f "$tmp" "$out"
    else
        rm -f "$tmp"
        echo "error: ffmpeg failed on $src/$rel" >&2
        return 1
    fi
}
export -f convert_one

cd "$SRC"
find . -mindepth 3 -maxdepth 3 -name '*.m4a' -printf '%P\0' \
    | xargs -0 -I{} -P "$JOBS" bash -c 'convert_one "$1" "$2" "$3"' _ {} "$SRC" "$DST" \
    || { echo "error: some files failed to convert (re-run to retry them)" >&2; exit 1; }
echo "converted $(find "$DST" -name '*.wav' | wc -l) files into $DST"
