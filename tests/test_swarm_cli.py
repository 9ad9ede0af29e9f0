"""The swarm's command lines as a new user meets them: same flags and defaults everywhere, no mkdir first,
`launch --quorum`, and a restarted peer that does not step back a cycle."""

from __future__ import annotations

import logging
import threading

import pytest
import torch
from swarm_double import (
    MemoryDHT,  # noqa: I001
    Swarm,
    VirtualTime,
)

from swarm import bootstrap, cli, keygen, launch, peer, status
from swarm.errors import SwarmError
from swarm.launch import write_manifest
from swarm.net import records
from swarm.net.identity import load_or_create
from swarm.protocol.manifest import load
from swarm.roles import Miner
from teft.outer import checkpoint_bytes
from teft.state import state_hash


def test_shared_flags_have_one_default(tmp_path):
    peer_args = peer.build_parser().parse_args(["--role", "miner", "--config", "c", "--identity", "k",
                                                "--workdir", "w"])
    boot_args = bootstrap.parse_args([])
    status_args = status.build_parser().parse_args(["--config", "c", "--initial-peers", "/ip4/127.0.0.1/tcp/1"])
    assert peer_args.startup_timeout == boot_args.startup_timeout == status_args.startup_timeout == 30
    assert peer_args.device == "auto" and peer_args.threads == cli.cores()  # as in python -m teft
    assert peer_args.metrics_port is None and boot_args.metrics_port is None  # metrics are opt-in
    assert peer_args.host_maddrs == ["/ip4/127.0.0.1/tcp/0"] and boot_args.host_maddrs == ["/ip4/0.0.0.0/tcp/31337"]
    for module in (keygen, launch):
        with pytest.raises(SystemExit) as done:
            module.main(["--version"])
        assert done.value.code == 0


def test_the_peer_offers_every_role_and_refuses_a_bad_manifest_before_loading_anything(tmp_path):
    from swarm.roles import ROLES

    assert peer.ROLE_NAMES == tuple(sorted(ROLES))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    code = peer.main(["--role", "miner", "--config", str(bad), "--identity", str(tmp_path / "keys" / "k"),
                      "--workdir", str(tmp_path / "w")])
    assert code == 2 and not (tmp_path / "w").exists() and not (tmp_path / "keys").exists()


def test_device_auto_resolves_and_threads_apply():
    assert cli.resolve_compute("auto", 1) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch.get_num_threads() == 1
    if not torch.cuda.is_available():
        with pytest.raises(SwarmError, match="no CUDA device"):
            cli.resolve_compute("cuda", 1)


def test_launch_takes_a_quorum(tmp_path, capsys):
    keys = [str(tmp_path / f"v{i}.key") for i in range(3)]
    for key in keys:
        load_or_create(key)
    out = tmp_path / "run" / "run.yaml"
    assert launch.main(["--validators", *keys, "--quorum", "3", "--out", str(out)]) == 0
    assert load(out).quorum == 3 and "quorum 3" in capsys.readouterr().out
    assert launch.main(["--validators", *keys[:2], "--quorum", "3", "--out", str(tmp_path / "b.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --quorum 3 exceeds the 2 validators") and err.count("\n") == 1
    assert not (tmp_path / "b.yaml").exists()


def test_restart_after_the_reduce_waits_instead_of_stepping_back(tmp_path, caplog):
    """Killed after adopting Phi_2 in cycle 1's reduce and restarted in that same phase, while the quorum's
    Phi_1 hash equals ours (cycle 1 merged nothing): the peer must resume at 2 and not refetch cycle 1."""
    validator = load_or_create(tmp_path / "v.key")
    manifest = load(write_manifest("configs/tiny.yaml", tmp_path / "run.yaml", [validator.public_key_str],
                                   1_900_000_000.0, {"quorum": 1, "inner": {"steps": 2}}))
    swarm = Swarm(manifest, tmp_path)
    miner = swarm.add("miner", Miner)
    data = checkpoint_bytes(miner.rt.initial_state, None)
    miner.adopt(2, data)  # what the killed process left in its work directory
    rid, clock = miner.run_id, manifest.clock()
    voter = MemoryDHT(swarm.table, validator, rid)
    records.store_record(voter, rid, 0, "state", records.StateRecord(state_hash=state_hash(data)), validator,
                         clock.cycle_start(3))
    vt = VirtualTime(clock.phase_start(1, "reduce") + 0.1, clock.cycle_start(3) - 0.1, swarm.stop)
    miner.time = vt
    vt.join()
    caplog.set_level(logging.INFO, logger="swarm.peer")

    def body():
        try:
            miner.run()
        finally:
            vt.leave()

    runner = threading.Thread(target=body, daemon=True)
    runner.start()
    runner.join(120)
    assert not runner.is_alive()
    text = caplog.text
    assert "resumed at cycle 2" in text and "behind" not in text and "fetching" not in text, text
    rows = (miner.store.root / "metrics.jsonl").read_text().splitlines()
    assert rows and all('"cycle": 2,' in r for r in rows)  # nothing was redone for cycle 1
    assert miner.store.load_progress().cycle >= 2


def test_simulate_runs_the_baselines_named_and_refuses_others_before_any_work(tmp_path, capsys):
    from swarm.sim import simulate
    from swarm.sim.report import BASELINES

    assert simulate._baselines(None) == () and simulate._baselines("all") == BASELINES
    assert simulate._baselines("full, teft") == ("full", "teft")
    assert simulate._baselines("full,bogus") is None and simulate._baselines(",") is None
    out = tmp_path / "run"
    assert simulate.main(["--out", str(out), "--baseline", "bogus"]) == 2
    assert "--baseline bogus" in capsys.readouterr().err and not out.exists()


def test_simulate_payload_codec_from_the_command_line(tmp_path, capsys):
    from swarm.launch import write_manifest
    from swarm.net.identity import load_or_create
    from swarm.protocol.manifest import load
    from swarm.sim import simulate

    spec = simulate.payload_override("sparse:chunk=4096,density=0.0625,bits=2")
    assert spec == {"codec": "sparse", "chunk": 4096, "density": 0.0625, "bits": 2}
    key = load_or_create(tmp_path / "v.key").public_key_str
    manifest = load(write_manifest("configs/tiny.yaml", tmp_path / "run.yaml", [key], 0.0,
                                   {"payload": spec, "quorum": 1}))
    assert manifest.payload.codec == "sparse" and manifest.payload.density == 0.0625
    for bad, why in (("zip", "codec"), ("sparse:density=2", "density"), ("sparse:bits", "not key=value"),
                     ("sparse:bits=two", "not a number")):
        out = tmp_path / bad.replace(":", "_")
        assert simulate.main(["--out", str(out), "--payload", bad]) == 2
        err = _one_line(capsys)
        assert f"--payload {bad}" in err and why in err and not out.exists(), err


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_launch_refuses_to_replace_a_manifest_unless_forced(tmp_path, capsys):
    key = str(tmp_path / "v.key")
    load_or_create(key)
    out = tmp_path / "run" / "run.yaml"
    assert launch.main(["--validators", key, "--quorum", "1", "--out", str(out)]) == 0
    first = out.read_text()
    capsys.readouterr()
    assert launch.main(["--validators", key, "--quorum", "1", "--start-in", "99", "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert "exists" in err and "--force" in err
    assert out.read_text() == first  # the run id the peers were given still holds
    assert launch.main(["--validators", key, "--quorum", "1", "--start-in", "99", "--out", str(out), "--force"]) == 0
    assert out.read_text() != first


def test_launch_onto_a_folder_is_one_line_and_leaves_nothing(tmp_path, capsys):
    key = str(tmp_path / "v.key")
    load_or_create(key)
    folder = tmp_path / "run"
    folder.mkdir()
    assert launch.main(["--validators", key, "--quorum", "1", "--out", str(folder)]) == 2
    assert "is a folder" in _one_line(capsys)
    assert list(folder.iterdir()) == []  # no expert map copied in


def test_launch_blames_the_template_and_leaves_nothing(tmp_path, capsys):
    import shutil

    import yaml

    key = str(tmp_path / "v.key")
    load_or_create(key)
    raw = yaml.safe_load(open("configs/tiny.yaml"))
    raw["timings"]["train"] = -5
    template = tmp_path / "templates" / "bad.yaml"
    template.parent.mkdir()
    template.write_text(yaml.safe_dump(raw))
    shutil.copyfile("configs/tiny-math.map.json", template.parent / "tiny-math.map.json")
    out = tmp_path / "run" / "run.yaml"
    assert launch.main(["--template", str(template), "--validators", key, "--quorum", "1", "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert str(template) in err and "timings.train" in err and "run.yaml" not in err, err
    assert not (tmp_path / "run").exists()
    missing = str(tmp_path / "keys" / "v2.key")  # a key file never made: say how to make it
    assert launch.main(["--validators", key, missing, "--out", str(out)]) == 2
    assert "swarm.keygen --identity " + missing in _one_line(capsys) and not (tmp_path / "run").exists()


def test_keygen_onto_a_folder_is_one_line(tmp_path, capsys):
    assert keygen.main(["--identity", str(tmp_path)]) == 2
    assert "is a folder" in _one_line(capsys)
    garbage = tmp_path / "bad.key"
    garbage.write_text("not a key\n")
    assert keygen.main(["--identity", str(garbage)]) == 2
    assert "not a PEM private key" in _one_line(capsys)


def test_a_refused_peer_creates_nothing(tmp_path, capsys):
    """A bad key file or an unavailable device is refused before the work tree (or a key) is made; a work
    directory whose folders are missing is made whole, as the README's `--workdir work/v1` needs."""
    key = str(tmp_path / "v.key")
    load_or_create(key)
    manifest = str(write_manifest("configs/tiny.yaml", tmp_path / "run" / "run.yaml",
                                  [load_or_create(key).public_key_str], 1_900_000_000.0, {"quorum": 1}))
    garbage = tmp_path / "bad.key"
    garbage.write_text("not a key\n")
    work = tmp_path / "work" / "m1"
    base = ["--role", "miner", "--config", manifest, "--workdir", str(work), "--threads", "1"]
    assert peer.main([*base, "--identity", str(garbage)]) == 2
    assert "not a PEM private key" in _one_line(capsys) and not (tmp_path / "work").exists()
    assert peer.main([*base, "--identity", str(tmp_path)]) == 2
    assert "is a folder" in _one_line(capsys) and not (tmp_path / "work").exists()
    if not torch.cuda.is_available():
        assert peer.main([*base, "--identity", str(tmp_path / "keys" / "m1.key"), "--device", "cuda"]) == 2
        assert "no CUDA device" in _one_line(capsys)
        assert not (tmp_path / "work").exists() and not (tmp_path / "keys").exists()
    validator = [*base[:1], "validator", *base[2:]]
    assert peer.main([*validator, "--identity", key, "--client-mode"]) == 2  # a validator must be reachable
    assert "--client-mode is for miners" in _one_line(capsys) and not (tmp_path / "work").exists()
    blocked = tmp_path / "afile"
    blocked.write_text("")
    assert peer.main([*base[:-4], "--workdir", str(blocked / "w"), "--identity", key]) == 2
    assert "is a file, not a folder" in _one_line(capsys)


def test_what_the_readme_commands_write_is_git_ignored():
    """Private keys, work directories, manifests and checkpoints that the README's commands write in a checkout
    must not show up in `git status` (keys/ holds private keys)."""
    import re
    import shlex
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    written = set()
    for block in re.findall(r"```bash\n(.*?)```", (root / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            written |= {words[i + 1] for i, w in enumerate(words[:-1])
                        if w in ("--out", "--identity", "--workdir", "--heldout-math")}
    assert {"keys/v1.key", "work/m1", "run/run.yaml", "merged/"} <= written, written
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *sorted(written)], cwd=root, capture_output=True,
                             text=True).stdout.split()
    assert set(ignored) == written, written - set(ignored)
