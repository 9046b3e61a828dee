"""CPU fast path of the torch backend: dispatch metadata and the grouped expert MLP.

Same signatures and results as :mod:`mmoe.kernels.reference` (which stays the contract the
Triton kernels match); :func:`mmoe.kernels.backend_ops` hands this module to the layer for the
``torch`` backend. What it does differently, and why (measured in BENCHMARKS.md):

* :func:`dispatch_metadata` sorts once: expert id and priority packed into one int64 key
  (expert in the high 32 bits, an order-preserving image of ``-priority`` in the low 32), so a
  single stable integer sort gives the (expert, priority, pair) order that the reference builds
  from two float sorts and an int sort; the final position of every pair (kept pairs packed per
  expert, dropped ones behind) is computed with a cumulative sum instead of a third sort.
  Dropless dispatch sorts the expert ids alone. No host synchronisation: runs on any device.
* :func:`expert_mlp` on CPU is one ``autograd.Function``: the forward works on the live pairs
  only (``offsets[E]`` is read on the host, which costs nothing on a CPU), so no padding row and
  no masking; it saves the expert pre-activations ``[n, 2H]`` and the indices, and its backward
  computes the input, weight and gate gradients with the same grouped GEMMs (weight gradients
  as one 2-D x 2-D grouped GEMM per projection), recomputing the gathered input rows and the
  activation instead of keeping per-pair copies. Forward and backward run chunk by chunk over
  contiguous ranges of experts (about 4 MiB of rows each), so the gathered rows, the hidden
  activations and the expert outputs of a chunk stay in cache between the gather, the two grouped
  GEMMs and the scatter. Other devices use the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmoe.kernels.reference import (
    Dispatch,
    _aligned,
    _pad_last,
    activate,
    expert_counts,
    grouped_linear,
    topk_routing,
)
from mmoe.kernels.reference import expert_mlp as reference_expert_mlp

__all__ = ["Dispatch", "dispatch_metadata", "expert_counts", "expert_mlp", "grouped_weight_grad", "topk_routing"]

_LOW = 1 << 32


def _descending_key(priority: torch.Tensor) -> torch.Tensor:
    """int64 in ``[0, 2**32)`` that sorts ascending as ``priority`` (fp32) sorts descending."""
    f = priority.float() + 0.0  # -0.0 -> +0.0: the float sort treats them as equal
    bits = f.view(torch.int32).long()
    ascending = torch.where(bits >= 0, bits + (1 << 31), -1 - bits)  # monotone in f, in [0, 2**32)
    return (_LOW - 1) - ascending


def dispatch_metadata(
    pair_expert: torch.Tensor,
    priority: torch.Tensor,
    num_experts: int,
    capacity: int | None,
) -> Dispatch:
    """:func:`mmoe.kernels.reference.dispatch_metadata` with one integer sort; identical results."""
    P = pair_expert.numel()
    E = num_experts
    device = pair_expert.device
    pair_expert = pair_expert.long()
    order = torch.sort(pair_expert * _LOW + _descending_key(priority), stable=True).indices
    sorted_expert = pair_expert[order]
    counts = expert_counts(sorted_expert, E)
    starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # [E+1]
    rank = torch.arange(P, device=device) - starts[sorted_expert]  # rank inside expert
    keep_sorted = sorted_expert < E
    kept = counts
    if capacity is not None:
        keep_sorted &= rank < capacity
        kept = counts.clamp_max(capacity)
    offsets = torch.cat([kept.new_zeros(1), kept.cumsum(0)])
    if capacity is None:
        sorted_pair = order  # pruned pairs (expert E) already sit last: the sorted order is final
    else:
        # kept pairs packed per expert in rank order, dropped ones behind in sorted order
        dest = torch.where(keep_sorted, offsets[sorted_expert.clamp_max(E - 1)] + rank,
                           offsets[E] + (~keep_sorted).long().cumsum(0) - 1)
        sorted_pair = torch.empty_like(order).scatter_(0, dest, order)
    keep = torch.empty_like(keep_sorted).scatter_(0, order, keep_sorted)
    position = torch.empty_like(rank).scatter_(0, order, rank)
    return Dispatch(sorted_pair, offsets, keep, position)


def grouped_weight_grad(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``a[s_e]^T @ b[s_e]`` for each expert's segment ``s_e = [offsets[e], offsets[e+1])``: ``[E, K, N]``.

    a ``[n, K]``, b ``[n, N]`` with ``n = offsets[E]``; an expert without rows gets zeros.
    """
    n, K = a.shape
    N = b.shape[1]
    if a.dtype == torch.float64 or (a.device.type == "cpu" and a.dtype == torch.float16):
        # no grouped GEMM kernel for these dtypes: sum of per-row outer products (small test shapes)
        row_expert = torch.searchsorted(offsets[1:], torch.arange(n, device=a.device), right=True)
        work = a if a.dtype == torch.float64 else a.float()
        outer = work.unsqueeze(2) * b.to(work.dtype).unsqueeze(1)
        out = torch.zeros(num_experts, K, N, dtype=work.dtype, device=a.device).index_add_(0, row_expert, outer)
        return out.to(a.dtype)
    Ka, Na = _aligned(K), _aligned(N)
    out = F.grouped_mm(_pad_last(a, Ka).t(), _pad_last(b, Na), offs=offsets[1:].to(torch.int32))
    return out if (Ka, Na) == (K, N) else out[:, :K, :N]


def _gated_backward(pre: torch.Tensor, g_hw: torch.Tensor, weight: torch.Tensor, activation: str,
                    need_weight: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """From the pre-activations and ``g_hw`` (gradient of the gate-scaled hidden activations):
    ``(gate gradient [n] or None, gate-scaled activations [n, H], pre-activation gradient)``.

    Written as few passes over ``[n, H]`` as eager torch allows (no concatenation: the two
    halves of the SwiGLU gradient are written into one buffer); ``g_hw`` is overwritten.
    """
    gate = weight.unsqueeze(-1)
    if activation == "swiglu":
        g, up = pre.chunk(2, dim=-1)
        s = F.silu(g)
        h = s * up
    else:
        h = F.gelu(pre)
    # per-row dot product without a [n, H] temporary
    d_weight = torch.bmm(g_hw.unsqueeze(1), h.unsqueeze(2)).view(-1) if need_weight else None
    g_h = g_hw.mul_(gate)
    if activation == "swiglu":
        g_pre = torch.empty_like(pre)
        torch.mul(g_h, s, out=g_pre[:, s.shape[1]:])
        torch.ops.aten.silu_backward.grad_input(g_h.mul_(up), g, grad_input=g_pre[:, :s.shape[1]])
    else:
        g_pre = torch.ops.aten.gelu_backward(g_h, pre)
    return d_weight, h.mul_(gate), g_pre


# Rows per chunk: chunk-sized intermediates ([rows, max(dim, 2H)] floats, ~4 MiB) stay in cache
# between the gather, the two GEMMs, the activation and the scatter, where [T*k, dim] buffers would
# stream through DRAM several times (measured: at T=8192 that traffic costs more than the GEMMs).
_CHUNK_ELEMENTS = 1 << 20


def _chunks(offsets: torch.Tensor, width: int) -> list[tuple[int, int, int, int]]:
    """Contiguous expert ranges ``(e0, e1, row0, row1)`` of about ``_CHUNK_ELEMENTS / width`` rows each."""
    ends = offsets.tolist()  # a host read: free on the CPU
    target = max(1, _CHUNK_ELEMENTS // max(width, 1))
    out, e0, E = [], 0, len(ends) - 1
    while e0 < E:
        e1 = e0 + 1
        while e1 < E and ends[e1] - ends[e0] < target:
            e1 += 1
        out.append((e0, e1, ends[e0], ends[e1]))
        e0 = e1
    return out


def _mlp_forward(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, token: torch.Tensor,
                 weight: torch.Tensor, offsets: torch.Tensor, activation: str,
                 keep_pre: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(y [T, dim], pre-activations [n, 2H or H] if keep_pre)`` over the ``n`` live pairs, chunk by chunk."""
    y = torch.zeros(x.shape[0], w_out.shape[-1], dtype=x.dtype, device=x.device)
    chunks = _chunks(offsets, max(x.shape[1], w_in.shape[-1]))
    # one chunk (small T): keep its buffer as is instead of copying it into a preallocated one
    pre_all = x.new_empty(token.numel(), w_in.shape[-1]) if keep_pre and len(chunks) > 1 else None
    for e0, e1, r0, r1 in chunks:
        if r1 == r0:
            continue
        sub = offsets[e0:e1 + 1] - r0
        tok = token[r0:r1]
        pre = grouped_linear(x.index_select(0, tok), w_in[e0:e1], sub)
        if pre_all is not None:
            pre_all[r0:r1] = pre
        elif keep_pre:
            pre_all = pre
        hw = activate(pre, activation).mul_(weight[r0:r1].unsqueeze(-1))  # the gate scales H columns, not dim
        y.index_add_(0, tok, grouped_linear(hw, w_out[e0:e1], sub).to(y.dtype))
    return y, pre_all


class _ExpertMLP(torch.autograd.Function):
    """Grouped expert MLP over live pairs with gradients from grouped GEMMs (see module doc)."""

    @staticmethod
    def forward(ctx, x, w_in, w_out, token, weight, offsets, activation):
        y, pre = _mlp_forward(x, w_in, w_out, token, weight, offsets, activation, keep_pre=True)
        ctx.save_for_backward(x, w_in, w_out, token, weight, offsets, pre)
        ctx.activation = activation
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w_in, w_out, token, weight, offsets, pre_all = ctx.saved_tensors
        need_x, need_in, need_out, _, need_w = ctx.needs_input_grad[:5]
        chunks = _chunks(offsets, max(x.shape[1], w_in.shape[-1]))
        whole = len(chunks) == 1  # one chunk (small T): its results are the gradients, no copies
        d_x = torch.zeros_like(x) if need_x else None
        d_in = torch.zeros_like(w_in) if need_in and not whole else None
        d_out = torch.zeros_like(w_out) if need_out and not whole else None
        d_weight = torch.zeros_like(weight) if need_w and not whole else None
        for e0, e1, r0, r1 in chunks:
            if r1 == r0:
                continue
            sub, tok, n_e = offsets[e0:e1 + 1] - r0, token[r0:r1], e1 - e0
            g_out = gy.index_select(0, tok)  # [rows, dim]
            g_hw = grouped_linear(g_out, w_out[e0:e1].transpose(1, 2), sub)  # [rows, H]
            # activations recomputed from the saved pre-activations: cheaper than keeping [n, H] alive
            dw, hw, g_pre = _gated_backward(pre_all[r0:r1], g_hw, weight[r0:r1], ctx.activation, need_w)
            if need_w:
                if whole:
                    d_weight = dw
                else:
                    d_weight[r0:r1] = dw
            if need_out:
                g = grouped_weight_grad(hw, g_out, sub, n_e)
                if whole:
                    d_out = g
                else:
                    d_out[e0:e1] = g
            if need_in:
                g = grouped_weight_grad(x.index_select(0, tok), g_pre, sub, n_e)
                if whole:
                    d_in = g
                else:
                    d_in[e0:e1] = g
            if need_x:
                d_x.index_add_(0, tok, grouped_linear(g_pre, w_in[e0:e1].transpose(1, 2), sub).to(x.dtype))
        return d_x, d_in, d_out, None, d_weight, None, None


def expert_mlp(
    x: torch.Tensor,
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    sorted_token: torch.Tensor,
    sorted_weight: torch.Tensor,
    expert_offsets: torch.Tensor,
    activation: str,
) -> torch.Tensor:
    """:func:`mmoe.kernels.reference.expert_mlp` (same contract); the fast path for CPU tensors."""
    if x.device.type != "cpu":
        return reference_expert_mlp(x, w_in, w_out, sorted_token, sorted_weight, expert_offsets, activation)
    if activation not in ("swiglu", "gelu"):
        raise ValueError(f"activation: expected 'swiglu' or 'gelu', got {activation!r}")
    n = int(expert_offsets[w_in.shape[0]])  # live pairs; reading it on the host is free on a CPU
    token = sorted_token[:n]
    weight = sorted_weight[:n].to(x.dtype)
    if n == 0:  # zeros that still carry (zero) gradients to every input, as the reference does
        zero = x.new_zeros(())
        if torch.is_grad_enabled():
            zero = 0 * (x.sum() + w_in.sum() + w_out.sum() + sorted_weight.sum().to(x.dtype))
        return zero.expand(x.shape[0], w_out.shape[-1]).clone()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w_in, w_out, weight)):
        return _ExpertMLP.apply(x, w_in, w_out, token, weight, expert_offsets, activation)
    return _mlp_forward(x, w_in, w_out, token, weight, expert_offsets, activation, keep_pre=False)[0]
