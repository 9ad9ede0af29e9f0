#!/usr/bin/env bash
# Create .venv in the repository root if missing and install the project into it (idempotent).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    "$py" -m venv .venv
fi
stamp=.venv/.teft-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "setting up .venv (about a minute, once)" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    # torch first and pinned, with pip (it knows where the local build lies): an unpinned torch would pull a
    # multi-GB CUDA build. No bytecode yet: see below.
    .venv/bin/python -m pip install -q --no-compile "torch==${TORCH_VERSION:-2.13.0}"
    # the rest with uv when it can be had (seconds where pip takes a minute; torch is already satisfied)
    if ! { .venv/bin/python -m pip install -q uv >/dev/null 2>&1 &&
        .venv/bin/python -m uv pip install -q --python .venv/bin/python -e ".[dev]"; }; then
        .venv/bin/python -m pip install -q --no-compile -e ".[dev]"
    fi
    # bytecode for what the peers, the CLI and the tests import, written once here (every process would
    # compile it again where PYTHONDONTWRITEBYTECODE is set); compiling all of site-packages takes longer
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c "
import hivemind, matplotlib.pyplot, prometheus_client, pytest, swarm.peer, swarm.protocol.cycle, swarm.sim.plots
import swarm.sim.simulate, swarm.status, teft.__main__, teft.train
from teft.model import load_model
load_model('tiny')" >/dev/null 2>&1 || true
    .venv/bin/python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION:-2.13.0}'), torch.__version__"
    touch "$stamp"
fi
