"""The peer's work directory: atomic, hash-checked, resumable."""

import pytest

from swarm.errors import SwarmError
from swarm.protocol.store import Progress, Store


def test_checkpoints_payloads_and_progress(tmp_path):
    store = Store(tmp_path / "w", keep_cycles=2)
    digest = store.save_checkpoint(3, b"state-3")
    assert store.load_checkpoint(3, digest) == b"state-3"
    assert store.find(digest) == b"state-3"
    payload = store.save_payload(b"payload")
    assert store.load_payload(payload) == b"payload" and store.find(payload) == b"payload"
    assert store.find("0" * 64) is None and store.find("not-a-hash") is None
    store.save_progress(Progress(3, digest, {payload: 3}))
    again = Store(tmp_path / "w").load_progress()
    assert again == Progress(3, digest, {payload: 3})


def test_corruption_is_detected_not_trusted(tmp_path):
    store = Store(tmp_path / "w")
    digest = store.save_checkpoint(1, b"good bytes")
    store.checkpoint_path(1, digest).write_bytes(b"torn")  # as if a disk lied
    assert store.load_checkpoint(1, digest) is None and store.find(digest) is None
    (tmp_path / "w" / "progress.json").write_text("{broken")
    with pytest.raises(SwarmError, match="corrupted"):
        store.load_progress()


def test_leftover_temp_files_and_pruning(tmp_path):
    store = Store(tmp_path / "w", keep_cycles=1)
    (tmp_path / "w" / "checkpoints" / ".cycle-000001.safetensors.tmp123").write_bytes(b"half")
    store = Store(tmp_path / "w", keep_cycles=1)
    assert not list((tmp_path / "w").rglob(".*.tmp*"))
    old = store.save_checkpoint(1, b"one")
    new = store.save_checkpoint(5, b"five")
    store.prune(5)
    assert store.find(old) is None and store.find(new) == b"five"


def test_missing_folders_are_made_and_a_file_in_the_way_is_one_line(tmp_path):
    assert (Store(tmp_path / "a" / "b" / "w").root / "checkpoints").is_dir()  # like the README's --workdir work/v1
    (tmp_path / "f").write_text("")
    with pytest.raises(SwarmError, match="is a file, not a folder"):
        Store(tmp_path / "f" / "w")
    with pytest.raises(SwarmError, match="is a file, not a folder"):
        Store(tmp_path / "f")


def test_moments_by_cycle_newest_before_and_torn_files(tmp_path):
    """A miner's kept AdamW moments: the newest saved before the asked cycle, the last two kept, a torn one
    read as none (the miner then starts fresh moments rather than crash)."""
    import torch

    from teft.state import to_bytes

    store = Store(tmp_path / "w")
    for cycle in range(4):
        store.save_moments(cycle, to_bytes({"layers.0.experts.1.w.exp_avg": torch.full((2,), float(cycle))}))
    assert len(list((tmp_path / "w" / "moments").iterdir())) == 2
    assert float(store.load_moments(before=3)["layers.0.experts.1.w.exp_avg"][0]) == 2.0
    assert float(store.load_moments(before=9)["layers.0.experts.1.w.exp_avg"][0]) == 3.0
    assert store.load_moments(before=2) is None  # cycles 0 and 1 were pruned
    (tmp_path / "w" / "moments" / "moments-000003.safetensors").write_bytes(b"torn")
    assert store.load_moments(before=9) is None


def test_a_partial_download_is_kept_for_a_resume_and_pruned_once_stale(tmp_path):
    import os
    import time

    store = Store(tmp_path / "w")
    fresh, stale = store.partial_path("a" * 64), store.partial_path("b" * 64)
    for path in (fresh, stale):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"pieces")
    os.utime(stale, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    Store(tmp_path / "w")  # a restart keeps both: the fetch resumes from them
    store.prune(current_cycle=10)
    assert fresh.exists() and not stale.exists()
