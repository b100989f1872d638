#!/usr/bin/env bash
# The quick start: preset -> prepare + train -> score -> baseline -> export -> verify, on CPU.
#
#   recipes/VoxCeleb/demo.sh [DATA_FOLDER | synthetic] [OUTPUT_FOLDER]
#
# Without DATA_FOLDER it trains on the shipped real speech, data/librispeech-mini (251
# LibriSpeech speakers, one ~14 s recording each, CC BY 4.0). "synthetic" synthesises a
# 40-speaker corpus with espeak-ng instead (a fast check of the pipeline, not of a model).
# DATA_FOLDER holds <speaker>/<recording>.wav|flac or <speaker>/<session>/<utt>.wav|flac.
# The training settings are the small-data preset chosen from the corpus's size
# (python -m sb_sphereface2.training.presets DATA_FOLDER prints it): command-line
# overrides of hparams/train.yaml, whose defaults stay the paper's VoxCeleb recipe. If
# DATA_FOLDER has a trials.txt that list is scored; otherwise held-out test speakers are
# drawn and their trials (trials/heldout.txt) are scored. Either way the EER is printed
# next to an MFCC mean/std cosine baseline on the same trials.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
DATA=${1:-data/librispeech-mini}
OUT=${2:-demo_output}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1

if [ "$DATA" = synthetic ]; then
    DATA="$OUT/espeak_corpus"
    $PY tools/synthetic_corpus.py "$DATA" --speakers 40 --sessions 2 --utterances 6
fi
if [ ! -d "$DATA" ]; then echo "demo: data folder not found: $DATA" >&2; exit 2; fi
TRIALS="[]"
TRIAL_FLAG=()
if [ -f "$DATA/trials.txt" ]; then TRIALS="[$DATA/trials.txt]"; TRIAL_FLAG=(--trial-list); fi

echo "== 0/4 small-data preset (overrides of hparams/train.yaml, chosen from the corpus's size)"
$PY -m sb_sphereface2.training.presets "$DATA" "${TRIAL_FLAG[@]}" --save "$OUT/preset.txt"
mapfile -t PRESET < "$OUT/preset.txt"

echo "== 1/4 prepare + train (SphereFace2-C)"
$PY recipes/VoxCeleb/train.py hparams/train.yaml "${PRESET[@]}" --data_folder="$DATA" \
    --trial_lists="$TRIALS" --output_folder="$OUT/train"
tail -n 1 "$OUT/train/train_log.txt"
echo "training curves (loss, lr, margin, cosines, EER, SphereFace2's bias and terms): $OUT/train/training_curves.png"

echo "== 2/4 scoring (cosine and AS-norm) and the MFCC baseline on the same trials"
$PY recipes/VoxCeleb/score.py hparams/verification.yaml --device=cpu \
    --model_folder="$OUT/train/model" --data_prep_folder="$OUT/train/data" \
    --output_folder="$OUT/scores" --cohort_utterances_per_speaker=4
$PY -m sb_sphereface2.scoring.mfcc_baseline --data_prep_folder="$OUT/train/data" --json "$OUT/mfcc_baseline.json"

echo "== 3/4 export a hub-ready pretrained folder"
$PY recipes/VoxCeleb/export.py "$OUT/train/model" "$OUT/exported" \
    --results "$OUT/scores/results.json" --train-embeddings "$OUT/scores/embeddings_train.npz" \
    --name "sb_sphereface2 demo (SphereFace2-C, small ResNet, $(basename "$DATA"))"

echo "== 4/4 SpeechBrain's SpeakerRecognition.from_hparams on the exported folder, held-out speakers"
$PY tools/demo_summary.py "$OUT"
echo "== demo finished in $((SECONDS / 60)) min $((SECONDS % 60)) s (load average now: $(cut -d' ' -f1-3 /proc/loadavg)); results in $OUT"
