#!/usr/bin/env bash
# Set everything up (.venv) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
export HIVEMIND_MEMORY_SHARING_STRATEGY=file_descriptor
exec .venv/bin/python -m pytest "$@"
