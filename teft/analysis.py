"""Is routing specialised? Compare per-domain routing profiles, overlap of expert sets, and how well a
token's routing predicts its domain. Run on a trained model and on a random-init control of the same shape.
"""

from __future__ import annotations

import torch
from torch import nn

from teft.model import MoELayout
from teft.routing import RoutingProfile, RoutingRecorder, route_forward
from teft.selection import select_experts


@torch.no_grad()
def token_routes(model: nn.Module, layout: MoELayout, blocks: torch.Tensor, batch_size: int = 8,
                 progress: bool = False) -> tuple[RoutingProfile, torch.Tensor]:
    """Routing profile plus each token's chosen experts per layer: indices [tokens, layers, top_k]."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    model.eval()
    with RoutingRecorder(model, layout, keep_tokens=True) as rec:
        for start in tqdm(range(0, len(blocks), batch_size), disable=not progress, desc="routing", unit="batch"):
            batch = blocks[start:start + batch_size].to(device)
            route_forward(model, batch)
            rec.tokens += batch.numel()
    per_layer = [torch.cat(chunks) for chunks in rec.per_token]
    return rec.profile(), torch.stack(per_layer, dim=1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen-Shannon divergence in bits (0 = same routing, 1 = disjoint)."""
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        mask = a > 0
        return float((a[mask] * (a[mask] / b[mask]).log2()).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def domain_accuracy(routes: dict[str, torch.Tensor], num_experts: int, seed: int = 0,
                    per_domain: int = 4000) -> tuple[float, list[float]]:
    """Naive-Bayes accuracy of guessing a token's domain from its experts (balanced; chance = 1/domains).

    Trained on one half of each domain's tokens, tested on the other half; returns the accuracy with
    all layers together and per layer.
    """
    g = torch.Generator().manual_seed(seed)
    domains = list(routes)
    train, test = {}, {}
    for d in domains:
        r = routes[d][torch.randperm(len(routes[d]), generator=g)[: 2 * per_domain]]
        half = len(r) // 2
        train[d], test[d] = r[:half], r[half:]
    n_layers = next(iter(routes.values())).shape[1]
    # log P(expert | domain, layer), Laplace smoothed
    logp = torch.zeros(len(domains), n_layers, num_experts, dtype=torch.float64)
    for i, d in enumerate(domains):
        for layer in range(n_layers):
            counts = torch.bincount(train[d][:, layer].reshape(-1), minlength=num_experts).double() + 1.0
            logp[i, layer] = (counts / counts.sum()).log()
    xs = torch.cat([test[d] for d in domains])
    ys = torch.cat([torch.full((len(test[d]),), i) for i, d in enumerate(domains)])
    # score[token, domain, layer] = sum over the token's top-k experts of log P(e | domain, layer)
    scores = torch.stack([logp[i].gather(1, xs.permute(1, 0, 2).reshape(n_layers, -1)).reshape(
        n_layers, len(xs), -1).sum(-1).T for i in range(len(domains))], dim=1)
    overall = float((scores.sum(-1).argmax(1) == ys).double().mean())
    per_layer = [float((scores[:, :, layer].argmax(1) == ys).double().mean()) for layer in range(n_layers)]
    return overall, per_layer


def specialization(profiles: dict[str, RoutingProfile], routes: dict[str, torch.Tensor], layout: MoELayout,
                   target: str | None = None, top_p: float = 0.2, seed: int = 0) -> dict:
    """Per layer: JSD between domains, the share of other domains' routing carried by the target's
    top-p set, and domain-prediction accuracy from routing."""
    domains = list(profiles)
    target = target or ("math" if "math" in domains else domains[-1])
    chosen = select_experts(profiles[target], "esft-token", top_p=top_p)
    layers = profiles[target].layers
    jsd = {f"{a}|{b}": [js_divergence(profiles[a].counts[r], profiles[b].counts[r]) for r in range(len(layers))]
           for i, a in enumerate(domains) for b in domains[i + 1:]}
    share = {d: [float(profiles[d].share("token")[r, chosen[layer]].sum()) if chosen[layer] else 0.0
                 for r, layer in enumerate(layers)] for d in domains}
    overall, per_layer = domain_accuracy(routes, layout.num_experts, seed)
    loads = {d: [float(profiles[d].share("token")[r].min()) for r in range(len(layers))] for d in domains}
    return {"layers": layers, "target": target, "top_p": top_p, "domains": domains,
            "target_set_sizes": [len(chosen[layer]) for layer in layers],
            "jsd_bits": jsd, "target_set_share": share, "domain_accuracy": overall,
            "domain_accuracy_per_layer": per_layer, "chance_accuracy": 1.0 / len(domains),
            "min_expert_share": loads}


def specialization_table(report: dict) -> str:
    """The report as a few aligned tables for a terminal."""
    layers = report["layers"]
    head = "".join(f"{'L' + str(layer):>8}" for layer in layers)
    lines = ["", f"Jensen-Shannon divergence of routing (bits){'':4}{head}"]
    for pair, values in report["jsd_bits"].items():
        lines.append(f"  {pair:<45}" + "".join(f"{v:8.3f}" for v in values))
    lines.append(f"share of each domain's routing carried by {report['target']}'s top-p "
                 f"{report['top_p']} set (sizes {report['target_set_sizes']})")
    for domain, values in report["target_set_share"].items():
        lines.append(f"  {domain:<45}" + "".join(f"{v:8.3f}" for v in values))
    lines.append(f"domain accuracy from routing{'':19}" + "".join(
        f"{v:8.3f}" for v in report["domain_accuracy_per_layer"]))
    lines.append(f"  all layers together: {report['domain_accuracy']:.3f} (chance {report['chance_accuracy']:.3f})")
    worst = min(min(v) for v in report["min_expert_share"].values())
    lines.append(f"least-used expert's share of its layer's routing, any domain: {worst:.4f}")
    return "\n".join(lines)

