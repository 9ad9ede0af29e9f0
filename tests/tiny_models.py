"""Tiny random-weight MoE models built from the real transformers config classes of each architecture."""

from __future__ import annotations

import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

VOCAB = 64
_COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
               max_position_embeddings=64, eos_token_id=0, pad_token_id=0, bos_token_id=0)
_DEEPSEEK = dict(moe_intermediate_size=16, intermediate_size=48, num_key_value_heads=4, n_routed_experts=8,
                 n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=8,
                 qk_rope_head_dim=4, v_head_dim=8, qk_nope_head_dim=4, n_group=1, topk_group=1)

CONFIGS = {
    "qwen3_moe": ("Qwen3MoeConfig", dict(intermediate_size=48, moe_intermediate_size=16, num_key_value_heads=2,
                                         num_experts=8, num_experts_per_tok=2, head_dim=8)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(intermediate_size=48, moe_intermediate_size=16, num_key_value_heads=2,
                                         shared_expert_intermediate_size=32, num_experts=8, num_experts_per_tok=2)),
    "olmoe": ("OlmoeConfig", dict(intermediate_size=16, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2)),
    "mixtral": ("MixtralConfig", dict(intermediate_size=16, num_key_value_heads=2, num_local_experts=8,
                                      num_experts_per_tok=2)),
    "deepseek_v2": ("DeepseekV2Config", dict(_DEEPSEEK, q_lora_rank=None)),
    "deepseek_v3": ("DeepseekV3Config", dict(_DEEPSEEK, q_lora_rank=16)),
    "gpt_oss": ("GptOssConfig", dict(intermediate_size=16, num_key_value_heads=2, num_local_experts=8,
                                     num_experts_per_tok=2, head_dim=8)),
}
VISION_LANGUAGE = {"qwen3_vl_moe"}  # loaded with AutoModelForImageTextToText; TEFT trains its text tower
ARCHS = [*CONFIGS, *sorted(VISION_LANGUAGE), "per_expert"]  # every architecture build() makes
SHARED = {"qwen2_moe", "deepseek_v2", "deepseek_v3"}
MOE_LAYERS = {"deepseek_v2": [1], "deepseek_v3": [1]}  # first_k_dense_replace=1


def build(name: str, seed: int = 0, vocab_size: int = VOCAB) -> nn.Module:
    """A tiny random model of a real architecture; weights are scaled up so experts differ visibly."""
    if name == "per_expert":
        return PerExpertMoE(PerExpertConfig()).eval()
    if name == "qwen3_vl_moe":
        return _qwen3_vl_moe(seed, vocab_size)
    cls, extra = CONFIGS[name]
    config = getattr(transformers, cls)(**{**_COMMON, "vocab_size": vocab_size}, **extra)
    torch.manual_seed(seed)
    return _randomized(AutoModelForCausalLM.from_config(config))


def _randomized(model: nn.Module) -> nn.Module:
    """transformers 5 initialises fused experts lazily; give every matrix real values (from the set seed)."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.2)
    return model.eval()


def _qwen3_vl_moe(seed: int, vocab_size: int) -> nn.Module:
    from transformers import AutoModelForImageTextToText

    text = dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
                vocab_size=vocab_size, head_dim=8, rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1]})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=4,
                  temporal_patch_size=1, spatial_merge_size=1, deepstack_visual_indexes=[])
    torch.manual_seed(seed)
    return _randomized(AutoModelForImageTextToText.from_config(
        transformers.Qwen3VLMoeConfig(text_config=text, vision_config=vision)))


class PerExpertConfig(PretrainedConfig):
    """A remote-code-style MoE whose experts are separate modules in a ModuleList."""

    model_type = "teft_per_expert_test"

    def __init__(self, vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_experts=4,
                 num_experts_per_tok=2, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_experts = num_hidden_layers, num_experts
        self.num_experts_per_tok = num_experts_per_tok
        super().__init__(**kwargs)


class _Expert(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.up = nn.Linear(h, 2 * h, bias=False)
        self.down = nn.Linear(2 * h, h, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


class _Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.k = cfg.num_experts_per_tok
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(_Expert(cfg.hidden_size) for _ in range(cfg.num_experts))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        weights, idx = torch.softmax(self.gate(flat), -1).topk(self.k, -1)
        out = torch.zeros_like(flat)
        for slot in range(self.k):
            for e, expert in enumerate(self.experts):
                rows = idx[:, slot] == e
                if rows.any():
                    out[rows] += weights[rows, slot, None] * expert(flat[rows])
        return x + out.reshape(x.shape)


class _Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.mlp = _Block(cfg)


class _Inner(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class PerExpertMoE(PreTrainedModel):
    config_class = PerExpertConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = _Inner(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, labels=None, attention_mask=None, use_cache=None, **_):
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            h = layer.mlp(h)
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)
