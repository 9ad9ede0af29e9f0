#!/usr/bin/env bash
# Set everything up (.venv) and run the whole test suite. Arguments go to pytest.
# With no test paths given, the suite runs as three pytest processes (unit, network, end to end): tests
# that start hivemind DHTs inside the test process fork it, and a long-lived process that already ran
# whole swarms of subprocesses was seen to hang those forks; a fresh process per group avoids that.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" || exit 1
cd "$root"
export HIVEMIND_MEMORY_SHARING_STRATEGY=file_descriptor
py=.venv/bin/python
for arg in "$@"; do
    if [[ $arg != -* ]]; then
        exec $py -m pytest "$@"
    fi
done
# The unit tests run in two worker processes, one test file per worker at a time (so module fixtures such as a
# whole in-process swarm are built once). The network tests, which mostly wait on real daemons and deadlines,
# run in two workers too (a fresh pytest process: a long-lived one that had run whole swarms was seen to hang
# DHT forks; the hang behind it, hivemind's shared MPFuture lock left held by a killed DHT child, is fixed in
# swarm/net/futurelocks.py). The end-to-end swarms run alone: their peers' phases are wall-clock windows.
status=0
$py -m pytest -n 2 --dist loadfile "$@" tests --ignore=tests/net --ignore=tests/e2e || status=1
$py -m pytest -n 2 --dist loadfile "$@" tests/net || status=1
$py -m pytest "$@" tests/e2e || status=1
if [[ $status -ne 0 ]]; then
    echo "some tests failed (see the failures above)"
fi
exit $status
