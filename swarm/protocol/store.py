"""What a peer keeps on disk to resume after kill -9: outer checkpoints by cycle, payloads by hash, progress,
and a miner's AdamW moments and codec residual by cycle.

Every write is atomic (temp file, fsync, rename) and every read checks the content hash, so a crash
at any instant leaves either the old file or the new one, never a torn one that would be trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from swarm.errors import SwarmError
from teft.files import atomic_write
from teft.files import content_hash as state_hash


@dataclass
class Progress:
    """The resumable position of a peer: the cycle whose start state it holds, and that state's hash."""

    cycle: int = 0
    checkpoint_hash: str = ""
    seen_payloads: dict[str, int] = field(default_factory=dict)  # payload hash -> cycle first seen


class Store:
    """A peer's work directory."""

    def __init__(self, workdir: str | os.PathLike, keep_cycles: int = 3):
        self.root = Path(workdir)
        check_workdir(self.root)
        self.keep_cycles = keep_cycles
        try:
            for sub in ("checkpoints", "payloads", "moments", "residual", "packs"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SwarmError(f"cannot create --workdir {self.root} ({err.strerror}): choose another path") from None
        for tmp in self.root.rglob(".*.tmp*"):  # leftovers of a write interrupted by kill -9
            tmp.unlink(missing_ok=True)

    # progress -----------------------------------------------------------------------------------
    def load_progress(self) -> Progress | None:
        path = self.root / "progress.json"
        if not path.exists():
            return None
        try:
            body = json.loads(path.read_text())
            return Progress(int(body["cycle"]), str(body["checkpoint_hash"]),
                            {str(k): int(v) for k, v in body.get("seen_payloads", {}).items()})
        except (ValueError, KeyError, TypeError) as err:
            raise SwarmError(f"{path} is corrupted ({err}): delete it to resync from the swarm") from err

    def save_progress(self, progress: Progress) -> None:
        atomic_write(self.root / "progress.json", json.dumps(asdict(progress), sort_keys=True).encode())

    # outer checkpoints (state + momentum) by cycle, named by their hash so lookups need no hashing
    def checkpoint_path(self, cycle: int, digest: str) -> Path:
        return self.root / "checkpoints" / f"cycle-{cycle:06d}-{digest}.safetensors"

    def save_checkpoint(self, cycle: int, data: bytes) -> str:
        digest = state_hash(data)
        atomic_write(self.checkpoint_path(cycle, digest), data)
        return digest

    def load_checkpoint(self, cycle: int, expected_hash: str) -> bytes | None:
        """The stored checkpoint of a cycle if its bytes still hash to what progress.json recorded."""
        return _read_verified(self.checkpoint_path(cycle, expected_hash), expected_hash)

    # payloads by hash ---------------------------------------------------------------------------
    def _by_hash(self, folder: str, digest: str, suffix: str) -> Path:
        if not all(c in "0123456789abcdef" for c in digest) or len(digest) != 64:
            raise SwarmError(f"'{digest[:80]}' is not a sha256 hex digest")
        return self.root / folder / f"{digest}{suffix}"

    def payload_path(self, digest: str) -> Path:
        return self._by_hash("payloads", digest, ".payload")

    def save_payload(self, data: bytes) -> str:
        digest = state_hash(data)
        atomic_write(self.payload_path(digest), data)
        return digest

    def load_payload(self, digest: str) -> bytes | None:
        return _read_verified(self.payload_path(digest), digest)

    # the run's miner pack (teft.pack), kept once held so that this peer serves it to light miners that join
    def pack_path(self, digest: str) -> Path:  # not among the payloads, which prune keeps to the newest
        return self._by_hash("packs", digest, ".teftpack")

    def save_pack(self, data: bytes, digest: str | None = None) -> str:
        """Keep the pack; `digest`: its hash, when the caller checked the bytes against it already."""
        digest = digest or state_hash(data)
        atomic_write(self.pack_path(digest), data)
        return digest

    def load_pack(self, digest: str) -> bytes | None:
        return _read_verified(self.pack_path(digest), digest)

    def partial_path(self, digest: str) -> Path:
        """Where the pieces of an object on its way are kept (swarm/net/pieces.py), so a fetch that stopped
        resumes; removed once the object is whole."""
        return self.root / "partial" / f"{digest}.part"

    def find(self, digest: str) -> bytes | None:
        """Any stored object (payload, checkpoint or pack) with this hash: what the transfer server serves."""
        try:
            found = self.load_payload(digest) or self.load_pack(digest)
        except SwarmError:
            return None
        if found is not None:
            return found
        for path in (self.root / "checkpoints").glob(f"cycle-*-{digest}.safetensors"):
            data = _read_verified(path, digest)
            if data is not None:
                return data
        return None

    # a miner's AdamW moments and its codec's residual, by the cycle that produced them ---------------
    def save_tagged(self, kind: str, cycle: int, data: bytes, keep: int = 2) -> None:
        """Keep `data` as this cycle's `kind` (moments, residual), and the newest `keep` of that kind."""
        folder = self.root / kind
        atomic_write(folder / f"{kind}-{cycle:06d}.safetensors", data)
        for path in sorted(folder.glob(f"{kind}-*.safetensors"))[:-keep]:
            path.unlink(missing_ok=True)

    def load_tagged(self, kind: str, before: int) -> dict | None:
        """The newest `kind` saved in a cycle before `before`, or None (a torn file reads as none)."""
        from teft.errors import TeftError
        from teft.state import from_bytes

        for path in sorted((self.root / kind).glob(f"{kind}-*.safetensors"), reverse=True):
            if int(path.stem.split("-")[1]) < before:
                try:
                    return from_bytes(path.read_bytes())
                except TeftError:
                    return None
        return None

    def save_moments(self, cycle: int, data: bytes, keep: int = 2) -> None:
        self.save_tagged("moments", cycle, data, keep)

    def load_moments(self, before: int) -> dict | None:
        return self.load_tagged("moments", before)

    def prune(self, current_cycle: int, keep_payloads: int = 64, keep_partial_s: float = 86400.0) -> None:
        """Drop checkpoints older than keep_cycles, all but the newest payload files, and partial downloads
        untouched for `keep_partial_s` (a checkpoint's, whose fetch gave up, is not asked for again)."""
        for path in (self.root / "checkpoints").glob("cycle-*.safetensors"):
            if int(path.name.split("-")[1]) < current_cycle - self.keep_cycles:
                path.unlink(missing_ok=True)
        payloads = sorted((self.root / "payloads").glob("*.payload"), key=lambda p: p.stat().st_mtime)
        for path in payloads[: max(len(payloads) - keep_payloads, 0)]:
            path.unlink(missing_ok=True)
        now = time.time()
        for path in (self.root / "partial").glob("*.part"):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > keep_partial_s:
                    path.unlink()


def check_workdir(path: str | os.PathLike) -> None:
    """Refuse a work directory that could not be created or used, before anything is created (the folders on its
    path that are missing are made by Store, like `mkdir -p`)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SwarmError(f"--workdir {path} is a file, not a folder: choose another path")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SwarmError(f"--workdir {path} cannot be created: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SwarmError(f"--workdir {path} cannot be written under {existing} (permission denied): choose another "
                         "path")


def _read_verified(path: Path, digest: str) -> bytes | None:
    """The file's bytes if it exists and still hashes to `digest`; a torn or tampered file reads as absent."""
    if not path.exists():
        return None
    data = path.read_bytes()
    return data if state_hash(data) == digest else None
