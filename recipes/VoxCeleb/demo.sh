#!/usr/bin/env bash
# The quick start: prepare -> train -> large-margin fine-tune -> score -> export -> verify,
# on CPU, with small models and few epochs set by command-line overrides (the hparams
# files keep the paper's settings).
#
#   recipes/VoxCeleb/demo.sh [DATA_FOLDER] [OUTPUT_FOLDER]
#
# Without DATA_FOLDER it synthesises a 40-speaker corpus with espeak-ng. DATA_FOLDER must
# hold <speaker>/<session>/<utt>.wav|flac; if it has a trials.txt it is scored, else the
# held-out validation speakers' trials are.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
DATA=${1:-}
OUT=${2:-demo_output}
mkdir -p "$OUT"

if [ -z "$DATA" ]; then
    DATA="$OUT/espeak_corpus"
    $PY tools/synthetic_corpus.py "$DATA" --speakers 40 --sessions 2 --utterances 6
fi
if [ ! -d "$DATA" ]; then echo "demo: data folder not found: $DATA" >&2; exit 2; fi
TRIALS="[]"
if [ -f "$DATA/trials.txt" ]; then TRIALS="[$DATA/trials.txt]"; fi

# Small model and short schedule for a CPU demo (the real defaults are the paper's).
SMALL=(--device=cpu --num_workers=0 --augment=False --n_mels=40
       --resnet_channels="[16,16,32,32]" --resnet_blocks="[1,1,1,1]" --emb_dim=128
       --batch_size=32 --dev_speakers=4 --dev_trials=400 --data_folder="$DATA")

echo "== 1/4 prepare + train (SphereFace2-C, ResNet, 2 s crops)"
$PY recipes/VoxCeleb/train.py hparams/train.yaml "${SMALL[@]}" --trial_lists="$TRIALS" \
    --output_folder="$OUT/train" --speed_perturb=True --number_of_epochs=8 --warmup_epochs=1 \
    --lr=0.1 --final_lr=0.005 --margin_start_epoch=1 --margin_fix_epoch=4 --average_last=3

echo "== 2/4 large-margin fine-tuning (m = 0.3, 3 s crops)"
$PY recipes/VoxCeleb/train.py hparams/finetune.yaml "${SMALL[@]}" --trial_lists="$TRIALS" \
    --output_folder="$OUT/lmf" --pretrained_model="$OUT/train/model" --number_of_epochs=2 \
    --crop_seconds=3.0 --lr=0.005 --final_lr=0.001

echo "== 3/4 scoring (cosine and AS-norm)"
$PY recipes/VoxCeleb/score.py hparams/verification.yaml --device=cpu \
    --model_folder="$OUT/lmf/model" --data_prep_folder="$OUT/train/data" \
    --output_folder="$OUT/scores" --cohort_utterances_per_speaker=4

echo "== 4/4 export a hub-ready pretrained folder and verify two files with it"
ENROL=$(awk -F, 'NR==2 {print $3}' "$OUT/train/data/test.csv")
SPK=$(awk -F, 'NR==2 {print $6}' "$OUT/train/data/test.csv")
SAME=$(awk -F, -v s="$SPK" 'NR>2 && $6==s {f=$3} END {print f}' "$OUT/train/data/test.csv")
OTHER=$(awk -F, -v s="$SPK" 'NR>1 && $6!=s {print $3; exit}' "$OUT/train/data/test.csv")
$PY recipes/VoxCeleb/export.py "$OUT/lmf/model" "$OUT/exported" \
    --results "$OUT/scores/results.json" --train-embeddings "$OUT/scores/embeddings_train.npz" \
    --name "sb_sphereface2 demo (SphereFace2-C, small ResNet, espeak-ng voices)"
$PY - "$OUT/exported" "$ENROL" "$SAME" "$OTHER" <<'PYEOF'
import sys
from sb_sphereface2.pretrained.folder import load_for_inference
model = load_for_inference(sys.argv[1])  # SpeechBrain's SpeakerRecognition, offline, strict
enrol, same, other = sys.argv[2:]
for name, test in (("same speaker", same), ("different speakers", other)):
    score, decision = model.verify_files(enrol, test)
    print(f"verify_files, {name}: cosine {float(score):.3f}, accepted at 0.25: {bool(decision)}")
PYEOF
echo "== results ($OUT/scores/results.md)"
cat "$OUT/scores/results.md"
