"""Content-addressed objects in pieces: the piece manifest that names every piece, and a sink that keeps the
pieces of an object on its way, checked one by one, across a dropped holder or a restart.

An object (a checkpoint, a miner pack, a payload) is named by the sha256 of its bytes. Cut into PIECE-byte
pieces (the last one shorter), it also has a piece manifest: its size as 8 big-endian bytes, then the sha256
of every piece in order. The manifest's own sha256 is the object's pieces root, pinned next to its hash by
whoever names the object (the run manifest's `pack`, a validator's signed state record), so a peer that
holds the root can check each piece from any holder before it uses it, and a holder that sends one bad
piece is found out after one piece, not after the whole object.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from swarm.errors import TransferError
from swarm.net.wire import CHUNK

PIECE = CHUNK  # one DATA frame carries exactly one piece of a range
_SIZE = 8
_DIGEST = 32


def piece_count(size: int) -> int:
    return -(-size // PIECE)


def manifest_size(size: int) -> int:
    """Bytes of the piece manifest of a `size`-byte object."""
    return _SIZE + _DIGEST * piece_count(size)


def piece_manifest(data: bytes | memoryview) -> bytes:
    """The object's size and the sha256 of each of its pieces: what a holder serves when asked for `pieces`."""
    view = memoryview(data)
    digests = (hashlib.sha256(view[i : i + PIECE]).digest() for i in range(0, len(view), PIECE))
    return len(view).to_bytes(_SIZE, "big") + b"".join(digests)


def pieces_root(data: bytes | memoryview) -> str:
    """The sha256 hex of the object's piece manifest: what a run or a signed record pins."""
    return hashlib.sha256(piece_manifest(data)).hexdigest()


def read_manifest(body: bytes) -> tuple[int, list[bytes]]:
    """(object size, piece digests) from manifest bytes already checked against their root."""
    if len(body) < _SIZE:
        raise TransferError("piece manifest shorter than its size field")
    size = int.from_bytes(body[:_SIZE], "big")
    if len(body) != manifest_size(size):
        raise TransferError(f"piece manifest of {len(body)} bytes for a {size}-byte object")
    return size, [body[i : i + _DIGEST] for i in range(_SIZE, len(body), _DIGEST)]


class PieceSink:
    """The pieces of one object as they arrive, in memory or in a partial file.

    With `path`, each verified piece is written at its offset in `path` at once, so a fetch that stops (a
    holder drops, the process is killed) resumes from what is there: on open, every piece already in the file
    that hashes to its digest counts as held, anything else is fetched again.
    """

    def __init__(self, size: int, digests: list[bytes], path: Path | None = None):
        self.size, self.digests, self.path = size, digests, path
        self.have: set[int] = set()
        self._buf: bytearray | None = None
        self._file = None
        if path is None:
            self._buf = bytearray(size)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        resumed = path.exists()
        self._file = open(path, "r+b" if resumed else "w+b")  # noqa: SIM115 - held until close()
        self._file.truncate(size)
        for index in range(len(digests)) if resumed else ():  # whatever a previous fetch left that checks out
            if hashlib.sha256(self._read(index)).digest() == digests[index]:
                self.have.add(index)

    def length(self, index: int) -> int:
        return min(PIECE, self.size - index * PIECE)

    def missing(self) -> list[int]:
        return [i for i in range(len(self.digests)) if i not in self.have]

    def _read(self, index: int) -> bytes:
        self._file.seek(index * PIECE)
        return self._file.read(self.length(index))

    def put(self, index: int, data: bytes) -> None:
        """Keep one piece the caller has checked against its digest."""
        if index in self.have:
            return
        if self._buf is not None:
            self._buf[index * PIECE : index * PIECE + len(data)] = data
        else:
            self._file.seek(index * PIECE)
            self._file.write(data)
        self.have.add(index)

    def bytes(self) -> bytes:
        """The whole object, once every piece is held."""
        if self.missing():
            raise TransferError(f"{len(self.missing())} of {len(self.digests)} pieces still missing")
        if self._buf is not None:
            return bytes(self._buf)
        self._file.flush()
        self._file.seek(0)
        return self._file.read()

    def close(self, done: bool) -> None:
        """Close the partial file, and remove it once the object is complete (the caller keeps the bytes)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            if done and self.path is not None:
                self.path.unlink(missing_ok=True)
