"""Top-k routing in Triton: scores, biased top-k selection, gate weights, per-expert counts.

One program handles ``BT`` tokens and a whole row of ``E`` logits. Matches
:func:`mmoe.kernels.reference.topk_routing` (ties between equal selection scores go to the
lower expert id).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _topk_kernel(logit_ptr, bias_ptr, w_ptr, idx_ptr, score_ptr, count_ptr, T, E, slt, sle,
                 K: tl.constexpr, KB: tl.constexpr, SIGMOID: tl.constexpr,
                 HAS_BIAS: tl.constexpr, RENORM: tl.constexpr, BT: tl.constexpr,
                 EB: tl.constexpr, HB: tl.constexpr, ONE_PROGRAM: tl.constexpr):
    """``scores = softmax|sigmoid(logits)`` (fp32); the k largest ``scores + bias`` best first;
    ``weights`` = their unbiased scores (divided by their sum when RENORM); ``counts[e] +=``
    number of picks of ``e`` (int64 atomic add of a per-program histogram; stored directly
    when one program covers all tokens, so ``counts`` needs no zeroing)."""
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    tm = t < T
    e = tl.arange(0, EB)
    em = e < E
    m2 = tm[:, None] & em[None, :]
    lg = tl.load(logit_ptr + t.to(tl.int64)[:, None] * slt + e[None, :] * sle, mask=m2,
                 other=-float("inf")).to(tl.float32)
    if SIGMOID:
        s = tl.where(m2, tl.sigmoid(lg), 0.0)
    else:
        mx = tl.max(lg, axis=1)
        mx = tl.where(tm, mx, 0.0)
        p = tl.where(m2, tl.exp(lg - mx[:, None]), 0.0)
        s = p / tl.where(tm, tl.sum(p, axis=1), 1.0)[:, None]
    tl.store(score_ptr + t.to(tl.int64)[:, None] * E + e[None, :], s, mask=m2)
    sel = s
    if HAS_BIAS:
        sel = s + tl.load(bias_ptr + e, mask=em, other=0.0).to(tl.float32)[None, :]
    sel = tl.where(em[None, :], sel, -float("inf"))
    j = tl.arange(0, KB)
    wk = tl.zeros((BT, KB), dtype=tl.float32)
    ik = tl.full((BT, KB), E, dtype=tl.int32)
    for i in tl.static_range(K):
        best = tl.argmax(sel, axis=1).to(tl.int32)
        hit = e[None, :] == best[:, None]
        wi = tl.sum(tl.where(hit, s, 0.0), axis=1)
        wk = tl.where(j[None, :] == i, wi[:, None], wk)
        ik = tl.where(j[None, :] == i, best[:, None], ik)
        sel = tl.where(hit, -float("inf"), sel)
    if RENORM:
        wk = wk / tl.maximum(tl.sum(wk, axis=1), 1e-20)[:, None]
    mk = tm[:, None] & (j[None, :] < K)
    out = t.to(tl.int64)[:, None] * K + j[None, :]
    tl.store(w_ptr + out, wk, mask=mk)
    tl.store(idx_ptr + out, ik.to(tl.int64), mask=mk)
    hist = tl.histogram(tl.reshape(tl.where(mk, ik, E), (BT * KB,)), HB)
    b = tl.arange(0, HB)
    if ONE_PROGRAM:
        tl.store(count_ptr + b, hist.to(tl.int64), mask=b < E)
    else:
        tl.atomic_add(count_ptr + b, hist.to(tl.int64), mask=b < E, sem="relaxed")


def topk_routing_launch(logits: torch.Tensor, k: int, sigmoid: bool, bias, renormalize: bool,
                        new_buffer):
    """Returns ``(weights [T, k] fp32, experts [T, k] int64, scores [T, E] fp32, counts [E])``."""
    T, E = logits.shape
    weights = new_buffer((T, k), torch.float32, logits.device)
    experts = new_buffer((T, k), torch.int64, logits.device)
    scores = new_buffer((T, E), torch.float32, logits.device)
    EB = max(16, triton.next_power_of_2(E))
    BT = max(1, min(64, 4096 // EB))
    one = T <= BT
    if one and T:
        counts = new_buffer((E,), torch.int64, logits.device)
    else:
        counts = torch.zeros(E, dtype=torch.int64, device=logits.device)
    if T == 0:
        return weights, experts, scores, counts
    KB = max(2, triton.next_power_of_2(k))
    HB = max(16, triton.next_power_of_2(E + 1))
    _topk_kernel[(triton.cdiv(T, BT),)](
        logits, bias if bias is not None else logits, weights, experts, scores, counts, T, E,
        logits.stride(0), logits.stride(1), K=k, KB=KB, SIGMOID=sigmoid,
        HAS_BIAS=bias is not None, RENORM=renormalize, BT=BT, EB=EB, HB=HB, ONE_PROGRAM=one,
        num_warps=4 if EB <= 128 else 8)
    return weights, experts, scores, counts
