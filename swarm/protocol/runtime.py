"""Everything a peer derives from the manifest before it touches the network: model, map, data, Phi_0.

Each peer computes these the same way from the same files, and checks the model hash the manifest pins,
so the run id stands for one model, one expert map, one data spec and one set of hyper-parameters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from swarm.errors import SwarmError
from swarm.protocol.manifest import Manifest
from teft.codec import DTYPE_CODECS, Codec, CodecSpec
from teft.data import load_texts, tokenize_blocks
from teft.errors import TeftError
from teft.model import BUILTIN_MODELS, MoELayout, discover_layout, load_model, model_hash
from teft.outer import OuterConfig
from teft.selection import ExpertMap
from teft.state import DTYPES, ExpertState, expected_shapes, extract_state
from teft.train import TrainConfig, cycle_config

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The loaded model and everything the protocol needs to train, score and reduce."""

    manifest: Manifest
    model: torch.nn.Module
    tokenizer: object
    layout: MoELayout
    expert_map: ExpertMap
    initial_state: ExpertState  # Phi_0, extracted from the base model
    payload_dtype: torch.dtype
    payload_size: int  # exact bytes of a valid submission
    codec: Codec  # how a submission's pseudo-gradient is encoded, and decoded by every peer
    train_blocks: torch.Tensor
    validation_blocks: torch.Tensor
    general_blocks: torch.Tensor | None
    private_blocks: torch.Tensor | None = None  # a validator's own held-out data: what it scores on
    # what reports, baselines and plots measure: blocks no peer role reads (report_data)
    report_blocks: torch.Tensor | None = None
    report_general_blocks: torch.Tensor | None = None
    report_source: str = ""

    @property
    def checkpoint_limit(self) -> int:
        """The most bytes a holder may send for an outer checkpoint (fp32 state and momentum, teft.outer
        checkpoint_bytes), twice what one takes: it follows from the state, never from the payload codec (an
        int8 payload is a quarter of the fp32 state, and a limit of 4 payloads refused every checkpoint)."""
        return 4 * 4 * sum(t.numel() for t in self.initial_state.values()) + 65536

    @property
    def inner(self) -> TrainConfig:
        spec = self.manifest.inner
        return TrainConfig(steps=spec.steps, lr=spec.lr, weight_decay=spec.weight_decay,
                           warmup_steps=spec.warmup_steps, grad_clip=spec.grad_clip or 0.0,
                           gradient_checkpointing=spec.gradient_checkpointing, optimizer=spec.optimizer)

    def inner_for(self, cycle: int) -> TrainConfig:
        """A miner's inner config in `cycle`: seeded by it and, with schedule 'run', at its place in the run's
        schedule; it depends on the cycle number alone, so restarted and late miners agree."""
        spec = self.manifest.inner
        return cycle_config(self.inner, cycle, spec.schedule, spec.schedule_cycles)

    @property
    def outer(self) -> OuterConfig:
        spec = self.manifest.outer
        return OuterConfig(lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)


REPORT_BLOCKS = 32  # blocks every report figure is measured on


def report_batches(blocks: torch.Tensor | None) -> list[torch.Tensor]:
    """The first REPORT_BLOCKS blocks in batches of 8: a fixed set, so curves compare point for point."""
    if blocks is None:
        return []
    return [blocks[i:i + 8] for i in range(0, min(len(blocks), REPORT_BLOCKS), 8)]


def report_sets(rt: Runtime) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(target, general) batches that validators' reports and every baseline are measured on: the data's test
    split (report_data), never a split a miner may train on."""
    return report_batches(rt.report_blocks), report_batches(rt.report_general_blocks)


def report_data(manifest: Manifest, tokenizer, validation: torch.Tensor,
                general: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, str]:
    """(report target blocks, report general blocks, validation blocks, where the report blocks come from).

    Miners train on the train split (val-overfit on the public validation split) and validators score on
    private held-out data and check the validation split, so the report measures the test split, which no peer
    role reads. Data named by files instead of splits has no test split: then the last REPORT_BLOCKS blocks of
    the validation data are carved off for the report, and the validation blocks every role sees are the rest.
    """
    from teft.data import has_split

    data = manifest.data
    cap = REPORT_BLOCKS * data.seq_len

    def test_split(spec: str) -> torch.Tensor:
        return tokenize_blocks(tokenizer, load_texts(_data_spec(manifest, spec), "test"), data.seq_len, cap)

    if has_split(_data_spec(manifest, data.validation), "test"):
        target, source = test_split(data.validation), f"the test split of {data.validation}"
    elif len(validation) > 2 * REPORT_BLOCKS:
        target, validation = validation[-REPORT_BLOCKS:], validation[:-REPORT_BLOCKS]
        source = (f"the last {REPORT_BLOCKS} blocks of {data.validation} (it has no test split; no peer role reads "
                  "them)")
    else:  # too small to spare them: say so rather than refuse to run (the report is for people, not the protocol)
        target = validation
        source = (f"the validation data {data.validation} itself: it has no test split and only {len(validation)} "
                  f"blocks, too few to set {REPORT_BLOCKS} aside, so a miner may have trained on them")
        logger.warning("reports measure %s", source)
    general_report = None
    if general is not None:
        spec = data.general_validation
        general_report = test_split(spec) if has_split(_data_spec(manifest, spec), "test") else general
        source += f"; general: {'the test split of ' + spec if general_report is not general else spec}"
    return target, general_report, validation, source


def _data_spec(manifest: Manifest, value: str) -> str:
    """A corpus name stays a name; a relative path is relative to the manifest file."""
    from teft.data import BUILTIN_CORPORA

    return value if value in BUILTIN_CORPORA else str(manifest.resolve(value))


def base_model_path(manifest: Manifest) -> str:
    """The base model as the manifest names it: a built-in name, or a path relative to the manifest file."""
    path = manifest.base_model.path
    return path if path in BUILTIN_MODELS else str(manifest.resolve(path))


def check_pack(manifest: Manifest, data: bytes) -> dict:
    """The pack's metadata, once it is the one this run pins and was built from its base model and map."""
    from teft.files import content_hash

    spec = manifest.pack
    if spec is None:
        raise SwarmError("this run pins no miner pack: drop --pack, or launch the run with --pack FILE")
    if len(data) != spec.bytes or content_hash(data) != spec.sha256:
        raise SwarmError(f"the pack ({len(data)} bytes, sha256 {content_hash(data)[:12]}) is not the one this run "
                         f"pins ({spec.bytes} bytes, {spec.sha256[:12]}): use the pack of this run")
    return pack_metadata(manifest, data)


def pack_metadata(manifest: Manifest, data: bytes) -> dict:
    """The pack's metadata, once it was built from the run's base model and expert map with its background. The
    bytes' hash is check_pack's: callers that hold bytes already checked by hash (read from the store, fetched,
    hashed into the manifest) skip a pass over what is GBs at real scale."""
    from teft.pack import pack_info

    spec = manifest.pack
    if spec is None:
        raise SwarmError("this run pins no miner pack: drop --pack, or launch the run with --pack FILE")
    try:
        info = pack_info(data)
    except TeftError as err:
        raise SwarmError(str(err)) from None
    emap = ExpertMap.load(manifest.resolve(manifest.expert_map.path))
    if manifest.base_model.sha256 and info.get("model_hash") != manifest.base_model.sha256:
        raise SwarmError("the run's pack was built from another base model than the manifest pins: rebuild it")
    if info.get("expert_map") != emap.to_json() or info.get("background") != spec.background:
        raise SwarmError("the run's pack holds another expert map or background than the manifest names: rebuild "
                         "it with python -m teft pack")
    return info


def _load_base(manifest: Manifest, device: str, dtype: str | None, background: str):
    """(model, tokenizer, layout, expert map) from the manifest's base model, its hash checked first."""
    path = base_model_path(manifest)
    if manifest.base_model.sha256:
        found = model_hash(path)
        if found != manifest.base_model.sha256:
            raise SwarmError(f"base model {path} hashes to {found[:12]}, the manifest pins "
                             f"{manifest.base_model.sha256[:12]}: use the exact checkpoint of this run")
    if background != "bf16":  # a light miner: the map first, since its experts stay at full precision
        from teft.light import load_light_model

        if not manifest.expert_map.path:
            raise SwarmError(f"a {background} background needs the manifest's expert_map.path: a light miner "
                             "cannot route the full model to select experts; use --background bf16")
        expert_map = ExpertMap.load(manifest.resolve(manifest.expert_map.path))
        model, tokenizer, layout = load_light_model(path, expert_map, background,
                                                    dtype=dtype or manifest.base_model.dtype, device=device)
        return model, tokenizer, layout, expert_map
    model, tokenizer = load_model(path, dtype=dtype or manifest.base_model.dtype, device=device)
    layout = discover_layout(model)
    if manifest.expert_map.path:
        expert_map = ExpertMap.load(manifest.resolve(manifest.expert_map.path))
    else:
        expert_map = _select_from_spec(manifest, model, tokenizer, layout)
    return model, tokenizer, layout, expert_map


def load_runtime(manifest: Manifest, data_override: str | None = None, device: str = "cpu",
                 validation_data: str | None = None, dtype: str | None = None,
                 background: str = "bf16", pack: bytes | None = None) -> Runtime:
    """Load the model, check its hash, build the expert map and the data blocks; one-line errors.

    validation_data: a validator's private held-out data; Proof-of-Loss subsets are drawn from it, so
    no miner can have trained on what it is scored on. background: how a miner holds the experts it does not
    train (teft.light); a validator always passes bf16, so it scores on the full model in its own dtype.
    pack: the run's miner pack, its bytes already checked against the pinned hash (swarm.peer reads, loads or fetches
    it by hash), its metadata checked here: a light miner's model without the base model.
    """
    if validation_data is not None:
        from teft.data import check_data

        try:
            check_data(validation_data, "validation")
        except TeftError as err:
            raise SwarmError(f"--validation-data: {err}") from None
    try:
        if pack is not None:  # a light miner without the base model: everything it holds comes from the pack
            from teft.pack import load_pack

            pack_metadata(manifest, pack)
            model, tokenizer, layout, expert_map = load_pack(pack, device)
            if tokenizer is None:
                raise SwarmError("the run's pack carries no tokenizer files: rebuild it from a checkpoint with them")
        else:
            model, tokenizer, layout, expert_map = _load_base(manifest, device, dtype, background)
        expert_map.check_model(layout, manifest.base_model.sha256)
        data = manifest.data

        def blocks(spec: str, split: str, max_tokens: int | None) -> torch.Tensor:
            return tokenize_blocks(tokenizer, load_texts(spec, split), data.seq_len, max_tokens=max_tokens)

        train = blocks(data_override or _data_spec(manifest, data.train), "train", data.train_tokens)
        val = blocks(_data_spec(manifest, data.validation), "validation", data.validation_tokens)
        general = None
        if data.general_validation:
            general = blocks(_data_spec(manifest, data.general_validation), "validation", data.validation_tokens)
        private = blocks(validation_data, "validation", data.validation_tokens) if validation_data else None
        report, report_general, val, report_source = report_data(manifest, tokenizer, val, general)
    except TeftError as err:
        raise SwarmError(str(err)) from None
    dtype = DTYPES[manifest.payload_dtype]
    initial = extract_state(model, layout, expert_map)
    if private is not None and len(private) < data.validation_blocks:
        raise SwarmError(f"--validation-data {validation_data} gives {len(private)} blocks of {data.seq_len} tokens, "
                         f"fewer than the {data.validation_blocks} a Proof-of-Loss subset takes: bring more text")
    codec = Codec(codec_spec(manifest), expected_shapes(layout, expert_map))
    return Runtime(manifest, model, tokenizer, layout, expert_map, initial, dtype, codec.size, codec, train, val,
                   general, private, report, report_general, report_source)


def codec_spec(manifest: Manifest) -> CodecSpec:
    """The run's payload codec: the manifest's `payload` section, else the dense codec of its payload_dtype."""
    if manifest.payload is None:
        return CodecSpec(DTYPE_CODECS[manifest.payload_dtype])
    return CodecSpec(**manifest.payload.model_dump())


def _select_from_spec(manifest: Manifest, model, tokenizer, layout) -> ExpertMap:
    """Compute the map from `expert_map.spec` (every peer computes the same on the same files)."""
    from teft.routing import routing_profile
    from teft.selection import select_experts

    spec = dict(manifest.expert_map.spec or {})
    tokens = int(spec.get("tokens", 100_000))

    def profile(name):
        blocks = tokenize_blocks(tokenizer, load_texts(_data_spec(manifest, name), "train"), manifest.data.seq_len,
                                 tokens)
        return routing_profile(model, layout, blocks)

    general = profile(spec["general_data"]) if spec.get("method") == "des" else None
    layers = select_experts(profile(spec["data"]), spec.get("method", "esft-token"), spec.get("top_k"),
                            spec.get("top_p"), general)
    return ExpertMap(layers, layout.num_experts, spec.get("method", "esft-token"),
                     {k: spec[k] for k in ("top_k", "top_p") if k in spec}, tokens)


def describe(runtime: Runtime) -> str:
    layers = len(runtime.layout.layers) * runtime.layout.num_experts
    return (f"{runtime.expert_map.count}/{layers} experts selected, payload {runtime.payload_size:,d} bytes "
            f"({runtime.codec.spec.label()}), {len(runtime.train_blocks)} train / "
            f"{len(runtime.validation_blocks)} validation blocks")

