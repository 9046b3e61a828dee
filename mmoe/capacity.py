"""Expert capacity and modality-aware capacity scaling (MACS).

Both produce a *priority* per pair; :func:`mmoe.kernels.reference.dispatch_metadata` keeps,
in each expert, the ``C`` pairs of highest priority and drops the rest.

Static capacity (the baseline): priority is the pair's gate weight, so the least confident
assignments overflow first, whatever their modality.

MACS: with modality ids, the capacity of each expert is shared among modalities by
weighted fair queueing over the live mix at that expert:

* token value ``v_t = 1 + (1 - H(p_t) / log E)`` in ``[1, 2]``, where ``p_t`` is the token's
  routing distribution: confident tokens weigh up to twice as much as undecided ones;
* weighted load of modality ``m`` at expert ``e``: ``W[e, m] = sum of v_t`` over the pairs of
  modality ``m`` routed to ``e`` (the entropy-weighted load);
* inside each (expert, modality) group, pairs are ranked by pair value ``u = v_t * gate``,
  best first (rank ``r = 0, 1, ...``), and get the admission key ``(r + 1) / W[e, m]``;
* the expert admits the ``C`` pairs with the smallest keys (priority = ``-key``).

So while every modality still has demand, modality ``m`` receives about
``C * W[e, m] / sum_m' W[e, m']`` slots at expert ``e``, and capacity a modality does not use
flows to the others. Because ``v_t`` lies in ``[1, 2]``, a modality's share is at least half
its share of the demand: its kept fraction at an expert is at least half of the expert's
overall kept fraction ``C / D_e`` (up to one slot of rounding). The lowest-value pairs of each
modality are dropped first.

MACS with output value (``capacity_mode="macs_output"``, a study of the value rule): the same
sharing, with the pair value ``u = gate x ||expert output||`` (what the pair would add to the
residual stream) and ``v = 1 + u / max(u)`` in ``[1, 2]`` as the weight in the loads. It needs
every routed pair's expert output before deciding what to drop, so it costs the dropless expert
compute: it measures whether a better value estimate helps, it does not save compute.

Paper MACS (``capacity_mode="macs_paper"``, modality-aware capacity scaling as the MACS paper
describes it for vision-language models: many redundant visual tokens beside few decisive text
tokens). The *visual* modality is the live majority of the batch (the modality with the most
tokens; ties: the lowest id); every other modality is protected ("text"). With ``T_v`` visual
tokens of ``T``:

* capacity scaled by the live visual/text mix: ``C = ceil(cf * k * T_v / E) + ceil(k * (T - T_v) / E)``,
  i.e. the static (CAI-MoE) capacity ``cf * k * T / E`` applied to the visual share only, plus the
  balanced text load; with no text it is the static capacity;
* inside each expert, text pairs rank first (by gate weight), then visual pairs by the
  entropy-weighted value ``u = v_t * gate`` (``v_t`` the token value above); the expert admits
  the first ``C`` (one shared dispatch, as static and MACS).

So text pairs are dropped only when an expert's text demand alone exceeds ``C``, and the
visual pairs that go are the undecided, low-gate ones. Without modality ids (as every MACS mode)
it is static capacity. Under expert parallelism the per-modality counts are summed over the
ranks first, so capacity and drops equal the one-process layer's. The paper's exact formulas were not
available here; this is the rule as the project's issue 35 states it (entropy-weighted value on
visual tokens, capacity scaled by the live visual/text ratio, static CAI-MoE as the baseline).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mmoe.kernels.reference import activate


def expert_capacity(capacity_factor: float | None, top_k: int, num_tokens: int, num_experts: int) -> int | None:
    """``C = ceil(cf * k * T / E)``; ``None`` (dropless) when ``capacity_factor`` is None."""
    if capacity_factor is None:
        return None
    return math.ceil(capacity_factor * top_k * num_tokens / num_experts)


def token_value(token_probs: torch.Tensor) -> torch.Tensor:
    """``1 + (1 - H(p) / log E)`` per row of ``token_probs [T, E]``; 2 when E == 1."""
    E = token_probs.shape[-1]
    if E == 1:
        return torch.full(token_probs.shape[:-1], 2.0, device=token_probs.device)
    p = token_probs.float().clamp_min(1e-12)
    entropy = -(p * p.log()).sum(-1)
    return 2.0 - entropy / math.log(E)


def pair_output_value(x: torch.Tensor, pair_token: torch.Tensor, pair_expert: torch.Tensor,
                      pair_weight: torch.Tensor, experts: torch.nn.Module) -> torch.Tensor:
    """``gate x ||expert output||`` per pair for ``x [T, dim]`` and :class:`mmoe.experts.Experts`
    (pairs with expert index ``>= E`` get 0); computes every routed pair."""
    out = torch.zeros(pair_expert.shape[0], device=x.device, dtype=torch.float32)
    with torch.no_grad():
        for e in range(experts.num_experts):
            sel = (pair_expert == e).nonzero().flatten()
            if sel.numel():
                h = activate(x[pair_token[sel]] @ experts.w_in[e].to(x.dtype), experts.activation)
                out[sel] = (h @ experts.w_out[e].to(x.dtype)).float().norm(dim=-1)
    return out * pair_weight.detach().float()


def macs_priority(
    pair_token: torch.Tensor,
    pair_expert: torch.Tensor,
    pair_weight: torch.Tensor,
    modality: torch.Tensor,
    token_probs: torch.Tensor,
    num_experts: int,
    num_modalities: int,
    pair_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Priority per pair implementing MACS (see the module docstring). All on device.

    ``pair_value``: None for the entropy token value; else a non-negative value per pair
    (:func:`pair_output_value`) used as ``u``, with ``v = 1 + u / max(u)``."""
    if pair_value is None:
        v = token_value(token_probs)[pair_token]  # [P]
        u = v * pair_weight.detach().float()
    else:
        u = pair_value.float()
        v = 1.0 + u / u.max().clamp_min(1e-12) if u.numel() else u
    return fair_queue_priority(pair_expert, modality[pair_token], u, v, num_experts, num_modalities)


def fair_queue_priority(pair_expert: torch.Tensor, pair_modality: torch.Tensor, pair_u: torch.Tensor,
                        pair_v: torch.Tensor, num_experts: int, num_modalities: int) -> torch.Tensor:
    """The fair-queueing core of MACS, from per-pair values, shared by the local and the
    expert-parallel (gathered) decision: within each (expert, modality) group, pairs ranked by
    ``pair_u`` (descending) get key ``(rank + 1) / sum of the group's pair_v``; priority ``-key``.
    Pairs with expert ``num_experts`` (pruned) form their own groups."""
    E, M = num_experts, num_modalities
    P = pair_expert.numel()
    group = pair_expert.long() * M + pair_modality.long()
    load = torch.zeros((E + 1) * M, device=pair_v.device).index_add_(0, group, pair_v.float())
    by_value = torch.sort(pair_u, descending=True, stable=True).indices
    order = by_value[torch.sort(group[by_value], stable=True).indices]
    counts = torch.zeros((E + 1) * M, dtype=torch.long, device=pair_v.device)
    counts.index_add_(0, group, torch.ones_like(group))
    starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
    rank_sorted = torch.arange(P, device=pair_v.device) - starts[group[order]]
    rank = torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)
    return -((rank.float() + 1.0) / load[group].clamp_min(1e-12))


def paper_macs_capacity(capacity_factor: float, top_k: int, tokens_per_modality: Sequence[int],
                        num_experts: int) -> tuple[int, int]:
    """Paper MACS ``(C, visual modality id)`` from the live token count of each modality (see the
    module docstring): the visual modality is the majority (ties: lowest id),
    ``C = ceil(cf * k * T_v / E) + ceil(k * (T - T_v) / E)``."""
    counts = [int(c) for c in tokens_per_modality]
    if not counts or min(counts) < 0:
        raise ValueError(f"tokens_per_modality: expected one non-negative count per modality, got {counts}")
    visual = max(range(len(counts)), key=lambda m: (counts[m], -m))
    t_visual, t_text = counts[visual], sum(counts) - counts[visual]
    capacity = math.ceil(capacity_factor * top_k * t_visual / num_experts) + math.ceil(top_k * t_text / num_experts)
    return capacity, visual


def paper_macs_pair_priority(pair_modality: torch.Tensor, pair_value: torch.Tensor, pair_gate: torch.Tensor,
                             visual: int) -> torch.Tensor:
    """Paper MACS priority per pair, shared by the local and the expert-parallel (gathered)
    decision: visual pairs get ``u = pair_value * pair_gate`` (token value x gate); every other
    pair ranks above all of them, by its gate (``max(u) + 1 + gate``)."""
    gate = pair_gate.detach().float()
    u = pair_value.float() * gate
    offset = u.max() + 1.0 if u.numel() else u.new_ones(())
    return torch.where(pair_modality.long() == visual, u, offset + gate)


def paper_macs_priority(pair_token: torch.Tensor, pair_weight: torch.Tensor, modality: torch.Tensor,
                        token_probs: torch.Tensor, visual: int) -> torch.Tensor:
    """Paper MACS priority per pair from the layer's routing (see :func:`paper_macs_pair_priority`)."""
    return paper_macs_pair_priority(modality[pair_token], token_value(token_probs)[pair_token], pair_weight, visual)
