"""Domain data: read the shipped corpora or a user's files, tokenize into blocks, and cut shards
and subsets that every peer computes identically from the same seed.

A data spec is one of the built-in corpus names (general, code, legal, math; these win over a
local folder of the same name, so write ``./math`` for that) or a local path:

- ``.txt`` / ``.md`` file: UTF-8 text, split into documents at runs of two or more blank lines
  (one blank line is a paragraph break inside a document); a file with no such run is one document;
- ``.jsonl`` / ``.jsonl.gz`` file: one JSON object per line, the text in ``text_field``;
- ``.parquet`` file: the string column ``text_field`` (read with pyarrow);
- a folder written by ``datasets``' ``save_to_disk``: a Dataset, or a DatasetDict whose ``split``
  is taken;
- any other folder: every supported file in it and its subfolders, in sorted path order.

Nothing here touches the network; random choices come from sha256 of the seed, so they do not
depend on the torch, numpy or Python version a peer runs.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import io
import json
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import torch

from teft.errors import TeftError

BUILTIN_CORPORA = ("general", "code", "legal", "math")
BUILTIN_SPLITS = ("train", "validation", "test")
EOS_TOKEN = "<|endoftext|>"

_FILE_KINDS = ((".jsonl.gz", "jsonl"), (".jsonl", "jsonl"), (".parquet", "parquet"), (".txt", "txt"), (".md", "txt"))
_ACCEPTS = (
    "pass a file (.txt, .md, .jsonl, .jsonl.gz, .parquet), a folder of such files, a folder saved with "
    f"datasets' save_to_disk, or one of: {', '.join(BUILTIN_CORPORA)}"
)
_DOC_BREAK = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_TOKENIZE_BATCH = 64


class DataError(TeftError):
    """A data spec that cannot be read, with the fix in its one-line message."""


@dataclass(frozen=True)
class _Source:
    """What a spec points at: the files to read (kind, name, file) or a datasets folder."""

    spec: str
    files: tuple[tuple[str, str, Path | Traversable], ...]
    dataset_dir: Path | None = None


# --------------------------------------------------------------------------- resolving specs


def _file_kind(path: Path) -> str | None:
    """The reader for a file name, or None when no reader applies."""
    name = path.name.lower()
    for suffix, kind in _FILE_KINDS:
        if name.endswith(suffix):
            return kind
    return None


def _builtin_file(name: str, split: str) -> Traversable:
    """The shipped corpus file, located through the package so it works from a wheel too."""
    if split not in BUILTIN_SPLITS:
        raise DataError(f"built-in corpus {name!r} has no split {split!r}; use one of: {', '.join(BUILTIN_SPLITS)}")
    ref = resources.files("teft").joinpath("assets", "corpora", f"{name}.{split}.jsonl.gz")
    if not ref.is_file():
        raise DataError(
            f"built-in corpus file {name}.{split}.jsonl.gz is missing from this install; "
            "rebuild it with: python scripts/build_corpora.py"
        )
    return ref


def _visible_files(root: Path) -> list[Path]:
    """Regular files under root in sorted path order, hidden files and folders skipped."""
    out = []
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).parts
        if path.is_file() and not any(part.startswith(".") for part in rel):
            out.append(path)
    return out


def _dataset_folder(root: Path, split: str) -> Path | None:
    """The Dataset folder inside a save_to_disk folder (the split's for a DatasetDict), else None."""
    if (root / "dataset_dict.json").is_file():
        try:
            splits = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{root}/dataset_dict.json is not a datasets DatasetDict index ({exc})") from None
        if split not in splits:
            raise DataError(
                f"dataset folder '{root}' has no split {split!r}; available splits: {', '.join(map(str, splits))}"
            )
        return root / split
    if (root / "state.json").is_file() or (root / "dataset_info.json").is_file():
        return root
    return None


def _resolve(spec: str, split: str) -> _Source:
    """Decide what a spec names before reading a byte, so errors come early and in one line."""
    if spec in BUILTIN_CORPORA:
        return _Source(spec, (("jsonl", f"{spec}.{split}.jsonl.gz", _builtin_file(spec, split)),))
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data path '{spec}' does not exist; {_ACCEPTS}")
    if path.is_file():
        kind = _file_kind(path)
        if kind is None:
            raise DataError(f"cannot read data file '{spec}': unsupported file type; {_ACCEPTS}")
        return _Source(spec, ((kind, path.name, path),))
    if not path.is_dir():
        raise DataError(f"data path '{spec}' is neither a file nor a folder; {_ACCEPTS}")
    dataset = _dataset_folder(path, split)
    if dataset is not None:
        if not dataset.is_dir():
            raise DataError(f"dataset folder '{dataset}' is missing; save the dataset again with save_to_disk")
        files = tuple(("arrow", f.relative_to(path).as_posix(), f) for f in _visible_files(dataset))
        return _Source(spec, files, dataset_dir=dataset)
    files = []
    for f in _visible_files(path):
        kind = _file_kind(f)
        if kind is not None:
            files.append((kind, f.relative_to(path).as_posix(), f))
    if not files:
        raise DataError(f"data folder '{spec}' holds no readable files; {_ACCEPTS}")
    return _Source(spec, tuple(files))


# --------------------------------------------------------------------------- readers


def _check_text(value: Any, field: str, where: str, present: Iterable[str]) -> str | None:
    """The text of one record, None when empty, or a DataError naming the fields there are."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {field!r} holds {type(value).__name__}, not text; "
            f"pass the name of a text field (fields: {', '.join(map(str, present))})"
        )
    return value if value.strip() else None


def _missing_field(where: str, field: str, present: Iterable[str]) -> DataError:
    """The error for a text field that is not there, listing what is."""
    names = ", ".join(map(str, present)) or "none"
    return DataError(f"{where} has no field {field!r}; fields present: {names}; pass the text field's name")


def _read_txt(name: str, data: bytes) -> Iterator[str]:
    """Documents of a text file, split at runs of two or more blank lines."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"text file '{name}' is not UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    for doc in _DOC_BREAK.split(text):
        doc = doc.strip("\n")
        if doc.strip():
            yield doc


def _read_jsonl(name: str, stream: io.BufferedIOBase, field: str) -> Iterator[str]:
    """Texts from JSON Lines, one object per non-empty line."""
    for lineno, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        where = f"'{name}' line {lineno}"
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"{where} is not valid JSON ({exc}); each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise DataError(f"{where} is a JSON {type(record).__name__}, not an object like {{{field!r}: ...}}")
        if field not in record:
            raise _missing_field(where, field, record)
        text = _check_text(record[field], field, where, record)
        if text is not None:
            yield text


def _pyarrow() -> Any:
    """pyarrow, imported on first use because it is slow to import."""
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError("reading parquet or datasets folders needs pyarrow; install it: pip install pyarrow") from None
    return pyarrow


def _column_texts(batches: Iterable[Any], field: str, where: str, names: list[str]) -> Iterator[str]:
    """Texts from record batches of one column."""
    for batch in batches:
        for value in batch.column(0).to_pylist():
            text = _check_text(value, field, where, names)
            if text is not None:
                yield text


def _read_parquet(name: str, path: Path | Traversable, field: str) -> Iterator[str]:
    """Texts from one parquet column, read in batches so a byte limit stops early."""
    pa = _pyarrow()
    with path.open("rb") as fh:
        try:
            pf = pa.parquet.ParquetFile(fh)
        except pa.ArrowException as exc:
            raise DataError(f"'{name}' is not a readable parquet file ({exc})") from None
        names = pf.schema_arrow.names
        if field not in names:
            raise _missing_field(f"parquet file '{name}'", field, names)
        yield from _column_texts(pf.iter_batches(columns=[field], batch_size=1024), field, f"'{name}'", names)


def _read_dataset(folder: Path, field: str, spec: str) -> Iterator[str]:
    """Texts of a datasets folder: through datasets when installed, else its arrow files directly."""
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:
        try:
            ds = datasets.load_from_disk(str(folder))
        except Exception as exc:  # datasets raises many types for a damaged folder
            raise DataError(f"cannot load dataset folder '{folder}' ({type(exc).__name__}: {exc})") from None
        if isinstance(ds, datasets.DatasetDict):
            raise DataError(f"'{folder}' is a DatasetDict inside a dataset folder; pass the folder that holds it")
        if field not in ds.column_names:
            raise _missing_field(f"dataset '{spec}'", field, ds.column_names)
        for batch in ds.select_columns([field]).iter(batch_size=1024):
            for value in batch[field]:
                text = _check_text(value, field, f"dataset '{spec}'", ds.column_names)
                if text is not None:
                    yield text
        return
    yield from _read_arrow_folder(folder, field, spec)


def _read_arrow_folder(folder: Path, field: str, spec: str) -> Iterator[str]:
    """Texts of a save_to_disk folder read with pyarrow alone, for installs without datasets."""
    pa = _pyarrow()
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"'{folder}' has no usable state.json ({exc}); install datasets to read it") from None
    if state.get("_indices_data_files"):
        raise DataError(f"'{folder}' stores an index mapping; install datasets to read it")
    for path in files:
        with pa.memory_map(str(path), "r") as source:
            reader = pa.ipc.open_stream(source)
            names = reader.schema.names
            if field not in names:
                raise _missing_field(f"dataset '{spec}'", field, names)
            index = names.index(field)
            for batch in reader:
                for value in batch.column(index).to_pylist():
                    text = _check_text(value, field, f"dataset '{spec}'", names)
                    if text is not None:
                        yield text


def _iter_texts(source: _Source, field: str) -> Iterator[str]:
    """Documents of a resolved source, in a fixed order."""
    if source.dataset_dir is not None:
        yield from _read_dataset(source.dataset_dir, field, source.spec)
        return
    for kind, name, path in source.files:
        if kind == "txt":
            yield from _read_txt(name, path.read_bytes())
        elif kind == "parquet":
            yield from _read_parquet(name, path, field)
        else:
            with path.open("rb") as raw:
                if name.lower().endswith(".gz"):
                    try:
                        with gzip.GzipFile(fileobj=raw) as gz:
                            yield from _read_jsonl(name, gz, field)
                    except (OSError, EOFError) as exc:
                        raise DataError(f"'{name}' is not a readable gzip file ({exc})") from None
                else:
                    yield from _read_jsonl(name, raw, field)


# --------------------------------------------------------------------------- public API


def load_texts(spec: str, split: str = "train", text_field: str = "text", limit_bytes: int | None = None) -> list[str]:
    """Documents named by a spec (see the module docstring), optionally cut to limit_bytes of UTF-8."""
    if limit_bytes is not None and limit_bytes < 1:
        raise DataError(f"limit_bytes must be positive, got {limit_bytes}")
    source = _resolve(spec, split)
    texts: list[str] = []
    used = 0
    for text in _iter_texts(source, text_field):
        if limit_bytes is not None:
            size = len(text.encode("utf-8"))
            if used + size >= limit_bytes:
                # Cut the last document at a character boundary so the limit is exact, not "about".
                text = text.encode("utf-8")[: limit_bytes - used].decode("utf-8", errors="ignore")
                if text:
                    texts.append(text)
                break
            used += size
        texts.append(text)
    if not texts:
        raise DataError(f"data '{spec}' holds no text documents; check the path and the text field {text_field!r}")
    return texts


def check_data(spec: str, split: str = "train") -> None:
    """Raise DataError now if a spec names nothing readable, without reading its documents."""
    _resolve(spec, split)


def has_split(spec: str, split: str) -> bool:
    """Whether a spec names real splits and has `split`: the shipped corpora and datasets DatasetDict folders do;
    a file or a plain folder reads the same documents whatever split is asked for."""
    if spec in BUILTIN_CORPORA:
        return split in BUILTIN_SPLITS
    index = Path(spec).expanduser() / "dataset_dict.json"
    if not index.is_file():
        return False
    try:
        return split in json.loads(index.read_text(encoding="utf-8"))["splits"]
    except (ValueError, KeyError, TypeError):
        return False


def data_digest(spec: str, split: str = "train") -> str:
    """sha256 of the bytes a spec reads, so an expert map or a run records which data it came from."""
    source = _resolve(spec, split)
    h = hashlib.sha256()
    single = len(source.files) == 1 and source.dataset_dir is None
    for _, name, path in source.files:
        if not single:
            # Name and length first, so moving bytes between files changes the digest.
            h.update(name.encode("utf-8") + b"\0")
        with path.open("rb") as fh:
            data = fh.read()
        if not single:
            h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def tokenize_blocks(tokenizer: Any, texts: list[str], block_size: int, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids of all documents (each ended by eos) cut into [N, block_size] rows, the unit of every batch."""
    if block_size < 1:
        raise DataError(f"block_size must be at least 1, got {block_size}")
    if max_tokens is not None and max_tokens < block_size:
        raise DataError(f"max_tokens ({max_tokens}) is smaller than one block ({block_size}); raise it")
    eos = getattr(tokenizer, "eos_token_id", None)
    ids = array("q")
    for start in range(0, len(texts), _TOKENIZE_BATCH):
        encoded = tokenizer(texts[start : start + _TOKENIZE_BATCH], add_special_tokens=False, verbose=False)
        for row in encoded["input_ids"]:
            ids.extend(row)
            if eos is not None:
                ids.append(eos)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    usable = len(ids) if max_tokens is None else min(len(ids), max_tokens)
    rows = usable // block_size
    if rows == 0:
        raise DataError(
            f"the data gives {len(ids)} tokens, fewer than one block of {block_size}; use more data or a smaller block"
        )
    del ids[rows * block_size :]
    return torch.frombuffer(bytearray(ids.tobytes()), dtype=torch.int64).view(rows, block_size)


def shard(blocks: torch.Tensor, index: int, count: int) -> torch.Tensor:
    """Rows i with i % count == index: disjoint shards that together cover every row."""
    if count < 1 or not 0 <= index < count:
        raise DataError(f"shard index {index} is not in 0..{count - 1}; pass 0 <= index < count")
    return blocks[index::count].contiguous()


def _seed_bytes(seed: int | str | bytes) -> bytes:
    """One byte encoding per seed value, so equal seeds agree on every machine."""
    if isinstance(seed, bytes):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, str)):
        raise DataError(f"seed must be an int, str or bytes, got {type(seed).__name__}")
    return str(seed).encode("utf-8")


def _rank_key(key: bytes) -> Any:
    """Sort key of row i: sha256(key, i), a permutation no library upgrade can change."""
    base = hashlib.sha256(key)

    def rank(i: int) -> bytes:
        h = base.copy()
        h.update(i.to_bytes(8, "big"))
        return h.digest()

    return rank


def subset(blocks: torch.Tensor, seed: int | str | bytes, n: int) -> torch.Tensor:
    """n rows picked by the seed alone (all rows if n is larger), so every peer with the seed evaluates the same."""
    if n < 1:
        raise DataError(f"subset size must be positive, got {n}")
    total = blocks.shape[0]
    rank = _rank_key(b"teft-subset\0" + _seed_bytes(seed))
    chosen = sorted(heapq.nsmallest(min(n, total), range(total), key=rank))
    return blocks.index_select(0, torch.tensor(chosen, dtype=torch.long))


def iterate_batches(
    blocks: torch.Tensor, batch_size: int, seed: int | str | bytes, steps: int
) -> Iterator[torch.Tensor]:
    """steps batches of [batch_size, T] rows, walking seeded shuffles of the rows epoch after epoch."""
    if batch_size < 1 or steps < 0:
        raise DataError(f"need batch_size >= 1 and steps >= 0, got {batch_size} and {steps}")
    total = blocks.shape[0]
    if total == 0:
        raise DataError("no blocks to draw batches from; use more data or a smaller block size")
    key = b"teft-epoch\0" + _seed_bytes(seed) + b"\0"
    epoch, order, pos = 0, [], 0
    for _ in range(steps):
        picked: list[int] = []
        while len(picked) < batch_size:
            if pos == len(order):
                order = sorted(range(total), key=_rank_key(key + str(epoch).encode()))
                epoch, pos = epoch + 1, 0
            take = min(batch_size - len(picked), len(order) - pos)
            picked += order[pos : pos + take]
            pos += take
        yield blocks.index_select(0, torch.tensor(picked, dtype=torch.long))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-printable-character table, the alphabet of byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def make_byte_tokenizer() -> Any:
    """A real transformers tokenizer whose ids are the UTF-8 bytes (0-255) plus eos/pad 256, for the tiny model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([EOS_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,
    )
