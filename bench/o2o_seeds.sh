#!/usr/bin/env bash
# Offline-to-online over seeds on one dataset: for each seed, pretrain -> fine-tune -> evaluate (pretrained and
# fine-tuned agents on the same fixed-seed episodes), each in its own folder under OUT.
#
#   bash bench/o2o_seeds.sh PRESET "SEEDS" OUT [--set KEY=VALUE ...]
#   bash bench/o2o_seeds.sh can_flow_t "0 1 2 3 4" runs/can --set finetune.total_steps=6000 --set finetune.eval_every=2000
#
# The dataset is the preset's pretrain.dataset (make it once with `sacflow collect --preset PRESET`); extra --set
# flags reach all three stages. Each stage resumes when the script runs again. Prints one line per seed:
# seed, pretrained and fine-tuned deterministic success (or return), fine-tuning's own evaluations.
set -euo pipefail
preset=$1 seeds=$2 out=$3
shift 3
for seed in $seeds; do
  run="$out/$preset-s$seed"
  common=(--preset "$preset" --set seed="$seed" --set threads=1 --quiet "$@")
  sacflow pretrain "${common[@]}" --out "$run/pretrain"
  sacflow finetune "${common[@]}" --pretrained "$run/pretrain" --out "$run/finetune"
  sacflow evaluate "${common[@]}" --run pretrained="$run/pretrain" --run finetuned="$run/finetune" \
    --out "$run/evaluate"
  python - "$run" "$seed" <<'PY'
import json, sys
from pipeline.run_logs import read_rows
run, seed = sys.argv[1], sys.argv[2]
ev = json.load(open(f"{run}/evaluate/metrics.json"))
key = "success_rate" if "success_rate" in ev["pretrained"]["deterministic"] else "return_mean"
rows = [r for r in read_rows(f"{run}/finetune", "eval") if r["mode"] == "deterministic"]
during = ", ".join(f"{float(r[key]):.2f}" for r in rows)
print(f"seed {seed}: {key} pretrained {ev['pretrained']['deterministic'][key]:.3f} "
      f"(length {ev['pretrained']['deterministic']['length_mean']:.1f}) -> fine-tuned "
      f"{ev['finetuned']['deterministic'][key]:.3f} (length {ev['finetuned']['deterministic']['length_mean']:.1f}); "
      f"during fine-tuning: {during}")
PY
done
