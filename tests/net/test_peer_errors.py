"""A peer process that cannot run says why in one line, and leaves nothing behind: a bootstrap nobody
answers, a manifest that is not one, a work directory that cannot be. Real `python -m swarm.peer` processes; in
the network phase (two workers) rather than the end-to-end one, which runs its swarms alone."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netutil import children, comm, wait_dead

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HIVEMIND_MEMORY_SHARING_STRATEGY": "file_descriptor"}
pytestmark = pytest.mark.timeout(240)


def orphaned_p2pd() -> set[int]:
    """p2pd daemons handed to this process (the network tests' subreaper) because their parent died."""
    return {pid for pid in children(os.getpid()) if comm(pid) == "p2pd"}


def _peer(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "swarm.peer", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _one_error_line(proc):
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return errors[0]


def _manifest(tmp_path):
    from swarm.launch import write_manifest
    from swarm.net.identity import load_or_create

    key = load_or_create(tmp_path / "v.key").public_key_str
    return write_manifest(REPO / "configs" / "tiny.yaml", tmp_path / "run" / "run.yaml", [key], time.time() + 60,
                          {"quorum": 1})


def test_unreachable_bootstrap(tmp_path):
    before = orphaned_p2pd()
    start = time.monotonic()
    line = _one_error_line(_peer("--role", "miner", "--config", str(_manifest(tmp_path)), "--initial-peers",
                                 "/ip4/127.0.0.1/tcp/9/p2p/QmVqZZ9H5iuvn4F5HXSzBJrskDESXE5dCHUkhPRo7SiSav",
                                 "--identity", str(tmp_path / "m.key"), "--workdir", str(tmp_path / "w"),
                                 "--startup-timeout", "5"))
    assert "could not reach any initial peer" in line
    assert time.monotonic() - start < 60
    # a stopping daemon may take a moment to go (it is ours to reap then: a zombie is gone)
    assert not wait_dead(sorted(orphaned_p2pd() - before), 15), "the refused peer left its p2pd behind"


def test_wrong_manifest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase_model: {path: tiny}\nunknown_field: 1\n")
    line = _one_error_line(_peer("--role", "miner", "--config", str(bad), "--identity", str(tmp_path / "k"),
                                 "--workdir", str(tmp_path / "w")))
    assert "bad.yaml" in line
    line = _one_error_line(_peer("--role", "miner", "--config", str(tmp_path / "missing.yaml"), "--identity",
                                 str(tmp_path / "k"), "--workdir", str(tmp_path / "w")))
    assert "not found" in line


def test_unusable_workdir(tmp_path):
    (tmp_path / "file").write_text("")
    line = _one_error_line(_peer("--role", "validator", "--config", str(_manifest(tmp_path)), "--identity",
                                 str(tmp_path / "k.key"), "--workdir", str(tmp_path / "file" / "w"),
                                 "--validation-data", "math"))
    assert "is a file, not a folder" in line and "workdir" in line
    assert not (tmp_path / "k.key").exists()  # refused before anything was made
