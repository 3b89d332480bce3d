#!/usr/bin/env bash
# Does the teacher's view bank (`teacher_views: K`, FKD's idea) change distillation's accuracy against the default
# exact per-epoch sharing of teacher outputs? (issue 13)
#
# Runs the default experiment (`kdlab/configs/fmnist_demo.yaml`: resnet8 -> cnn_tiny, 3 seeds, 3 student epochs)
# with its two logits-only methods that gain most, kd (T = 2) and dist, once with teacher_views=3 (= the number of
# epochs) and once with teacher_views=0 (exact sharing), in one experiment directory so that both arms share the
# teacher. After each arm it keeps the report's results.md and summary.json (teacher passes run and saved) as
# OUT/views<K>-results.md and OUT/views<K>-summary.json, then prints the gains of both.
#
#   benchmarks/teacher_views.sh [OUT]        # OUT defaults to experiments/teacher-views; ~4 min on 2 idle cores
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-experiments/teacher-views}
PY=${PY:-.venv/bin/python}
for K in 3 0; do
  "$PY" -m kdlab run "methods=[{name: kd, T: 2}, dist]" "teacher_views=$K" "out_dir=$OUT" >&2
  cp "$OUT/fmnist-demo/report/results.md" "$OUT/views$K-results.md"
  cp "$OUT/fmnist-demo/summary.json" "$OUT/views$K-summary.json"
done
for K in 3 0; do
  echo "== teacher_views=$K"
  sed -n '/^| Method/,/^$/p' "$OUT/views$K-results.md"
  "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print('teacher passes:', s['teacher_cache'])" \
    "$OUT/views$K-summary.json"
done
