"""Torch reference of the MoE hot path: routing top-k, dispatch metadata, grouped expert MLP.

These functions are the `torch` backend of :class:`mmoe.MoELayer` and the contract that the
Triton kernels in this package match. Everything is vectorized (no Python loop over experts)
and avoids host synchronisation: shapes depend only on input shapes, never on routing results.

Conventions shared with the Triton kernels
------------------------------------------
* A *pair* is one (token, expert) assignment; a top-k router yields ``P = T * k`` pairs, pair
  ``p`` belonging to token ``p // k``.
* ``pair_expert`` holds expert ids in ``[0, E]``; the value ``E`` marks a pair that is not
  computed (pruned by a mask). Capacity drops are decided in :func:`dispatch_metadata`.
* Dispatch metadata orders pairs by expert; kept pairs of expert ``e`` occupy
  ``[offsets[e], offsets[e+1])`` of the sorted order, every dropped or invalid pair sits in
  ``[offsets[E], P)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Feature dims handed to torch's grouped GEMM must have 16-byte aligned strides.
_GROUPED_MM_ALIGN = 8


class TopK(NamedTuple):
    """Result of :func:`topk_routing`."""

    weights: torch.Tensor  # [T, k] gate weights (from unbiased scores)
    experts: torch.Tensor  # [T, k] int64 expert ids, best first
    scores: torch.Tensor  # [T, E] unbiased scores (softmax or sigmoid of the logits)
    counts: torch.Tensor  # [E] int64 number of pairs per expert (before capacity)


class Dispatch(NamedTuple):
    """Result of :func:`dispatch_metadata`."""

    sorted_pair: torch.Tensor  # [P] int64 pair index in expert order, dropped pairs last
    expert_offsets: torch.Tensor  # [E+1] int64 start of each expert's kept pairs; [E] = kept total
    keep: torch.Tensor  # [P] bool, in pair order: computed (not dropped, not invalid)
    position: torch.Tensor  # [P] int64, in pair order: rank inside its expert by priority


def topk_routing(
    logits: torch.Tensor,
    k: int,
    score: str = "softmax",
    bias: torch.Tensor | None = None,
    renormalize: bool = False,
) -> TopK:
    """Top-k expert choice per token.

    ``scores = softmax(logits)`` or ``sigmoid(logits)`` in fp32. Selection ranks
    ``scores + bias`` (bias only steers the choice); the gate weights are the unbiased
    scores of the chosen experts, divided by their sum when ``renormalize``.
    """
    if score == "softmax":
        scores = torch.softmax(logits.float(), dim=-1)
    elif score == "sigmoid":
        scores = torch.sigmoid(logits.float())
    else:
        raise ValueError(f"score: expected 'softmax' or 'sigmoid', got {score!r}")
    select = scores if bias is None else scores + bias.float()
    experts = torch.topk(select, k, dim=-1).indices
    weights = scores.gather(-1, experts)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-20)
    counts = expert_counts(experts.reshape(-1), logits.shape[-1])
    return TopK(weights, experts, scores, counts)


def expert_counts(pair_expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Number of pairs per expert ``[E]``; ids equal to ``num_experts`` are ignored."""
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=pair_expert.device)
    counts.scatter_add_(0, pair_expert.long(), torch.ones_like(pair_expert, dtype=torch.long))
    return counts[:num_experts]


def dispatch_metadata(
    pair_expert: torch.Tensor,
    priority: torch.Tensor,
    num_experts: int,
    capacity: int | None,
) -> Dispatch:
    """Sort pairs by expert and apply capacity.

    Inside an expert, pairs are ranked by ``priority`` (higher first, ties by pair index);
    with ``capacity`` C the pairs ranked C or later are dropped. ``capacity=None`` keeps
    every valid pair (dropless).
    """
    P = pair_expert.numel()
    E = num_experts
    device = pair_expert.device
    pair_expert = pair_expert.long()
    by_priority = torch.sort(priority.float(), descending=True, stable=True).indices
    order = by_priority[torch.sort(pair_expert[by_priority], stable=True).indices]
    sorted_expert = pair_expert[order]
    counts = expert_counts(sorted_expert, E)
    starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # [E+1]
    rank = torch.arange(P, device=device) - starts[sorted_expert]  # rank inside expert
    keep_sorted = sorted_expert < E
    if capacity is not None:
        keep_sorted &= rank < capacity
    # Kept pairs stay contiguous per expert; dropped ones move behind all experts.
    final = torch.sort(torch.where(keep_sorted, sorted_expert, E), stable=True).indices
    sorted_pair = order[final]
    kept = expert_counts(torch.where(keep_sorted, sorted_expert, E), E)
    offsets = torch.cat([kept.new_zeros(1), kept.cumsum(0)])
    keep = torch.empty_like(keep_sorted).scatter_(0, order, keep_sorted)
    position = torch.empty_like(rank).scatter_(0, order, rank)
    return Dispatch(sorted_pair, offsets, keep, position)


def _pad_last(t: torch.Tensor, size: int) -> torch.Tensor:
    return t if t.shape[-1] == size else F.pad(t, (0, size - t.shape[-1]))


def _aligned(n: int) -> int:
    return -(-n // _GROUPED_MM_ALIGN) * _GROUPED_MM_ALIGN


def grouped_linear(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``rows[offsets[e]:offsets[e+1]] @ weight[e]`` for every expert, one grouped GEMM.

    rows ``[P, K]``, weight ``[E, K, N]``, offsets ``[E+1]``. Rows at or past ``offsets[E]``
    come back undefined; callers mask them with ``torch.where``.
    """
    P, K = rows.shape
    N = weight.shape[-1]
    if rows.dtype == torch.float64:
        # grouped GEMM has no fp64 kernel: gather each row's weight (memory P*K*N, so only
        # for the small float64 shapes that gradient checks use).
        row_expert = torch.searchsorted(offsets[1:], torch.arange(P, device=rows.device), right=True)
        row_expert = row_expert.clamp_max(weight.shape[0] - 1)
        return torch.bmm(rows.unsqueeze(1), weight[row_expert]).squeeze(1)
    if rows.device.type == "cpu" and rows.dtype == torch.float16:
        # grouped GEMM on CPU has no fp16 kernel; compute in fp32 and return fp16.
        return grouped_linear(rows.float(), weight.float(), offsets).to(rows.dtype)
    Ka, Na = _aligned(K), _aligned(N)
    a = _pad_last(rows, Ka)
    b = weight if (Ka, Na) == (K, N) else F.pad(weight, (0, Na - N, 0, Ka - K))
    ends = offsets[1:].to(torch.int32)
    out = F.grouped_mm(a, b, offs=ends)
    return out if Na == N else out[:, :N]


def activate(h: torch.Tensor, activation: str) -> torch.Tensor:
    """SwiGLU (gate columns first, then up) or GELU on the up-projection."""
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if activation == "gelu":
        return F.gelu(h)
    raise ValueError(f"activation: expected 'swiglu' or 'gelu', got {activation!r}")


def expert_mlp(
    x: torch.Tensor,
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    sorted_token: torch.Tensor,
    sorted_weight: torch.Tensor,
    expert_offsets: torch.Tensor,
    activation: str,
) -> torch.Tensor:
    """Grouped expert MLP with gate-weighted combine back to token order.

    ``y[t] = sum_i sorted_weight[i] * act(x[t] @ w_in[e_i]) @ w_out[e_i]`` over the sorted
    pairs ``i < expert_offsets[E]`` with ``sorted_token[i] == t``; ``e_i`` is the expert whose
    segment holds ``i``. Pairs at or past ``expert_offsets[E]`` contribute nothing (and get no
    gradient). x ``[T, dim]``, w_in ``[E, dim, H or 2H]``, w_out ``[E, H, dim]``.
    """
    T, dim = x.shape
    P = sorted_token.numel()
    E = w_in.shape[0]
    # Rows past offsets[E] come out of the grouped GEMMs undefined (possibly NaN), in the
    # forward and in the backward. Instead of masking [P, dim] tensors, those pairs read from
    # and write to a spare token row T that is cut off at the end, and get gate weight 0.
    live = torch.arange(P, device=x.device) < expert_offsets[E]
    token = torch.where(live, sorted_token, T)
    weight = torch.where(live, sorted_weight, 0)
    rows = torch.cat([x, x.new_zeros(1, dim)]).index_select(0, token)
    h = activate(grouped_linear(rows, w_in, expert_offsets), activation)
    # the gate multiplies the hidden activations: H columns instead of dim
    out = grouped_linear(h * weight.unsqueeze(-1).to(h.dtype), w_out, expert_offsets)
    y = torch.zeros(T + 1, dim, dtype=out.dtype, device=x.device)
    return y.index_add(0, token, out)[:T]


def naive_expert_mlp(
    x: torch.Tensor,
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    pair_token: torch.Tensor,
    pair_expert: torch.Tensor,
    pair_weight: torch.Tensor,
    activation: str,
) -> torch.Tensor:
    """Dumb per-pair loop, for tests only: the independent reference of :func:`expert_mlp`.

    Pairs with ``pair_expert == E`` (or weight exactly skipped by the caller) are ignored.
    """
    E = w_in.shape[0]
    y = torch.zeros_like(x)
    rows = []
    for p in range(pair_token.numel()):
        e = int(pair_expert[p])
        if e >= E:
            continue
        t = int(pair_token[p])
        h = activate(x[t] @ w_in[e], activation)
        rows.append((t, pair_weight[p] * (h @ w_out[e])))
    for t, r in rows:
        y = y.index_add(0, torch.tensor([t], device=x.device), r.unsqueeze(0))
    return y
