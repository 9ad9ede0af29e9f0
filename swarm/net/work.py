"""Proof of work on a miner's commit: keys are free, so every key that wants a validator's attention pays.

A commit counts only with a nonce such that sha256("teft-work" | commit digest | nonce) starts with the
manifest's `commit_work_bits` zero bits: about 2^bits hashes for its author, one hash to check. The commit
digest binds run, cycle, miner and payload hash, and a miner knows its payload hash only after training,
so the work cannot be reused across keys or cycles: a flood of K keys costs K times an honest miner's work
every cycle (README, "Against untrusted peers", has the figures).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

TAG = b"teft-work\0"
MAX_BITS = 40


def work_hash(commit_digest: str, nonce: int) -> bytes:
    """The hash the work is judged by."""
    return hashlib.sha256(TAG + bytes.fromhex(commit_digest) + nonce.to_bytes(8, "big")).digest()


def meets(commit_digest: str, nonce: int, bits: int) -> bool:
    """Whether `nonce` is enough work for this commit: the first `bits` bits of its work hash are zero."""
    if bits <= 0:
        return True
    if not 0 <= nonce < 1 << 64:
        return False
    return int.from_bytes(work_hash(commit_digest, nonce)[:8], "big") >> (64 - bits) == 0


def solve(commit_digest: str, bits: int, stop: Callable[[], bool] | None = None,
          deadline: float | None = None) -> int | None:
    """The first nonce that meets `bits` for this commit (about 2^bits tries), or None if stopped or out of time
    (`deadline` in time.monotonic())."""
    if bits <= 0:
        return 0
    prefix = hashlib.sha256(TAG + bytes.fromhex(commit_digest))
    limit = 1 << (64 - bits)
    for nonce in range(1 << 62):
        h = prefix.copy()
        h.update(nonce.to_bytes(8, "big"))
        if int.from_bytes(h.digest()[:8], "big") < limit:
            return nonce
        if nonce & 0xFFFF == 0xFFFF and ((stop is not None and stop()) or
                                          (deadline is not None and time.monotonic() > deadline)):
            return None
    return None
