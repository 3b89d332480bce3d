#!/usr/bin/env bash
# Does cheaper arithmetic or sharing the teacher's outputs change KD's accuracy? (issue 6)
# The demo's experiment (Fashion-MNIST, cnn_small, 3 epochs, seeds 0-2, KD with T=2) from ONE teacher checkpoint, in
# three variants: bf16 with shared (cached) teacher logits, bf16 online (the teacher runs in every step), and the
# reference, fp32 online. Each variant is its own experiment with its own ce baseline in the same precision; the seeds'
# data streams are identical across variants, so only the arithmetic and the source of the teacher's logits differ.
#   TEACHER=experiments/fmnist-demo/runs/teacher-resnet20-ce-s0-<key> bash benchmarks/kd_accuracy.sh   (~15 min)
set -euo pipefail
cd "$(dirname "$0")/.."
KDLAB=${KDLAB:-.venv/bin/kdlab}
OUT=${OUT:-runs/kd-accuracy}
: "${TEACHER:?set TEACHER to a teacher run directory or .safetensors file (e.g. the teacher run of the demo)}"
T=${T:-2}
VARIANTS=${VARIANTS:-"bf16-shared:bf16:true bf16-online:bf16:false fp32-online:fp32:false"}

for variant in $VARIANTS; do
  IFS=: read -r name precision share <<< "$variant"
  start=$(date +%s)
  $KDLAB run out_dir="$OUT" name="$name" precision="$precision" share_teacher_outputs="$share" progress=false \
    "methods=[{name: kd, T: $T}]" "teachers=[{name: resnet20, checkpoint: $TEACHER}]" > "$OUT.$name.json"
  echo "## $name (precision=$precision share_teacher_outputs=$share, $(( $(date +%s) - start )) s)"
  grep -E "^\| (row|cnn_small|kd)" "$OUT/$name/report/results.md" | cut -c1-200
  echo
done
