"""An independent, deliberately simple per-token reference of MoELayer, for tests only.

It reads the layer's weights and recomputes the routing and the expert mix token by token
with plain Python loops and torch ops on single rows. It shares no code with mmoe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def act(h: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "swiglu":
        half = h.shape[-1] // 2
        return F.silu(h[..., :half]) * h[..., half:]
    return F.gelu(h)


def ffn(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, activation: str) -> torch.Tensor:
    return act(x @ w_in, activation) @ w_out


def token_pairs(layer, xt: torch.Tensor, num_samples: int) -> list[tuple[int, int, torch.Tensor, float]]:
    """(token, expert, weight, priority) for every computed pair, before capacity."""
    kind = layer.router.kind
    W = layer.router.weight
    E, k = layer.num_experts, layer.top_k
    T = xt.shape[0]
    pairs = []
    if kind == "expert_choice":
        cf = layer.capacity_factor or 1.0
        C = min(T, math.ceil(cf * k * T / E))
        probs = torch.stack([torch.softmax(W @ xt[t], 0) for t in range(T)]) if T else torch.zeros(0, E)
        for e in range(E):
            col = probs[:, e]
            order = sorted(range(T), key=lambda t: -float(col[t]))[:C]
            pairs += [(t, e, probs[t, e], float(probs[t, e])) for t in order]
        return pairs
    if kind == "nested":
        G = layer.router.groups
        per_group = E // G
        per = T // num_samples if num_samples else 0
        for s in range(num_samples):
            rows = xt[s * per:(s + 1) * per]
            pooled = rows.mean(0) if per else torch.zeros(xt.shape[1])
            gp = torch.softmax(layer.router.group_weight @ pooled, 0)
            g = max(range(G), key=lambda i: float(gp[i]))
            routed = list(range(g * per_group, (g + 1) * per_group - 1))
            shared = (g + 1) * per_group - 1
            for t in range(s * per, (s + 1) * per):
                p = torch.softmax(torch.stack([W[e] @ xt[t] for e in routed]), 0)
                order = sorted(range(len(routed)), key=lambda i: -float(p[i]))[:k]
                pairs += [(t, routed[i], gp[g] * p[i], float(gp[g] * p[i])) for i in order]
                pairs.append((t, shared, gp[g], float(gp[g])))
        return pairs
    if kind == "sample":
        per = T // num_samples if num_samples else 0
        for s in range(num_samples):
            rows = xt[s * per:(s + 1) * per]
            pooled = rows.mean(0) if per else torch.zeros(xt.shape[1])
            p = torch.softmax(W @ pooled, 0)
            top = sorted(range(E), key=lambda e: -float(p[e]))[:k]
            w = p[top]
            if layer.router.renormalize:
                w = w / w.sum()
            for t in range(s * per, (s + 1) * per):
                pairs += [(t, e, w[j], float(w[j])) for j, e in enumerate(top)]
        return pairs
    for t in range(T):
        logit = W @ xt[t]
        if kind == "sigmoid":
            s = torch.sigmoid(logit)
            select = s + layer.router.bias
        else:
            s = torch.softmax(logit, 0)
            select = s
        top = sorted(range(E), key=lambda e: -float(select[e]))[:k]
        w = s[top]
        if getattr(layer.router, "renormalize", False):
            w = w / w.sum()
        if kind == "beam":
            m = torch.sigmoid(layer.router.mask_weight @ xt[t] + layer.router.mask_bias)
            for j, e in enumerate(top):
                if j == 0 or float(m[e]) > 0.5:
                    # straight-through: value of the hard mask (1), gradient of the soft one
                    pairs.append((t, e, w[j] * (1 + m[e] - m[e].detach()), float(w[j])))
            continue
        pairs += [(t, e, w[j], float(w[j])) for j, e in enumerate(top)]
    return pairs


def macs_token_value(probs: list[float]) -> float:
    """MACS token value ``1 + (1 - H(p) / log E)``: 2 for a one-hot row, 1 for a uniform one."""
    E = len(probs)
    if E == 1:
        return 2.0
    entropy = 0.0
    for p in probs:
        q = max(float(p), 1e-12)  # a zero probability adds (almost) nothing, as 0 log 0 = 0
        entropy -= q * math.log(q)
    return 2.0 - entropy / math.log(E)


def macs_keep(pairs: list[tuple[int, int, float]], modality: list[int], token_probs: list[list[float]],
              num_experts: int, capacity: int) -> set[int]:
    """Indices of the pairs MACS keeps, written from the rule in words (mmoe/capacity.py docstring).

    Args:
        pairs: ``(token, expert, gate)`` per pair; an expert ``>= num_experts`` is a pruned pair.
        modality: modality id per token.
        token_probs: routing distribution per token (E floats).
        num_experts: E.
        capacity: pairs each expert admits.
    """
    value = [macs_token_value(p) for p in token_probs]
    kept: set[int] = set()
    for e in range(num_experts):
        mine = [i for i, (_, ex, _) in enumerate(pairs) if ex == e]
        key: dict[int, float] = {}
        for m in sorted({modality[pairs[i][0]] for i in mine}):
            group = [i for i in mine if modality[pairs[i][0]] == m]
            load = sum(value[pairs[i][0]] for i in group)  # entropy-weighted load of m at e
            # best pair value v_t * gate first; equal values: the earlier pair first
            group.sort(key=lambda i: (-value[pairs[i][0]] * float(pairs[i][2]), i))
            for rank, i in enumerate(group):
                key[i] = (rank + 1) / load
        kept.update(sorted(mine, key=lambda i: (key[i], i))[:capacity])
    return kept


def apply_capacity(pairs, num_experts: int, capacity: int | None):
    """Keep, per expert, the ``capacity`` pairs of highest priority (ties: earlier pair first)."""
    if capacity is None:
        return pairs, 0
    kept, dropped = [], 0
    for e in range(num_experts):
        mine = [(i, p) for i, p in enumerate(pairs) if p[1] == e]
        mine.sort(key=lambda ip: (-ip[1][3], ip[0]))
        kept += [p for _, p in mine[:capacity]]
        dropped += max(0, len(mine) - capacity)
    return kept, dropped


def naive_forward(layer, x: torch.Tensor, modality: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Output of ``layer(x, modality)`` and the number of dropped pairs; capacity is static, or MACS
    (:func:`macs_keep`) when ``modality`` is given and ``layer.capacity_mode == "macs"``."""
    shape = x.shape
    xt = x.reshape(-1, shape[-1])
    T, E = xt.shape[0], layer.num_experts
    num_samples = math.prod(shape[:-2]) if x.ndim >= 3 else 1
    w_in, w_out, a = layer.experts.w_in, layer.experts.w_out, layer.activation
    if layer.router.kind == "soft":
        y = soft_forward(layer, x.reshape(num_samples, -1, shape[-1])).reshape(-1, shape[-1])
        dropped = 0
    else:
        cap = None
        if layer.capacity_factor is not None and layer.router.kind != "expert_choice":
            cap = math.ceil(layer.capacity_factor * layer.top_k * T / E)
        pairs = token_pairs(layer, xt, num_samples)
        if cap is not None and modality is not None and layer.capacity_mode == "macs_paper":
            if layer.router.kind != "softmax":
                raise NotImplementedError("naive paper MACS: the softmax router's token distribution only")
            probs = [torch.softmax(layer.router.weight @ xt[t], 0).tolist() for t in range(T)]
            keep, _ = paper_macs_keep([(t, e, float(w)) for t, e, w, _ in pairs], modality.reshape(-1).tolist(),
                                      probs, E, layer.top_k, layer.capacity_factor)
            pairs, dropped = [p for i, p in enumerate(pairs) if i in keep], len(pairs) - len(keep)
        elif cap is not None and modality is not None and layer.capacity_mode == "macs":
            if layer.router.kind != "softmax":
                raise NotImplementedError("naive MACS: the softmax router's token distribution only")
            probs = [torch.softmax(layer.router.weight @ xt[t], 0).tolist() for t in range(T)]
            keep = macs_keep([(t, e, w) for t, e, w, _ in pairs], modality.reshape(-1).tolist(), probs, E, cap)
            pairs, dropped = [p for i, p in enumerate(pairs) if i in keep], len(pairs) - len(keep)
        else:
            pairs, dropped = apply_capacity(pairs, E, cap)
        rows = [torch.zeros(shape[-1]) for _ in range(T)]
        for t, e, w, _ in pairs:
            rows[t] = rows[t] + w * ffn(xt[t], w_in[e], w_out[e], a)
        y = torch.stack(rows) if T else xt * 0
    if layer.shared_experts is not None:
        sh = layer.shared_experts
        y = y + sum(ffn(xt, sh.w_in[s], sh.w_out[s], a) for s in range(sh.num_experts))
    return y.reshape(shape), dropped


def soft_forward(layer, x: torch.Tensor) -> torch.Tensor:
    B, N, D = x.shape
    E, S = layer.num_experts, layer.router.slots
    W = layer.router.weight
    w_in, w_out, a = layer.experts.w_in, layer.experts.w_out, layer.activation
    outs = []
    for b in range(B):
        logits = x[b] @ W.t()  # [N, E*S]
        slot_out = []
        for s in range(E * S):
            d = torch.softmax(logits[:, s], 0)
            slot_in = (d.unsqueeze(1) * x[b]).sum(0)
            slot_out.append(ffn(slot_in, w_in[s // S], w_out[s // S], a))
        slot_out = torch.stack(slot_out)
        outs.append(torch.stack([torch.softmax(logits[n], 0) @ slot_out for n in range(N)]) if N else x[b] * 0)
    return torch.stack(outs)


def paper_macs_keep(pairs: list[tuple[int, int, float]], modality: list[int], token_probs: list[list[float]],
                    num_experts: int, top_k: int, capacity_factor: float) -> tuple[set[int], int]:
    """Indices of the pairs paper MACS keeps and its capacity, from the rule in words
    (mmoe/capacity.py docstring): the majority modality is visual (ties: lowest id); capacity
    ``ceil(cf*k*T_v/E) + ceil(k*(T-T_v)/E)``; per expert text pairs first by gate, then visual
    pairs by token value x gate; equal keys keep the earlier pair; experts >= E are pruned."""
    T = len(modality)
    count: dict[int, int] = {}
    for m in modality:
        count[m] = count.get(m, 0) + 1
    visual = min(count, key=lambda m: (-count[m], m)) if count else 0
    t_visual = count.get(visual, 0)
    capacity = math.ceil(capacity_factor * top_k * t_visual / num_experts) + \
        math.ceil(top_k * (T - t_visual) / num_experts)
    value = [macs_token_value(p) for p in token_probs]
    kept: set[int] = set()
    for e in range(num_experts):
        mine = [i for i, (_, ex, _) in enumerate(pairs) if ex == e]
        text = sorted((i for i in mine if modality[pairs[i][0]] != visual), key=lambda i: (-pairs[i][2], i))
        seen = sorted((i for i in mine if modality[pairs[i][0]] == visual),
                      key=lambda i: (-value[pairs[i][0]] * pairs[i][2], i))
        kept.update((text + seen)[:capacity])
    return kept, capacity


def random_pairs(gen: torch.Generator, T: int, E: int, k: int, M: int, pruned: bool,
                 skew: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Top-k pairs of random distributions; some distributions sharp, some flat; ``pruned``: some
    pairs point at expert E (computed by nobody, as BEAM's pruned pairs); ``skew``: the share of
    tokens moved to modality ``M - 1`` (a majority modality that is not always id 0).
    Returns ``pair_token, pair_expert, gate, modality, probs``."""
    sharp = torch.rand(T, 1, generator=gen) * 4  # sharp rows, not saturated in float32 (no exact ties)
    probs = torch.softmax(torch.randn(T, E, generator=gen) * sharp, dim=-1)
    top = probs.topk(k, dim=-1)
    pair_token = torch.arange(T).repeat_interleave(k)
    pair_expert = top.indices.reshape(-1)
    if pruned and pair_expert.numel():
        pair_expert = torch.where(torch.rand(pair_expert.shape, generator=gen) < 0.2, E, pair_expert)
    modality = torch.randint(0, M, (T,), generator=gen)
    if skew:
        modality = torch.where(torch.rand(T, generator=gen) < skew, M - 1, modality)
    return pair_token, pair_expert, top.values.reshape(-1), modality, probs
