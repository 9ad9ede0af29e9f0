"""Proof of work on commits: solved work checks, and any other nonce, commit or bit count fails."""

import hashlib
import time

from swarm.net.work import meets, solve


def _digest(i: int) -> str:
    return hashlib.sha256(f"commit {i}".encode()).hexdigest()


def test_solved_work_checks_and_binds_its_commit():
    for i in range(4):
        nonce = solve(_digest(i), 12)
        assert nonce is not None and meets(_digest(i), nonce, 12)
        assert not all(meets(_digest(j), nonce, 12) for j in range(i + 1, i + 9))  # another commit: 1/4096 each
    assert meets(_digest(0), 0, 0)  # off


def test_missing_work_fails_and_solving_can_be_cut_short():
    tried = sum(meets(_digest(0), n, 16) for n in range(2000))
    assert tried <= 1  # 2000 random nonces at 16 bits: expected 0.03 hits
    assert not meets(_digest(0), -1, 8) and not meets(_digest(0), 1 << 64, 8)
    started = time.monotonic()
    assert solve(_digest(1), 40, deadline=time.monotonic() + 0.2) is None
    assert time.monotonic() - started < 2.0
