#!/usr/bin/env bash
# Does cheaper arithmetic or sharing the teacher's outputs change KD's accuracy? (issue 6)
# The demo's experiment (Fashion-MNIST, cnn_small, 3 epochs, seeds 0-2, KD with T=2) from ONE teacher checkpoint, in
# three variants: bf16 with shared (cached) teacher logits, bf16 online (the teacher runs in every step), and the
# reference, fp32 online. Each variant is its own experiment with its own ce baseline in the same precision; the seeds'
# data streams are identical across variants, so only the arithmetic and the source of the teacher's logits differ.
#   TEACHER=experiments/fmnist-demo/runs/teacher-resnet20-ce-s0-<key> bash benchmarks/kd_accuracy.sh   (~16 min)
# Prints a Markdown table (test top-1 of the last epoch); runs already finished are loaded, not retrained.
set -euo pipefail
cd "$(dirname "$0")/.."
KDLAB=${KDLAB:-.venv/bin/kdlab}
OUT=${OUT:-runs/kd-accuracy}
: "${TEACHER:?set TEACHER to a teacher run directory or .safetensors file (e.g. the teacher run of the demo)}"
T=${T:-2}
VARIANTS=${VARIANTS:-"bf16-shared:bf16:true bf16-online:bf16:false fp32-online:fp32:false"}

names=()
for variant in $VARIANTS; do
  IFS=: read -r name precision share <<< "$variant"
  start=$(date +%s)
  $KDLAB run out_dir="$OUT" name="$name" precision="$precision" share_teacher_outputs="$share" progress=false \
    "methods=[{name: kd, T: $T}]" "teachers=[{name: resnet20, checkpoint: $TEACHER}]" > "$OUT.$name.json"
  echo "$name: $(( $(date +%s) - start )) s" >&2
  names+=("$name")
done
# the table: test top-1 (last epoch) per variant, mean +- std over seeds and per seed; the LAST variant is the reference
python3 - "$OUT" "${names[@]}" <<'PY'
import json, statistics, sys
out, names = sys.argv[1], sys.argv[2:]
def runs(name, method):
    rows = json.load(open(f"{out}/{name}/report/results.json"))["runs"]
    return {r["seed"]: r for r in rows if r["method"] == method and r["role"] != "teacher"}
def ms(values):
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0:.2f}"
ref = [r["test_top1_last"] for r in runs(names[-1], "kd").values()]
print("| variant | baseline top-1 | KD top-1 | KD per seed | KD − baseline, paired by seed (mean ± std) | KD − reference | KD train s |")
print("|---|---|---|---|---|---|---|")
for name in names:
    kd, base = runs(name, "kd"), runs(name, "ce")
    top = [kd[s]["test_top1_last"] for s in sorted(kd)]
    gains = [kd[s]["test_top1_last"] - base[s]["test_top1_last"] for s in sorted(kd) if s in base]
    diff = statistics.mean(top) - statistics.mean(ref)
    print(f"| {name} | {ms([base[s]['test_top1_last'] for s in sorted(base)])} | {ms(top)} | "
          f"{' / '.join(f'{t:.2f}' for t in top)} | {ms(gains)} | {diff:+.2f} "
          f"({'within' if abs(diff) <= statistics.stdev(ref) else 'OUTSIDE'} 1 std of {names[-1]}) | "
          f"{statistics.mean(kd[s]['train_time_s'] for s in kd):.1f} |")
PY
