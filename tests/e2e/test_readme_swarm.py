"""The README's "A swarm by hand", run as written: its commands are read from the README's code block, so a
change on either side that breaks the walkthrough fails here.

The commands run in a fresh folder as a new user would (`configs/` and `scripts/` there are the repository's), each
a real process. What the test changes, and only that: `python` is this interpreter; the listening addresses are
127.0.0.1 (tests stay on this machine) on free ports instead of 31337 and 9101; `/ip4/.../p2p/Qm...` is the JOIN
line the bootstrap node printed; `--start-in` is 30 s instead of the 120 s a person needs to start peers by hand;
commands of one kind in a row (the two keygens, the two held-out sets) run side by side; `swarm.status` runs once
with `--json`, the README's alternative to `--watch`; and the folder's `configs/tiny.yaml` is the repository's with
shorter phase timings (the walkthrough's `--template`; every other field as shipped), so a cycle takes 32 s instead
of 68. It passes when the first cycle every peer took part in merged the miner in every peer's cycle log, and the
validator's metrics endpoint and `swarm.status` say so too. About 2 min 10 s on 2 busy cores (130 s, twice).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from swarm.protocol.metrics import scrape_url

REPO = Path(__file__).resolve().parents[2]
TIMINGS = {"sync": 3, "train": 8, "commit": 3, "reveal": 4, "evaluate": 8, "reduce": 6}  # 32 s; tiny.yaml: 68 s
START_IN = "30"  # from launch to genesis: three peers load torch, the model and join (15-25 s on 2 idle cores; a
# peer up later takes part from the next cycle, which the test allows)
CYCLES = 4  # a peer up only after a cycle began takes part from the next one: wait this many at most
PLACEHOLDER = "/ip4/.../p2p/Qm..."
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
       "HIVEMIND_MEMORY_SHARING_STRATEGY": "file_descriptor", "PYTHONUNBUFFERED": "1"}
pytestmark = pytest.mark.timeout(420)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readme_commands(readme: str = (REPO / "README.md").read_text()) -> list[list[str]]:
    """The commands of the code block under "### A swarm by hand", continuation lines joined, comments dropped."""
    section = readme.split("### A swarm by hand", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def adapt(words: list[str], join: str, ports: dict[str, str]) -> list[str]:
    """One README command as this test runs it (see the module docstring for every change)."""
    out = [sys.executable if words[0] == "python" else words[0]]
    for i, word in enumerate(words[1:]):
        prev = words[i]
        if word == PLACEHOLDER:
            word = join
        elif word.startswith("/ip4/0.0.0.0/tcp/"):
            word = "/ip4/127.0.0.1/tcp/0"
        elif prev == "--metrics-port":
            word = ports.setdefault(word, str(free_port()))
        elif prev == "--start-in":
            word = START_IN
        elif word == "--watch":
            word = "--json"
        out.append(word)
    return out


def test_the_readme_block_is_what_this_test_expects():
    """The walkthrough's shape, so the big test below fails with a clear message when the README moves on."""
    kinds = [" ".join(w[:3]) if w[1] == "-m" else " ".join(w[:2]) for w in readme_commands()]
    assert kinds[0] == "python -m bootstrap" and kinds[-1] == "python -m swarm.status", kinds
    assert kinds.count("python -m swarm.launch") == 1 and kinds.count("python -m swarm.peer") >= 2, kinds
    peers = [w for w in readme_commands() if w[:3] == ["python", "-m", "swarm.peer"]]
    assert {w[w.index("--role") + 1] for w in peers} == {"miner", "validator"}


def _start(cmd: list[str], cwd: Path, name: str, logs: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE if name == "bootstrap" else
                            open(logs / f"{name}.out", "w"), stderr=open(logs / f"{name}.err", "w"), text=True)


def _join_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first JOIN line the bootstrap node prints (read in a thread, so a silent node cannot hang the test)."""
    found: list[str] = []

    def read():
        for line in proc.stdout:
            if line.startswith("JOIN "):
                found.append(line.split()[1])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert found, f"the bootstrap node printed no JOIN line within {timeout:.0f}s (exit code {proc.poll()})"
    return found[0]


def _cycle_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def our_p2pd(folder: Path) -> list[str]:
    """p2pd daemons still running for this walkthrough: started in its folder or with a key file from it (other
    tests on the machine have daemons of their own)."""
    found = []
    for pid in subprocess.run(["pgrep", "-x", "p2pd"], capture_output=True, text=True).stdout.split():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:  # gone, or a zombie
            continue
        if cwd.startswith(str(folder)) or str(folder) in cmdline:
            found.append(pid)
    return found


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_swarm_by_hand_merges_the_miner(tmp_path):
    here = tmp_path / "user"
    (here / "configs").mkdir(parents=True)
    template = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    template["timings"] = dict(TIMINGS)
    (here / "configs" / "tiny.yaml").write_text(yaml.safe_dump(template, sort_keys=False))
    emap = template["expert_map"]["path"]
    shutil.copyfile(REPO / "configs" / emap, here / "configs" / emap)
    (here / "scripts").symlink_to(REPO / "scripts")
    logs = tmp_path / "logs"
    logs.mkdir()

    commands = readme_commands()
    ports: dict[str, str] = {}
    procs: list[subprocess.Popen] = []
    names: dict[str, Path] = {}  # a long-running peer's name -> its --workdir
    peers: dict[str, subprocess.Popen] = {}
    batch: list = []
    try:
        boot = _start(adapt(commands[0], "", ports), here, "bootstrap", logs)
        procs.append(boot)
        join = None  # read when a command first needs it: keygen, launch and the held-out data run meanwhile
        for words in commands[1:]:
            if join is None and PLACEHOLDER in words:
                join = _join_line(boot, 60)
            cmd = adapt(words, join, ports)
            if words[:3] == ["python", "-m", "swarm.peer"]:
                workdir = words[words.index("--workdir") + 1]
                names[Path(workdir).name] = here / workdir
                peers[Path(workdir).name] = _start(cmd, here, Path(workdir).name, logs)
                procs.append(peers[Path(workdir).name])
            elif words[:3] == ["python", "-m", "swarm.status"]:
                status_cmd = cmd  # asked once a cycle merged
            else:
                batch.append((words, subprocess.Popen(cmd, cwd=here, env=ENV, stdout=subprocess.PIPE,
                                                      stderr=subprocess.PIPE, text=True)))
                procs.append(batch[-1][1])
            if batch and (words is commands[-1] or commands[commands.index(words) + 1][:3] != words[:3]):
                for ran, proc in batch:  # a run of commands of one kind (the two keygens) went side by side
                    _, err = proc.communicate(timeout=120)
                    assert proc.returncode == 0, (" ".join(ran), err[-2000:])
                batch = []
        assert {"keys", "run", "private"} <= {p.name for p in here.iterdir()}

        # the first cycle every peer took part in merges the miner (cycle 0 unless a peer was up only after it began)
        manifest = yaml.safe_load((here / "run" / "run.yaml").read_text())
        deadline = manifest["genesis"] + CYCLES * sum(TIMINGS.values()) + 30
        miners = [n for n in names if n.startswith("m")]
        merged_cycle, miner_ids = None, set()
        while merged_cycle is None and time.time() < deadline:
            time.sleep(1)
            dead = [(n, p.returncode) for n, p in peers.items() if p.poll() is not None]
            assert not dead, (dead, {n: (logs / f"{n}.err").read_text()[-1500:] for n, _ in dead})
            by_cycle = {n: {c["cycle"]: c for c in _cycle_lines(w / "metrics.jsonl")} for n, w in names.items()}
            miner_ids = {next(iter(by_cycle[m].values()))["peer"] for m in miners if by_cycle[m]}
            common = set.intersection(*(set(cycles) for cycles in by_cycle.values()))
            merged_cycle = next((c for c in sorted(common) if len(miner_ids) == len(miners) and all(
                set(by_cycle[n][c]["merged"]) == miner_ids for n in names)), None)
        assert merged_cycle is not None, {n: [(c["cycle"], c["merged"], c["note"]) for c in _cycle_lines(
            w / "metrics.jsonl")] for n, w in names.items()}
        print(f"merged the miner in cycle {merged_cycle}")
        assert len(our_p2pd(here)) >= len(names) + 1  # the daemons checked for after the stop are seen

        scraped = scrape_url(f"http://127.0.0.1:{next(iter(ports.values()))}/metrics")
        assert scraped and scraped["teft_merged_miners"] == len(miners) and scraped["teft_quorum_met"] == 1

        # swarm.status reports the last cycle the clock has finished: a miner merged in a cycle's reduce phase is
        # in it once the next cycle has begun
        time.sleep(max(manifest["genesis"] + (merged_cycle + 1) * sum(TIMINGS.values()) + 1 - time.time(), 0))
        done = subprocess.run(status_cmd, cwd=here, env=ENV, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-2000:]
        last = json.loads(done.stdout)["last_cycle"]
        assert last["quorum_met"] and {m["miner"] for m in last["merged"]} == miner_ids, last
    finally:
        stopping = time.monotonic()
        _stop(procs)
        print(f"stopped in {time.monotonic() - stopping:.1f}s")
    assert all(p.returncode == 0 for p in procs), [(p.args[:4], p.returncode) for p in procs]
    deadline = time.monotonic() + 15  # every peer's and the bootstrap node's p2pd went with them
    while our_p2pd(here) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not our_p2pd(here)
