#!/usr/bin/env bash
# Every method end to end from the CLI on Fashion-MNIST, one short schedule for all, one seed:
# a teacher from `kdlab train` (or TEACHER=path/to/run), then `kdlab distill` per method; prints a Markdown table.
#   bash benchmarks/methods_table.sh            # trains the teacher first (~4 min on 2 cores)
#   TEACHER=experiments/fmnist-demo/runs/teacher-... bash benchmarks/methods_table.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KDLAB=${KDLAB:-.venv/bin/kdlab}
OUT=${OUT:-runs/methods-table}
DATA=(dataset=fashion_mnist dataset.train_subset=${SUBSET:-20000} dataset.batch_size=128)
SCHEDULE=(epochs=${EPOCHS:-3} optim.lr=0.05 optim.warmup_epochs=0.3 seed=${SEED:-0} progress=false)
STUDENT=${STUDENT:-cnn_small}
METHODS=${METHODS:-"kd fitnets kd_features at dml byot dkd dist kd+fitnets"}

if [ -z "${TEACHER:-}" ]; then
  $KDLAB train model=resnet20 "${DATA[@]}" epochs=4 optim.lr=0.1 optim.warmup_epochs=0.3 progress=false \
    out_dir="$OUT" name=teacher > "$OUT.teacher.json"
  TEACHER="$OUT/teacher"
fi
row() { python3 -c "import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); \
print(f\"| $1 | {r['test_top1']:.2f} | {r['selected_test_top1']:.2f} | {r['train_img_s']:.0f} |\")"; }
echo "| method | test top-1 (last) | test top-1 (val-selected) | train img/s |"
echo "|---|---|---|---|"
$KDLAB eval "$TEACHER" | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(f\"| teacher | {r['test_top1']:.2f} | | |\")"
$KDLAB train model=$STUDENT "${DATA[@]}" "${SCHEDULE[@]}" out_dir="$OUT" | row ce
for m in $METHODS; do
  extra=()
  case $m in dml|byot) ;; *) extra=(teacher="$TEACHER") ;; esac
  # dkd's KD term warms up over 20 epochs by default; with the warm-up cut to 1 epoch for this 3-epoch schedule, its
  # full-strength NCKD term kills the student unless gradients are clipped (see kdlab/methods/dkd.py)
  [ "$m" = dkd ] && extra+=(method.warmup_epochs=1 optim.grad_clip=5)
  $KDLAB distill student=$STUDENT method=$m "${extra[@]}" "${DATA[@]}" "${SCHEDULE[@]}" out_dir="$OUT" | row "$m"
done
