#!/usr/bin/env bash
# Set everything up (.venv) and run the main job on the embedded default model and data.
# Today that is the single-machine TEFT pipeline (select -> train -> eval -> merge) on `tiny`/math;
# it moves to the localhost swarm simulation once that lands. Output goes to runs/main (or $1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
out="${1:-runs/main}"
mkdir -p "$out"
py=.venv/bin/python
set -x
$py -m teft inspect --model tiny
$py -m teft select --model tiny --data math --general-data general --method des --top-p 0.2 \
    --tokens 200000 --out "$out/expert_map.json"
$py -m teft train --model tiny --expert-map "$out/expert_map.json" --data math --steps 200 --lr 1e-3 \
    --out "$out/state.safetensors"
$py -m teft eval --model tiny --data math general code --json > "$out/eval_base.json"
$py -m teft eval --model tiny --state "$out/state.safetensors" --data math general code --json > "$out/eval_teft.json"
rm -rf "$out/merged"
$py -m teft merge --model tiny --state "$out/state.safetensors" --method replace --out "$out/merged"
set +x
$py - "$out" <<'PY'
import json, sys
out = sys.argv[1]
base, teft = (json.load(open(f"{out}/eval_{n}.json")) for n in ("base", "teft"))
print(f"{'data':<10}{'base ppl':>12}{'TEFT ppl':>12}")
for k in base:
    print(f"{k:<10}{base[k]['perplexity']:>12.3f}{teft[k]['perplexity']:>12.3f}")
print(f"merged checkpoint: {out}/merged (loads with AutoModelForCausalLM.from_pretrained)")
PY
