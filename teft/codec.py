"""Payload codecs: how a miner's pseudo-gradient Delta_i = Phi_t - Phi_i travels, and how every peer decodes it.

A payload holds no keys and no shapes: the expert map fixes both, so the selected tensors are laid end to end
in canonical key order as one flat fp32 vector x of N numbers, and a codec writes x after a 16-byte header:

    magic b"TFTD" | version u8 | codec id u8 | 2 zero bytes | layout digest (8 bytes)

The layout digest hashes the codec and its settings with every key and shape, so bytes encoded for another
expert map, model or codec setting are refused by name before anything else is read. Then, per codec:

    fp32, bf16, fp16  x in that float type, little-endian
    int8      one fp32 scale per block of `block` numbers (absmax / 127), then one int8 per number in -127..127
    sparse    x in chunks of `chunk` numbers; per chunk its k = round(density * chunk) largest magnitudes
              (fewer in a short last chunk): one fp32 scale per chunk (the largest magnitude sent), then every
              chunk's indices in increasing order, ceil(log2(chunk)) bits each, then every value in `bits` bits
              (a sign bit and 2^(bits-1) magnitude levels, scale * (level + 1) / 2^(bits-1)), bits packed LSB first

A payload's exact size follows from N and the codec alone (`payload_size`), so a receiver refuses any other
length before it reads a byte. Decoding is part of consensus: validators score exactly the decoded delta and
every peer merges it, so decode uses only exact element-wise operations (a float widening, one multiply per
number, a scatter to distinct indices) that give the same bits whatever the thread count. Every scale, index
and padding bit is checked before the N-number output is allocated, and a payload has one encoding only:
indices strictly increase within a chunk, scales are finite and not negative, int8 never uses -128, and the
padding bits are zero.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from teft.errors import TeftError

MAGIC = b"TFTD"
VERSION = 1
HEADER_SIZE = 16
CODECS = {"fp32": 1, "bf16": 2, "fp16": 3, "int8": 4, "sparse": 5}
_FLOATS = {"fp32": (np.float32, torch.float32), "bf16": (np.int16, torch.bfloat16), "fp16": (np.float16, torch.float16)}
DTYPE_CODECS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # the dense codec of a payload_dtype
MAX_CHUNK = 1 << 20
NORM_MARGIN = 0.98  # a miner scales what it sends to at most this share of the manifest's norm bound


class CodecError(TeftError):
    """Bytes that are not a payload of this run's codec and layout; the message names what is wrong."""


@dataclass(frozen=True)
class CodecSpec:
    """The manifest's `payload` section: which codec, with its settings (the others are ignored)."""

    codec: str = "fp32"
    block: int = 256  # int8: numbers per absmax scale
    chunk: int = 4096  # sparse: numbers per top-k chunk
    density: float = 1 / 64  # sparse: share of each chunk sent
    bits: int = 2  # sparse: bits per value, its sign included

    def __post_init__(self):
        if self.codec not in CODECS:
            raise TeftError(f"unknown payload codec '{self.codec}': use one of {', '.join(CODECS)}")
        if not 1 <= self.block <= MAX_CHUNK or not 2 <= self.chunk <= MAX_CHUNK:
            raise TeftError(f"payload block and chunk must be from 1 (2 for chunk) to {MAX_CHUNK}")
        if not 0 < self.density <= 1 or not 2 <= self.bits <= 8:
            raise TeftError("payload density must be in (0, 1] and bits from 2 to 8")

    @property
    def k(self) -> int:
        """Numbers sent per full sparse chunk."""
        return min(self.chunk, max(1, round(self.density * self.chunk)))

    @property
    def index_bits(self) -> int:
        return max(1, (self.chunk - 1).bit_length())

    @property
    def lossless(self) -> bool:
        return self.codec == "fp32"

    def settings(self) -> dict:
        """The settings this codec reads: what the layout digest and reports name."""
        if self.codec == "int8":
            return {"codec": "int8", "block": self.block}
        if self.codec == "sparse":
            return {"codec": "sparse", "chunk": self.chunk, "density": self.density, "bits": self.bits}
        return {"codec": self.codec}

    def label(self) -> str:
        if self.codec == "int8":
            return f"int8/{self.block}"
        if self.codec == "sparse":
            return f"sparse k={self.k}/{self.chunk} {self.bits}-bit"
        return self.codec


def _chunks(spec: CodecSpec, numel: int) -> tuple[int, int]:
    """(number of sparse chunks, numbers sent in all of them together)."""
    count = -(-numel // spec.chunk)
    last = numel - (count - 1) * spec.chunk if count else 0
    return count, (count - 1) * spec.k + min(spec.k, last) if count else 0


def payload_size(spec: CodecSpec, numel: int) -> int:
    """Exact bytes of a payload of `numel` numbers: a receiver refuses any other length unread."""
    if spec.codec in _FLOATS:
        return HEADER_SIZE + numel * (4 if spec.codec == "fp32" else 2)
    if spec.codec == "int8":
        return HEADER_SIZE + 4 * -(-numel // spec.block) + numel
    count, sent = _chunks(spec, numel)
    return HEADER_SIZE + 4 * count + -(-sent * spec.index_bits // 8) + -(-sent * spec.bits // 8)


def _pack(values: torch.Tensor, width: int) -> bytes:
    """Unsigned integers below 2^width, `width` bits each, LSB first; one bit column at a time (memory n*width)."""
    n = values.numel()
    bits = torch.zeros(n * width + (-(n * width)) % 8, dtype=torch.uint8)
    column = bits[:n * width].view(n, width) if n else bits[:0].view(0, width)
    for i in range(width):
        column[:, i] = ((values >> i) & 1).to(torch.uint8)
    grouped = bits.view(-1, 8)
    out = torch.zeros(grouped.shape[0], dtype=torch.uint8)
    for i in range(8):
        out |= grouped[:, i] << i
    return out.numpy().tobytes()


def _unpack(data: memoryview, n: int, width: int, what: str) -> torch.Tensor:
    """The n integers `_pack` wrote; CodecError if a padding bit is set (one encoding per payload)."""
    raw = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    bits = torch.zeros(raw.numel(), 8, dtype=torch.uint8)
    for i in range(8):
        bits[:, i] = (raw >> i) & 1
    bits = bits.view(-1)
    if bool(bits[n * width:].any()):
        raise CodecError(f"the {what} section's padding bits are not zero")
    values = torch.zeros(n, dtype=torch.int64)
    column = bits[:n * width].view(n, width)
    for i in range(width):
        values |= column[:, i].to(torch.int64) << i
    return values


class Codec:
    """One run's codec over its expert map's keys and shapes: encode a delta, decode (and check) a payload."""

    def __init__(self, spec: CodecSpec, shapes: dict[str, tuple[int, ...]]):
        self.spec = spec
        self.shapes = OrderedDict((k, tuple(int(d) for d in s)) for k, s in shapes.items())
        self.numel = sum(math.prod(s) for s in self.shapes.values())
        layout = repr(sorted(spec.settings().items())) + "".join(f"|{k}:{list(s)}" for k, s in self.shapes.items())
        self.digest = hashlib.sha256(b"teft-payload-layout\0" + layout.encode()).digest()[:8]
        self.size = payload_size(spec, self.numel)
        self.header = MAGIC + bytes([VERSION, CODECS[spec.codec], 0, 0]) + self.digest

    # -- flat vectors -------------------------------------------------------------------------------
    def flatten(self, delta: dict[str, torch.Tensor]) -> torch.Tensor:
        """The delta's tensors end to end in canonical key order, fp32; TeftError if keys or shapes differ."""
        if set(delta) != set(self.shapes):
            raise TeftError("the delta's keys are not this run's expert map: encode a delta of the run's state")
        parts = []
        for key, shape in self.shapes.items():
            tensor = delta[key]
            if tuple(tensor.shape) != shape:
                raise TeftError(f"delta tensor {key} has shape {list(tensor.shape)}, the run's is {list(shape)}")
            parts.append(tensor.detach().to(device="cpu", dtype=torch.float32).reshape(-1))
        return torch.cat(parts) if parts else torch.zeros(0)

    def unflatten(self, flat: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out, at = OrderedDict(), 0
        for key, shape in self.shapes.items():
            n = math.prod(shape)
            out[key] = flat[at:at + n].view(shape)
            at += n
        return out

    # -- encode (a miner's side; not part of consensus) ----------------------------------------------
    def encode(self, delta: dict[str, torch.Tensor]) -> bytes:
        """The payload bytes of a delta (keys and shapes of the run's expert map)."""
        return self.encode_flat(self.flatten(delta))

    def encode_flat(self, x: torch.Tensor) -> bytes:
        if x.numel() != self.numel or not bool(torch.isfinite(x).all()):
            raise TeftError("a payload encodes a finite delta of the run's layout")
        name, body = self.spec.codec, b""
        if name in _FLOATS:
            wire, dtype = _FLOATS[name]
            y = x.to(dtype)
            y = y.view(torch.int16) if dtype == torch.bfloat16 else y
            body = y.numpy().astype(np.dtype(wire).newbyteorder("<")).tobytes()
        elif name == "int8":
            body = self._encode_int8(x)
        else:
            body = self._encode_sparse(x)
        data = self.header + body
        assert len(data) == self.size, (len(data), self.size)
        return data

    def _encode_int8(self, x: torch.Tensor) -> bytes:
        b = self.spec.block
        padded = torch.nn.functional.pad(x, (0, (-x.numel()) % b)).view(-1, b)
        scale = padded.abs().amax(dim=1) / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(padded / safe[:, None]).clamp_(-127, 127).to(torch.int8).view(-1)[:x.numel()]
        return scale.numpy().astype("<f4").tobytes() + q.numpy().tobytes()

    def _encode_sparse(self, x: torch.Tensor) -> bytes:
        spec, n = self.spec, x.numel()
        count, _ = _chunks(spec, n)
        if count == 0:
            return b""
        mags = torch.full((count * spec.chunk,), -1.0)
        mags[:n] = x.abs()
        mags = mags.view(count, spec.chunk)
        top = mags.topk(spec.k, dim=1)
        scale = top.values[:, 0].clamp(min=0.0)  # the largest magnitude sent in each chunk
        idx = top.indices.sort(dim=1).values  # [count, k]; the last chunk trimmed below
        last = n - (count - 1) * spec.chunk
        keep = torch.ones_like(idx, dtype=torch.bool)
        if last < spec.k:
            keep[-1] = False
            keep[-1, :last] = True
            idx[-1, :last] = torch.arange(last)
        flat_idx = (idx + torch.arange(count)[:, None] * spec.chunk)[keep]
        values = x[flat_idx]
        chunk_of = torch.arange(count)[:, None].expand_as(idx)[keep]
        levels = 1 << (spec.bits - 1)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))[chunk_of]
        level = (torch.round(values.abs() / safe * levels) - 1).clamp_(0, levels - 1).to(torch.int64)
        code = ((values < 0).to(torch.int64) << (spec.bits - 1)) | level
        return (scale.numpy().astype("<f4").tobytes() + _pack(idx[keep].to(torch.int64), spec.index_bits)
                + _pack(code, spec.bits))

    # -- decode (every peer; part of consensus) ------------------------------------------------------
    def decode(self, data: bytes) -> OrderedDict[str, torch.Tensor]:
        """The delta a payload carries, keyed and shaped by the expert map; CodecError with the reason if the
        bytes are not a payload of this codec and layout. Checks come before the output is allocated."""
        return self.unflatten(self.decode_flat(data))

    def decode_flat(self, data: bytes) -> torch.Tensor:
        if len(data) != self.size:
            raise CodecError(f"payload of {len(data)} bytes, this run's {self.spec.label()} payload has "
                             f"exactly {self.size}")
        view = memoryview(data)
        head = bytes(view[:HEADER_SIZE])
        if head[:4] != MAGIC or head[4] != VERSION or head[6:8] != b"\0\0":
            raise CodecError("not a payload (no TFTD header of version 1): the sender runs other software")
        if head[5] != CODECS[self.spec.codec]:
            names = {v: k for k, v in CODECS.items()}
            raise CodecError(f"payload encoded with codec {names.get(head[5], head[5])}, this run's is "
                             f"{self.spec.codec}")
        if head[8:] != self.digest:
            raise CodecError("the payload's header names another key set or shapes (or codec settings) than "
                             "this run's expert map: it was encoded for another run")
        body = view[HEADER_SIZE:]
        name = self.spec.codec
        if name in _FLOATS:
            wire, dtype = _FLOATS[name]
            t = torch.from_numpy(np.frombuffer(body, dtype=np.dtype(wire).newbyteorder("<")).astype(wire))
            return (t.view(torch.bfloat16) if dtype == torch.bfloat16 else t).float()
        if name == "int8":
            return self._decode_int8(body)
        return self._decode_sparse(body)

    def _scales(self, body: memoryview, count: int) -> torch.Tensor:
        scale = torch.from_numpy(np.frombuffer(body[:4 * count], dtype="<f4").astype(np.float32))
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            raise CodecError("a payload scale is negative or non-finite")
        return scale

    def _decode_int8(self, body: memoryview) -> torch.Tensor:
        n, b = self.numel, self.spec.block
        count = -(-n // b)
        scale = self._scales(body, count)
        q = torch.from_numpy(np.frombuffer(body[4 * count:], dtype=np.int8).copy())
        if bool((q == -128).any()):
            raise CodecError("an int8 payload value is -128 (the codec's range is -127..127)")
        return q.float() * scale.repeat_interleave(b)[:n]

    def _decode_sparse(self, body: memoryview) -> torch.Tensor:
        spec, n = self.spec, self.numel
        count, sent = _chunks(spec, n)
        scale = self._scales(body, count)
        at = 4 * count
        idx_bytes = -(-sent * spec.index_bits // 8)
        idx = _unpack(body[at:at + idx_bytes], sent, spec.index_bits, "index")
        code = _unpack(body[at + idx_bytes:], sent, spec.bits, "value")
        if count == 0:
            return torch.zeros(0)
        per_chunk = torch.full((count,), spec.k, dtype=torch.int64)
        per_chunk[-1] = min(spec.k, n - (count - 1) * spec.chunk)
        chunk_of = torch.repeat_interleave(torch.arange(count), per_chunk)
        length = torch.full((count,), spec.chunk, dtype=torch.int64)
        length[-1] = n - (count - 1) * spec.chunk
        if bool((idx >= length[chunk_of]).any()):
            raise CodecError("a sparse payload index lies outside its chunk")
        same = chunk_of[1:] == chunk_of[:-1]
        if bool((idx[1:][same] <= idx[:-1][same]).any()):
            raise CodecError("a sparse payload's indices do not strictly increase within a chunk")
        levels = 1 << (spec.bits - 1)
        magnitude = ((code & (levels - 1)) + 1).float() * (1.0 / levels) * scale[chunk_of]
        values = torch.where((code >> (spec.bits - 1)).bool(), -magnitude, magnitude)
        out = torch.zeros(n)
        out[chunk_of * spec.chunk + idx] = values
        return out

    # -- a miner's send with error feedback ----------------------------------------------------------
    def compress(self, delta: dict[str, torch.Tensor], residual: dict[str, torch.Tensor] | None = None,
                 max_norm: float | None = None) -> tuple[bytes, OrderedDict, OrderedDict]:
        """(payload, the delta it decodes to, the new residual): encode delta + residual, keep what was not sent.

        With `max_norm`, what is sent is scaled to at most NORM_MARGIN of it (the validators' bound applies to
        the decoded delta, and an accumulated residual can push a sparse top-k over it); the rest stays in the
        residual, so nothing the miner trained is dropped for good.
        """
        x = self.flatten(delta)
        if residual:
            x = x + self.flatten(residual)
        scale, data = 1.0, self.encode_flat(x)
        sent = self.decode_flat(data)
        limit = None if max_norm is None else NORM_MARGIN * max_norm
        for _ in range(4):  # top-k and levels do not change under scaling: one round is enough but for rounding
            norm = float(sent.double().norm())
            if limit is None or norm <= limit:
                break
            scale *= limit / norm
            data = self.encode_flat(x * scale)
            sent = self.decode_flat(data)
        else:
            raise TeftError(f"could not bring the payload under the norm bound {max_norm}")
        return data, self.unflatten(sent), self.unflatten(x - sent)


def delta_norm(delta: dict[str, torch.Tensor]) -> float:
    """L2 norm over every tensor, in float64 (the bound validators check)."""
    return float(sum(float(v.double().pow(2).sum()) for v in delta.values())) ** 0.5


def check_delta(delta: dict[str, torch.Tensor], max_norm: float | None = None) -> str | None:
    """Why a decoded delta must not be used (non-finite, over the norm bound, all zero), or None."""
    for key, tensor in delta.items():
        if not bool(torch.isfinite(tensor).all()):
            return f"{key} has non-finite values"
    norm = delta_norm(delta)
    if max_norm is not None and norm > max_norm:
        return f"delta norm {norm:.4g} exceeds the bound {max_norm:.4g}"
    if norm == 0.0:
        return "no update: the delta is zero (the cycle's start state sent back)"
    return None


def apply_delta(base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> OrderedDict:
    """Phi_t - Delta in fp32, keys in the delta's order: the state a validator scores, one subtraction a number."""
    return OrderedDict((k, base[k].to(torch.float32) - delta[k]) for k in delta)
