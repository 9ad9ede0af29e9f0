"""Payload codecs (teft.codec): exact sizes, round trips, error feedback, one encoding per payload, and a decode
that gives the same bits in every process, whatever its thread count (decoding is part of consensus)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from teft.codec import (
    HEADER_SIZE,
    Codec,
    CodecError,
    CodecSpec,
    _pack,
    _unpack,
    apply_delta,
    check_delta,
    delta_norm,
    payload_size,
)
from teft.errors import TeftError

REPO = Path(__file__).resolve().parents[1]
SHAPES = OrderedDict([("layers.0.experts.1.gate_up_proj", (96, 160)), ("layers.0.experts.1.down_proj", (160, 48)),
                      ("layers.2.experts.0.gate_up_proj", (96, 160)), ("layers.2.experts.0.down_proj", (160, 48))])
SPECS = [CodecSpec("fp32"), CodecSpec("bf16"), CodecSpec("fp16"), CodecSpec("int8", block=256),
         CodecSpec("int8", block=100), CodecSpec("sparse"), CodecSpec("sparse", chunk=1000, density=0.05, bits=4),
         CodecSpec("sparse", chunk=4096, density=1 / 16, bits=3)]


def delta(seed: int = 0, scale: float = 0.01) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((k, scale * torch.randn(s, generator=g)) for k, s in SHAPES.items())


def flat(d) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in d.values()])


@pytest.mark.parametrize("spec", SPECS, ids=CodecSpec.label)
def test_size_follows_from_the_layout_and_decode_is_close(spec):
    codec = Codec(spec, SHAPES)
    d = delta()
    data = codec.encode(d)
    assert len(data) == codec.size == payload_size(spec, codec.numel)
    back = codec.decode(data)
    assert list(back) == list(SHAPES) and all(tuple(v.shape) == SHAPES[k] for k, v in back.items())
    assert all(v.dtype == torch.float32 for v in back.values())
    err = float((flat(back) - flat(d)).norm() / flat(d).norm())
    if spec.codec == "fp32":
        assert err == 0.0
    elif spec.codec in ("bf16", "fp16", "int8"):
        assert err < 0.01, err
    else:  # top-k: only the chosen numbers are sent, the rest are zero
        chunks = -(-codec.numel // spec.chunk)
        assert int((flat(back) != 0).sum()) <= chunks * spec.k
        assert err < 1.0
    assert torch.allclose(codec.decode_flat(codec.encode(back)), flat(back), rtol=1e-6, atol=0)  # a fixed point


def test_bytes_per_number():
    n = sum(a * b for a, b in SHAPES.values())
    assert payload_size(CodecSpec("fp32"), n) == HEADER_SIZE + 4 * n
    assert payload_size(CodecSpec("bf16"), n) == HEADER_SIZE + 2 * n
    assert payload_size(CodecSpec("int8", block=256), n) == HEADER_SIZE + n + 4 * -(-n // 256)
    sparse = CodecSpec("sparse", chunk=4096, density=1 / 64, bits=2)  # k = 64, 12-bit indices
    chunks = -(-n // 4096)
    assert payload_size(sparse, n) == HEADER_SIZE + 4 * chunks + -(-chunks * 64 * 12 // 8) + -(-chunks * 64 * 2 // 8)
    assert payload_size(CodecSpec("fp32"), n) / payload_size(sparse, n) > 100


@pytest.mark.parametrize("spec", SPECS[1:], ids=CodecSpec.label)
def test_error_feedback_keeps_what_was_not_sent(spec):
    codec = Codec(spec, SHAPES)
    residual, sent_total, trained_total = None, torch.zeros(codec.numel), torch.zeros(codec.numel)
    for cycle in range(6):
        d = delta(cycle)
        data, sent, residual = codec.compress(d, residual)
        assert torch.equal(flat(sent), codec.decode_flat(data))
        sent_total += flat(sent)
        trained_total += flat(d)
        # nothing is lost: everything trained is either sent or still in the residual
        assert torch.allclose(sent_total + flat(residual), trained_total, atol=1e-5)
    if spec.codec == "sparse":  # the residual is sent over later cycles: more than one cycle's top-k got out
        assert int((sent_total != 0).sum()) > codec.numel * spec.density * 1.5


def test_compress_scales_what_it_sends_under_the_norm_bound():
    codec = Codec(CodecSpec("sparse"), SHAPES)
    big = delta(scale=1.0)
    _, sent, residual = codec.compress(big, None)
    bound = delta_norm(sent) / 2
    data, sent, residual = codec.compress(big, None, max_norm=bound)
    assert delta_norm(codec.decode(data)) <= bound
    assert check_delta(codec.decode(data), bound) is None
    assert torch.allclose(flat(sent) + flat(residual), flat(big), atol=1e-5)


def _with(data: bytes, at: int, new: bytes) -> bytes:
    out = bytearray(data)
    out[at:at + len(new)] = new
    return bytes(out)


def test_headers_sizes_and_scales_are_checked_first():
    codec = Codec(CodecSpec("int8"), SHAPES)
    data = codec.encode(delta())
    cases = {
        "exactly": [data[:-1], data + b"\0", b""],
        "header": [_with(data, 0, b"XXXX"), _with(data, 4, b"\x09"), _with(data, 6, b"\x01")],
        "codec sparse": [_with(data, 5, b"\x05")],
        "key set or shapes": [Codec(CodecSpec("int8"), OrderedDict(reversed(SHAPES.items()))).encode(
            OrderedDict(reversed(delta().items())))],
        "non-finite": [_with(data, HEADER_SIZE, struct.pack("<f", float("nan"))),
                       _with(data, HEADER_SIZE, struct.pack("<f", float("inf"))),
                       _with(data, HEADER_SIZE, struct.pack("<f", -1.0))],
        "-128": [_with(data, len(data) - 1, b"\x80")],
    }
    for reason, payloads in cases.items():
        for payload in payloads:
            with pytest.raises(CodecError, match=reason):
                codec.decode(payload)
    # another setting of the same codec is another layout, even at the same size
    other = Codec(CodecSpec("sparse", bits=3), SHAPES)
    same_size = Codec(CodecSpec("sparse", bits=3, density=1 / 64 + 1e-9), SHAPES)
    assert other.size == same_size.size and other.digest != same_size.digest
    with pytest.raises(CodecError, match="another run"):
        other.decode(same_size.encode(delta()))


def test_sparse_indices_are_bounds_checked_and_strictly_increasing():
    codec = Codec(CodecSpec("sparse", chunk=1000, density=0.01, bits=2), SHAPES)  # 10-bit indices, k = 10
    data = codec.encode(delta())
    chunks = -(-codec.numel // 1000)
    last = codec.numel - (chunks - 1) * 1000
    sent = (chunks - 1) * 10 + min(10, last)
    at, width = HEADER_SIZE + 4 * chunks, codec.spec.index_bits
    length = -(-sent * width // 8)
    idx = _unpack(memoryview(data)[at:at + length], sent, width, "index")

    def with_indices(new: torch.Tensor) -> bytes:
        return data[:at] + _pack(new, width) + data[at + length:]

    assert codec.decode(with_indices(idx)) is not None  # the unpack/pack round trip is exact
    cases = {"outside its chunk": [idx.clone().index_fill_(0, torch.tensor([0]), 1000),
                                   idx.clone().index_fill_(0, torch.tensor([sent - 1]), last)],  # the short last chunk
             "strictly increase": [idx.clone().index_fill_(0, torch.tensor([1]), int(idx[0]))]}
    assert 0 < last < 1000 and int(idx[sent - 1]) < last
    for reason, candidates in cases.items():
        for candidate in candidates:
            with pytest.raises(CodecError, match=reason):
                codec.decode(with_indices(candidate))
    if length * 8 > sent * width:  # padding bits after the indices must be zero: one encoding per payload
        with pytest.raises(CodecError, match="padding"):
            codec.decode(_with(data, at + length - 1, bytes([data[at + length - 1] | 0x80])))


def test_decoded_deltas_are_checked_and_applied_in_fp32():
    codec = Codec(CodecSpec("bf16"), SHAPES)
    zero = OrderedDict((k, torch.zeros(s)) for k, s in SHAPES.items())
    assert "no update" in check_delta(codec.decode(codec.encode(zero)))
    assert "exceeds the bound" in check_delta(delta(scale=1.0), max_norm=1.0)
    nan = delta()
    nan[next(iter(nan))][0, 0] = float("nan")
    assert "non-finite" in check_delta(nan)
    with pytest.raises(TeftError):
        codec.encode(nan)
    base = OrderedDict((k, torch.ones(s)) for k, s in SHAPES.items())
    applied = apply_delta(base, delta())
    assert all(torch.equal(applied[k], base[k] - delta()[k]) for k in SHAPES)


_CHILD = r"""
import json, sys, torch
from collections import OrderedDict
from teft.codec import Codec, CodecSpec
from teft.files import content_hash
from teft.outer import NesterovOuter, merge
torch.set_num_threads(int(sys.argv[1]))
shapes = OrderedDict((f"layers.{l}.experts.{e}.w", (256, 160)) for l in range(2) for e in range(4))
g = torch.Generator().manual_seed(5)
base = OrderedDict((k, torch.randn(s, generator=g)) for k, s in shapes.items())
out = {}
for spec in json.loads(sys.argv[2]):
    codec = Codec(CodecSpec(**spec), shapes)
    payloads = [bytes.fromhex(h) for h in json.loads(open(sys.argv[3]).read())[codec.spec.label()]]
    deltas = [codec.decode(p) for p in payloads]
    state = NesterovOuter().step(base, merge(deltas))
    out[codec.spec.label()] = [content_hash(torch.cat([d.reshape(-1) for d in x.values()]).numpy().tobytes())
                               for x in [*deltas, state]]
print(json.dumps(out, sort_keys=True))
"""


def test_every_process_decodes_and_merges_the_same_bits_whatever_its_thread_count(tmp_path):
    shapes = OrderedDict((f"layers.{layer}.experts.{e}.w", (256, 160)) for layer in range(2) for e in range(4))
    specs = [CodecSpec("bf16"), CodecSpec("int8"), CodecSpec("sparse", bits=3, density=1 / 32)]
    payloads = {}
    for spec in specs:
        codec = Codec(spec, shapes)
        payloads[spec.label()] = []
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            payloads[spec.label()].append(codec.encode(OrderedDict(
                (k, 0.01 * torch.randn(s, generator=g)) for k, s in shapes.items())).hex())
    (tmp_path / "payloads.json").write_text(json.dumps(payloads))
    outs = []
    for threads in ("1", "4"):
        proc = subprocess.run([sys.executable, "-c", _CHILD, threads, json.dumps([s.settings() for s in specs]),
                               str(tmp_path / "payloads.json")], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1] and len(outs[0]) == len(specs)
