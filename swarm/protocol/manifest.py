"""Run manifest: one YAML file fixes a run; its canonical form hashes to the run id."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from swarm.errors import SwarmError
from swarm.net.keys import check_public_key, normalize_public_key
from swarm.protocol.clock import PHASES, Clock


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fork the run id or drop a setting."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BaseModelSpec(_Strict):
    """Where the pretrained MoE lives locally and, optionally, the hash its files must have."""

    path: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: the checkpoint's own (bf16 for real MoEs)


class ExpertMapSpec(_Strict):
    """Either a ready expert map file or the selection spec to compute one."""

    path: str | None = None
    spec: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ExpertMapSpec:
        """Exactly one source, or peers could disagree on which experts train."""
        if (self.path is None) == (self.spec is None):
            raise ValueError("give exactly one of expert_map.path or expert_map.spec: remove the other")
        return self


class DataSpec(_Strict):
    """Where the data comes from and how much of it: every default lives here, once."""

    train: str = Field(min_length=1)  # a shipped corpus name, or a path relative to the manifest
    validation: str = Field(min_length=1)  # the split validators draw Proof-of-Loss subsets from
    general_validation: str | None = None  # general text, to report forgetting
    seq_len: int = Field(default=128, gt=0)  # tokens per block, for training and scoring alike
    train_tokens: int | None = Field(default=None, gt=0)
    validation_tokens: int | None = Field(default=None, gt=0)
    validation_blocks: int = Field(default=32, gt=0)  # blocks in one cycle's Proof-of-Loss subset
    private_validation: bool = False  # validators must score on held-out data of their own (--validation-data)
    overfit_ratio: float = Field(default=2.0, gt=1)  # public-split gain over private gain that flags an update
    # standard errors by which an update's gain on the blocks its own first inner steps trained on must exceed its
    # scoring gain, or it scores zero: it was not trained on its assigned batches. 0 turns the check off; how far
    # honest updates clear it depends on the inner loop (scripts/assigned_check.py measures a manifest's)
    assigned_z: float = Field(default=0.0, ge=0)
    # the most an update may raise the general-text loss (nats, mean over `general_check_blocks` blocks of the
    # general_validation split picked by the cycle's seed) and still score: one trained against general text
    # scores zero. None turns the check off; honest drift depends on the model and the inner loop
    # (scripts/general_harm_study.py measures a manifest's)
    max_general_drift: float | None = Field(default=None, gt=0)
    general_check_blocks: int = Field(default=16, gt=0)
    eval_batch_size: int = Field(default=8, gt=0)

    @model_validator(mode="after")
    def _general_check(self) -> DataSpec:
        """A general-drift limit needs general text to measure it on."""
        if self.max_general_drift is not None and not self.general_validation:
            raise ValueError("data.max_general_drift needs data.general_validation: name general text to measure "
                             "drift on, or remove the limit")
        return self


class Timings(_Strict):
    """Phase durations in seconds, in protocol order."""

    sync: float = Field(gt=0)
    train: float = Field(gt=0)
    commit: float = Field(gt=0)
    reveal: float = Field(gt=0)
    evaluate: float = Field(gt=0)
    reduce: float = Field(gt=0)

    def phases(self) -> list[tuple[str, float]]:
        """The (name, seconds) list Clock takes."""
        return [(name, getattr(self, name)) for name in PHASES]

    def max_clock_skew(self) -> float:
        """How far a peer's clock may be from the swarm's: a quarter of the shortest phase."""
        return min(seconds for _, seconds in self.phases()) / 4


class InnerSpec(_Strict):
    """Miner-side inner loop hyper-parameters."""

    steps: int = Field(gt=0)
    lr: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float | None = Field(default=None, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    gradient_checkpointing: bool = False  # recompute activations: pilot-size MoEs fit one GPU at batch 8 x 1024
    keep_moments: bool = False  # each miner keeps its AdamW moments across cycles (persisted: kill -9 safe)
    schedule: Literal["cycle", "run"] = "cycle"  # warmup/cosine per cycle, or one spanning schedule_cycles
    schedule_cycles: int | None = Field(default=None, gt=0)
    # how a miner holds the experts it does not train: the checkpoint's dtype, or frozen in int8 / 4 bits (a light
    # miner, teft/light.py); a miner may choose its own with --background; validators always hold the full model
    background: Literal["bf16", "int8", "4bit"] = "bf16"
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"  # adamw8bit: bitsandbytes' 8-bit moments, a quarter the bytes

    @model_validator(mode="after")
    def _horizon(self) -> InnerSpec:
        """A schedule over the run needs the run's length, the same on every miner."""
        if self.schedule == "run" and self.schedule_cycles is None:
            raise ValueError("inner.schedule 'run' needs inner.schedule_cycles: add the run's length in cycles")
        return self


class OuterSpec(_Strict):
    """DiLoCo-style outer step over the merged pseudo-gradients."""

    lr: float = Field(default=0.7, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    top_k: int = Field(default=4, gt=0)
    min_relative_score: float = Field(default=0.25, ge=0, le=1)  # merge only scores >= this x the best


class PayloadSpec(_Strict):
    """How a miner's pseudo-gradient is encoded (teft.codec): its bytes per cycle and what the swarm loses to it."""

    codec: Literal["fp32", "bf16", "fp16", "int8", "sparse"]
    block: int = Field(default=256, ge=1, le=1 << 20)  # int8: numbers per absmax scale
    chunk: int = Field(default=4096, ge=2, le=1 << 20)  # sparse: numbers per top-k chunk
    density: float = Field(default=1 / 64, gt=0, le=1)  # sparse: share of each chunk sent
    bits: int = Field(default=2, ge=2, le=8)  # sparse: bits per value, sign included


class PackSpec(_Strict):
    """The run's miner pack (teft.pack), by content hash: a light miner loads it instead of the base model and
    fetches it from the swarm when it has none."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(gt=0)  # its exact size: a fetch asks for no more
    background: Literal["int8", "4bit"]
    pieces: str = Field(pattern=r"^[0-9a-f]{64}$")  # its pieces root (swarm/net/pieces.py): each piece is checked
    #                                                as it arrives, from whichever holder sent it


class Manifest(_Strict):
    """Everything that must be identical on every peer of one run."""

    name: str = Field(min_length=1, max_length=128)
    base_model: BaseModelSpec
    expert_map: ExpertMapSpec
    data: DataSpec
    timings: Timings
    inner: InnerSpec
    outer: OuterSpec = Field(default_factory=OuterSpec)
    payload_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    payload: PayloadSpec | None = None  # the payload codec; absent: the dense codec of payload_dtype
    pack: PackSpec | None = None  # the miner pack light miners of this background load (python -m teft pack)
    max_delta_norm: float = Field(gt=0)
    validators: list[str]
    genesis: float
    quorum: int = Field(default=1, ge=1)
    max_submissions: int = Field(default=16, gt=0)  # submissions a validator evaluates per cycle, at most
    miners: list[str] | None = None  # admission: when set, only these miners' commits are evaluated (off: open)
    # proof of work a commit needs to be tried (swarm/net/work.py): about 2^bits sha256 per key and cycle
    commit_work_bits: int = Field(default=0, ge=0, le=32)
    # the model's architecture by name, a transformers config under configs/shapes/ (tests check the budget,
    # payload size and dtype against it); informational: peers load the real checkpoint
    shape: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("validators", "miners")
    @classmethod
    def _keys(cls, keys: list[str] | None, info) -> list[str] | None:
        """Store keys in one normal form so allowlist checks are plain string compares."""
        if keys is None:
            return None
        if not keys and info.field_name == "validators":
            raise ValueError("no validators listed: add the public keys printed by python -m swarm.keygen")
        out = []
        for i, key in enumerate(keys):
            try:
                check_public_key(key)
            except SwarmError:
                raise ValueError(
                    f"entry {i} is not an RSA public key: paste the line printed by python -m swarm.keygen"
                ) from None
            out.append(normalize_public_key(key))
        if len(set(out)) != len(out):
            raise ValueError("a key is listed twice: remove the duplicate")
        return out

    @field_validator("genesis", mode="before")
    @classmethod
    def _genesis(cls, value: Any) -> float:
        """Unix seconds, or an ISO time (YAML may already have parsed it); naive times are UTC."""
        if isinstance(value, bool):
            raise ValueError("not a time: use unix seconds or an ISO time like 2026-01-01T00:00:00Z")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ValueError("not finite: use unix seconds or an ISO time")
            return float(value)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError("not a time: use unix seconds or an ISO time like 2026-01-01T00:00:00Z") from None
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return value.timestamp()
        raise ValueError("not a time: use unix seconds or an ISO time like 2026-01-01T00:00:00Z")

    @model_validator(mode="after")
    def _quorum(self) -> Manifest:
        """A quorum larger than the allowlist could never be met."""
        if self.quorum > len(self.validators):
            raise ValueError(
                f"quorum {self.quorum} exceeds the {len(self.validators)} listed validators: lower it or add keys"
            )
        return self

    @model_validator(mode="after")
    def _light_map(self) -> Manifest:
        """A light miner cannot route the full model to select experts: it needs the map as a file."""
        if self.inner.background != "bf16" and self.expert_map.path is None:
            raise ValueError(f"inner.background {self.inner.background} needs expert_map.path: a light miner cannot "
                             "route the full model to select experts; run `python -m teft select` once and give "
                             "its map file")
        return self

    @model_validator(mode="after")
    def _pack_map(self) -> Manifest:
        """A pack holds the selected experts of one map: the run must name that map as a file."""
        if self.pack is not None and self.expert_map.path is None:
            raise ValueError("pack needs expert_map.path: a pack holds the selected experts of one expert map")
        return self

    @model_validator(mode="after")
    def _one_payload_setting(self) -> Manifest:
        """payload.codec replaces payload_dtype: two settings for one thing could disagree."""
        if self.payload is not None and self.payload_dtype != "float32":
            raise ValueError("give payload.codec or payload_dtype, not both: remove payload_dtype")
        return self

    @model_validator(mode="after")
    def _top_k(self) -> Manifest:
        """A ranking lists at most MAX_RANKED entries; merging more than that could never happen."""
        from swarm.net.records import MAX_RANKED

        if self.outer.top_k > MAX_RANKED:
            raise ValueError(f"outer.top_k {self.outer.top_k} exceeds the {MAX_RANKED} entries a ranking holds: "
                             "lower it")
        return self

    def horizon(self):
        """The records-ahead-of-time bound every peer's DHT node enforces for this run."""
        from swarm.net.validation import CycleHorizon

        return CycleHorizon(self.genesis, self.clock().cycle_length)

    @property
    def source(self) -> Path | None:
        """The file it was loaded from; relative paths inside resolve against its directory."""
        return self._source

    def resolve(self, path: str) -> Path:
        """A path from the manifest, relative to the manifest's own directory."""
        p = Path(path).expanduser()
        if p.is_absolute() or self._source is None:
            return p
        return self._source.parent / p

    def clock(self) -> Clock:
        """The run's schedule."""
        return Clock(self.genesis, self.timings.phases())


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as 'field: problem (fix)'."""
    loc = ".".join(str(part) for part in error.get("loc", ()) if not str(part).startswith("function-"))
    kind = error.get("type", "")
    msg = error.get("msg", "invalid").removeprefix("Value error, ")
    if kind == "missing":
        return f"field '{loc}' is missing: add it"
    if kind == "extra_forbidden":
        return f"unknown field '{loc}': remove it or check its spelling"
    where = f"field '{loc}'" if loc else "manifest"
    if kind == "value_error":  # our own validators already end with the fix
        return f"{where}: {msg}"
    return f"{where}: {msg}: fix its value"


def from_dict(raw: dict[str, Any], source: str = "<manifest>") -> Manifest:
    """Validate an already-parsed manifest; errors name the source and field."""
    if not isinstance(raw, dict):
        raise SwarmError(f"{source}: the manifest must be a mapping of fields, got {type(raw).__name__}")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        extra = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise SwarmError(f"{source}: {_describe(errors[0])}{extra}") from None
    return manifest


def load(path: str | Path) -> Manifest:
    """Read and validate a manifest YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SwarmError(f"manifest {path} not found: check the path given with --config") from None
    except OSError as e:
        raise SwarmError(f"manifest {path} cannot be read ({e.strerror}): check its permissions") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise SwarmError(f"{path}: not valid YAML{where} ({problem}): fix the syntax") from None
    manifest = from_dict(raw, str(path))
    manifest._source = path.resolve()
    return manifest


def canonical_json(manifest: Manifest) -> bytes:
    """Sorted keys, no whitespace: the same manifest gives the same bytes on every machine."""
    data = manifest.model_dump(mode="json")
    if data.get("shape") is None:  # a manifest without a shape keeps the run id it had before the field existed
        data.pop("shape", None)
    for key, default in (("background", "bf16"), ("optimizer", "adamw")):  # likewise without these inner fields
        if data["inner"].get(key) == default:
            data["inner"].pop(key)
    for section in ("payload", "pack"):  # likewise without these sections
        if data.get(section) is None:
            data.pop(section, None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def run_id(manifest: Manifest) -> str:
    """First 16 hex chars of sha256(canonical JSON): every DHT key starts with it."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()[:16]


def is_allowed(manifest: Manifest, public_key: bytes | str) -> bool:
    """Whether a record owner is an allowlisted validator; others' rankings are ignored."""
    return normalize_public_key(public_key) in manifest.validators
