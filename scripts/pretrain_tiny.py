"""Pretrain the embedded default MoE (`--model tiny`) on general + code + legal text and a little math.

Math is 5% of the mix, on purpose: a model that never saw math has no expert for it, so ESFT's math
experts are simply the ones that route digits and punctuation for general text too, and fine-tuning them
drifted general text more than full fine-tuning did (measured with scripts/tradeoff.py). With a small
share the routers learn to send math context to a few experts while math gets the fewest tokens of any
domain, which is the situation TEFT is for: a capable base model under-trained on the target domain.

The architecture is DeepSeek-V3's (transformers class): fine-grained routed experts plus a shared
expert as the always-on hub, so routed experts are free to specialise. Load balance is enforced per
layer with DeepSeek-V3's auxiliary-loss-free bias: after every step each layer's
`e_score_correction_bias` moves each expert's selection bias towards equal load, which sees one layer's
imbalance (transformers' built-in aux loss sums counts over layers and does not). A tiny sequence-level
balance loss is not used.

Deterministic given the shipped corpora, the seed and torch's CPU kernels; what varies across machines is
only floating-point summation order in multi-threaded kernels (set --threads to pin it).

    python scripts/pretrain_tiny.py --steps 600 --threads 2 --out teft/assets/tiny-moe
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch

from teft.data import load_texts, make_byte_tokenizer, tokenize_blocks
from teft.routing import RoutingRecorder

PRETRAIN_DOMAINS = {"general": 0.43, "code": 0.38, "legal": 0.14, "math": 0.05}


def tiny_config(vocab_size: int, eos: int):
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        vocab_size=vocab_size, hidden_size=160, intermediate_size=320, moe_intermediate_size=48,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=32,
        n_shared_experts=2, num_experts_per_tok=4, first_k_dense_replace=0, n_group=1, topk_group=1,
        norm_topk_prob=True, routed_scaling_factor=1.0, q_lora_rank=64, kv_lora_rank=48,
        qk_rope_head_dim=16, qk_nope_head_dim=24, v_head_dim=32, max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, initializer_range=0.02,
    )


def parse_mix(text: str) -> dict[str, float]:
    """'general=0.45,code=0.4' -> {'general': 0.45, 'code': 0.4}."""
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        try:
            mix[name.strip()] = float(weight)
        except ValueError:
            raise SystemExit(f"--mix: '{part}' is not DOMAIN=WEIGHT; "
                             "write e.g. general=0.45,code=0.4,math=0.05") from None
    return mix


def domain_blocks(tokenizer, domains, block: int, split: str) -> dict[str, torch.Tensor]:
    return {d: tokenize_blocks(tokenizer, load_texts(d, split=split), block) for d in domains}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step (default 32)")
    parser.add_argument("--block-size", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default 3e-3)")
    parser.add_argument("--bias-rate", type=float, default=2e-3,
                        help="per-step change of the balancing bias (DeepSeek-V3 gamma; default 2e-3)")
    parser.add_argument("--seed", type=int, default=1234, help="seed (default 1234)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--mix", default=",".join(f"{d}={w}" for d, w in PRETRAIN_DOMAINS.items()),
                        help="pretraining domains and their sampling weights (default %(default)s)")
    parser.add_argument("--out", default="teft/assets/tiny-moe", help="output directory")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    from transformers import AutoModelForCausalLM

    from teft.model import discover_layout

    tokenizer = make_byte_tokenizer()
    mix = parse_mix(args.mix)
    train = domain_blocks(tokenizer, mix, args.block_size, "train")
    val = domain_blocks(tokenizer, ["general", "code", "legal", "math"], args.block_size, "validation")
    print({d: tuple(b.shape) for d, b in train.items()}, flush=True)
    config = tiny_config(len(tokenizer), tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config)
    layout = discover_layout(model)
    print(f"parameters: {layout.param_counts}", flush=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(args.steps // 20, 1)
    domains, weights = list(mix), list(mix.values())
    routers = [model.get_submodule(m.router) for m in layout.layers]
    start = time.time()
    model.train()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        picks = [rng.choices(domains, weights)[0] for _ in range(args.batch_size)]
        batch = torch.stack([train[d][rng.randrange(len(train[d]))] for d in picks])
        with RoutingRecorder(model, layout) as rec:
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # per-layer, auxiliary-loss-free balancing
            for row, router in enumerate(routers):
                load = rec.counts[row].float()
                router.e_score_correction_bias += args.bias_rate * torch.sign(load.mean() - load)
        if step % 50 == 0 or step == args.steps - 1:
            tps = (step + 1) * batch.numel() / (time.time() - start)
            print(f"step {step:5d} loss {loss.item():.4f} lr {lr:.2e} {tps:,.0f} tok/s", flush=True)
    model.eval()
    report = {"steps": args.steps, "tokens": args.steps * args.batch_size * args.block_size,
              "seconds": round(time.time() - start, 1), "seed": args.seed, "domains": mix}
    with torch.no_grad():
        for domain, blocks in val.items():
            sample = blocks[:64]
            loss = model(input_ids=sample, labels=sample, use_cache=False).loss.item()
            report[f"val_loss_{domain}"] = round(loss, 4)
            report[f"val_ppl_{domain}"] = round(math.exp(loss), 3)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
