#!/usr/bin/env bash
# Set everything up (.venv) and run the main job: a whole TEFT swarm on localhost on the embedded default
# (tiny model, math as the new domain): 4 honest miners, 3 validators, one of each adversary, 6 cycles,
# plus every baseline: full fine-tuning and single-process TEFT on the same tokens, a lone miner, dense DiLoCo.
# Output: runs/main-<time>/ (summary.md, report.json, plots, logs). Extra arguments go to swarm.simulate.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
out="runs/main-$(date +%Y%m%d-%H%M%S)"
exec .venv/bin/python -m swarm.simulate --config configs/tiny.yaml --miners 4 --validators 3 --cycles 6 \
    --adversary all --baseline --out "$out" "$@"
