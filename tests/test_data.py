"""Data module: shipped corpora, every user format, tokenization into blocks, shards and subsets."""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

from teft.data import (
    BUILTIN_CORPORA,
    BUILTIN_SPLITS,
    DataError,
    data_digest,
    has_split,
    iterate_batches,
    load_texts,
    make_byte_tokenizer,
    shard,
    subset,
    tokenize_blocks,
)

DOCS = ["first document\nwith two lines", "second document", "third one: ünïcödé ✓"]


@pytest.fixture(scope="module")
def tok():
    return make_byte_tokenizer()


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    assert isinstance(excinfo.value, ValueError)
    return message


# --------------------------------------------------------------------------- built-in corpora


@pytest.mark.parametrize("name", BUILTIN_CORPORA)
def test_builtin_splits_load_and_are_disjoint(name):
    splits = {split: load_texts(name, split) for split in BUILTIN_SPLITS}
    for split, texts in splits.items():
        assert texts, f"{name}.{split} is empty"
        assert all(isinstance(t, str) and t.strip() for t in texts)
    train, val, test = (set(splits[s]) for s in BUILTIN_SPLITS)
    assert not train & val and not train & test and not val & test


def test_manifest_matches_shipped_files():
    root = resources.files("teft").joinpath("assets", "corpora")
    manifest = json.loads(root.joinpath("manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["domains"]) == set(BUILTIN_CORPORA)
    for name, entry in manifest["domains"].items():
        for split in BUILTIN_SPLITS:
            info = entry["splits"][split]
            blob = root.joinpath(info["file"]).read_bytes()
            assert hashlib.sha256(blob).hexdigest() == info["sha256"] == data_digest(name, split)
            assert len(blob) == info["file_bytes"]
    assert len(load_texts("legal", "validation")) == manifest["domains"]["legal"]["splits"]["validation"]["documents"]


def test_builtin_unknown_split():
    with pytest.raises(DataError) as excinfo:
        load_texts("math", "dev")
    assert "validation" in _one_line_error(excinfo)


def test_limit_bytes_is_exact():
    texts = load_texts("math", "validation", limit_bytes=1000)
    assert sum(len(t.encode("utf-8")) for t in texts) == 1000
    assert texts == load_texts("math", "validation", limit_bytes=1000)
    assert texts[:-1] == load_texts("math", "validation")[: len(texts) - 1]


# --------------------------------------------------------------------------- user formats


def test_txt_file_splits_at_double_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("Para one.\n\nStill doc one.\n\n\nDoc two.\r\n\r\n\r\n\r\nDoc three.\n", encoding="utf-8")
    assert load_texts(str(path)) == ["Para one.\n\nStill doc one.", "Doc two.", "Doc three."]
    (tmp_path / "b.md").write_text("single document\n", encoding="utf-8")
    assert load_texts(str(tmp_path / "b.md")) == ["single document"]


def test_folder_of_txt(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text(DOCS[1], encoding="utf-8")
    (tmp_path / "a.txt").write_text(DOCS[0], encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text(DOCS[2], encoding="utf-8")
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden.txt").write_text("skip me", encoding="utf-8")
    assert load_texts(str(tmp_path)) == DOCS


def _write_jsonl(path: Path, records: list[dict], compress: bool = False) -> None:
    payload = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    path.write_bytes(gzip.compress(payload) if compress else payload)


def test_jsonl_and_jsonl_gz(tmp_path):
    records = [{"text": d, "id": i} for i, d in enumerate(DOCS)] + [{"text": "", "id": 9}]
    _write_jsonl(tmp_path / "d.jsonl", records)
    _write_jsonl(tmp_path / "d.jsonl.gz", records, compress=True)
    assert load_texts(str(tmp_path / "d.jsonl")) == DOCS
    assert load_texts(str(tmp_path / "d.jsonl.gz")) == DOCS
    _write_jsonl(tmp_path / "c.jsonl", [{"body": d} for d in DOCS])
    assert load_texts(str(tmp_path / "c.jsonl"), text_field="body") == DOCS


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS, "n": [1, 2, 3]}), tmp_path / "d.parquet")
    assert load_texts(str(tmp_path / "d.parquet")) == DOCS
    with pytest.raises(DataError) as excinfo:
        load_texts(str(tmp_path / "d.parquet"), text_field="content")
    message = _one_line_error(excinfo)
    assert "'content'" in message and "text, n" in message


def test_datasets_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": DOCS, "n": [1, 2, 3]}).save_to_disk(str(tmp_path / "ds"))
    assert load_texts(str(tmp_path / "ds")) == DOCS
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": DOCS[:2]}),
            "validation": datasets.Dataset.from_dict({"text": DOCS[2:]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_texts(str(tmp_path / "dd")) == DOCS[:2]
    assert load_texts(str(tmp_path / "dd"), split="validation") == DOCS[2:]
    with pytest.raises(DataError) as excinfo:
        load_texts(str(tmp_path / "dd"), split="test")
    assert "train, validation" in _one_line_error(excinfo)
    # only real splits count: a DatasetDict's own, a built-in corpus's; a plain Dataset or file reads one thing
    assert has_split(str(tmp_path / "dd"), "validation") and not has_split(str(tmp_path / "dd"), "test")
    assert has_split("math", "test") and not has_split(str(tmp_path / "ds"), "test")
    with pytest.raises(DataError) as excinfo:
        load_texts(str(tmp_path / "ds"), text_field="body")
    assert "text, n" in _one_line_error(excinfo)
    assert data_digest(str(tmp_path / "dd"), "train") != data_digest(str(tmp_path / "dd"), "validation")
    # Without datasets installed the same folders are read with pyarrow alone.
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert load_texts(str(tmp_path / "ds")) == DOCS
    assert load_texts(str(tmp_path / "dd"), split="validation") == DOCS[2:]


# --------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_texts(str(tmp_path / "nope"))
    message = _one_line_error(excinfo)
    assert "does not exist" in message and "general, code, legal, math" in message


def test_unknown_suffix_and_empty_folder(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_texts(str(tmp_path / "data.csv"))
    assert "unsupported file type" in _one_line_error(excinfo)
    with pytest.raises(DataError) as excinfo:
        load_texts(str(tmp_path))
    assert "no readable files" in _one_line_error(excinfo)


def test_jsonl_problems(tmp_path):
    _write_jsonl(tmp_path / "d.jsonl", [{"content": "x", "id": 1}])
    with pytest.raises(DataError) as excinfo:
        load_texts(str(tmp_path / "d.jsonl"))
    message = _one_line_error(excinfo)
    assert "'text'" in message and "content, id" in message and "line 1" in message
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_texts(str(tmp_path / "bad.jsonl"))
    assert "line 2" in _one_line_error(excinfo)
    _write_jsonl(tmp_path / "num.jsonl", [{"text": 3}])
    with pytest.raises(DataError) as excinfo:
        load_texts(str(tmp_path / "num.jsonl"))
    assert "int" in _one_line_error(excinfo)
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError) as excinfo:
        load_texts(str(tmp_path / "latin.txt"))
    assert "UTF-8" in _one_line_error(excinfo)


def test_data_digest(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello", encoding="utf-8")
    assert data_digest(str(path)) == hashlib.sha256(b"hello").hexdigest()
    (tmp_path / "b.txt").write_text("world", encoding="utf-8")
    folder = data_digest(str(tmp_path))
    assert folder == data_digest(str(tmp_path))
    (tmp_path / "b.txt").write_text("world!", encoding="utf-8")
    assert data_digest(str(tmp_path)) != folder


# --------------------------------------------------------------------------- tokenization and selection


def test_byte_tokenizer(tok):
    assert len(tok) == 257 and tok.eos_token_id == 256 and tok.pad_token_id == 256
    ids = tok("hé\n <x>", add_special_tokens=False)["input_ids"]
    assert ids == list("hé\n <x>".encode())
    assert tok.decode(ids) == "hé\n <x>"


def test_tokenize_blocks(tok):
    texts = ["abcdefg", "hij", "ünï"]
    blocks = tokenize_blocks(tok, texts, block_size=4)
    stream = [*b"abcdefg", 256, *b"hij", 256, *"ünï".encode(), 256]
    assert blocks.dtype == torch.int64 and blocks.shape == (len(stream) // 4, 4)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]
    assert torch.equal(blocks, tokenize_blocks(tok, texts, block_size=4))
    limited = tokenize_blocks(tok, texts, block_size=4, max_tokens=9)
    assert limited.shape == (2, 4) and torch.equal(limited, blocks[:2])
    with pytest.raises(DataError):
        tokenize_blocks(tok, ["ab"], block_size=8)


def test_tokenize_builtin_corpus(tok):
    texts = load_texts("code", "validation", limit_bytes=20_000)
    blocks = tokenize_blocks(tok, texts, block_size=128, max_tokens=10_000)
    assert blocks.shape == (78, 128)
    assert int(blocks.max()) <= 256 and int(blocks.min()) >= 0


def test_shard_disjoint_and_covering():
    blocks = torch.arange(23 * 3).view(23, 3)
    parts = [shard(blocks, i, 4) for i in range(4)]
    rows = sorted(int(r[0]) // 3 for p in parts for r in p)
    assert rows == list(range(23))
    assert torch.equal(shard(blocks, 1, 4), blocks[1::4])
    with pytest.raises(DataError):
        shard(blocks, 4, 4)


def test_subset_is_a_function_of_the_seed():
    blocks = torch.arange(1000 * 2).view(1000, 2)
    a = subset(blocks, 7, 50)
    assert a.shape == (50, 2) and len({int(r[0]) for r in a}) == 50
    assert torch.equal(a, subset(blocks, 7, 50))
    assert torch.equal(subset(blocks, b"seed", 50), subset(blocks, b"seed", 50))
    assert not torch.equal(a, subset(blocks, 8, 50))
    assert not torch.equal(subset(blocks, b"seed", 50), subset(blocks, b"seeds", 50))
    assert subset(blocks[:10], 7, 50).shape == (10, 2)


def test_iterate_batches():
    blocks = torch.arange(10 * 2).view(10, 2)
    batches = list(iterate_batches(blocks, 4, seed=3, steps=5))
    assert len(batches) == 5 and all(b.shape == (4, 2) for b in batches)
    rows = [int(r[0]) // 2 for b in batches for r in b]
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
    assert rows[:10] != rows[10:20]
    again = list(iterate_batches(blocks, 4, seed=3, steps=5))
    assert all(torch.equal(x, y) for x, y in zip(batches, again, strict=True))
    other = list(iterate_batches(blocks, 4, seed=4, steps=5))
    assert not all(torch.equal(x, y) for x, y in zip(batches, other, strict=True))
