"""Grouped expert MLP in Triton: forward and backward launchers (no autograd here).

Pairs are processed in expert order (the order of ``sorted_token``); the kept pairs of expert
``e`` are rows ``[offsets[e], offsets[e+1])``. Tokens are read in place through
``sorted_token`` (no padded or permuted copy of ``x``). A row tile never straddles two experts:
the launch has ``cdiv(P, BM) + E`` row tiles and every program finds its expert and rows from
``offsets`` on the device; spare tiles exit at once, so nothing waits on the host.

Combine: the down-projection epilogue multiplies by the gate weight and adds the rows into
token order with fp32 **atomic adds** (so the summation order over a token's k experts, and
over the K-splits of the decode configuration, is not deterministic; the error is fp32
rounding). ``dx`` is combined the same way, and ``d sorted_weight`` adds its column tiles
atomically. With ``deterministic=True`` (what :func:`torch.use_deterministic_algorithms` asks
for) nothing floating-point is added atomically: the epilogue stores each pair's fp32 row, a
segment-sum kernel adds a token's rows in sorted-row order, and ``d sorted_weight`` sums its
per-column-tile partials with ``torch.sum``. That costs a ``[P, dim]`` fp32 buffer and a sort of
the P token ids. Intermediates saved for backward, in sorted-pair order: ``a = act(z)``
``[P, H]`` and the pre-activation ``z`` ``[P, H or 2H]``.

Set ``POISON = True`` (or ``MMOE_TRITON_POISON=1``) to fill every buffer that a kernel must
write completely with NaN (integers with -1) before the launch, so a missed element shows up.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mmoe.kernels import triton_tuning as tuning

POISON = os.environ.get("MMOE_TRITON_POISON") == "1"
INTERPRET = tuning.INTERPRET
# The CPU interpreter (triton 3.8) returns garbage from tl.dot on bf16/fp16 operands, so under
# TRITON_INTERPRET=1 the operands are upcast to fp32 first (the accumulation is fp32 anyway).
_UPCAST = tl.constexpr(tuning.INTERPRET)


def new_buffer(shape, dtype, device) -> torch.Tensor:
    """``torch.empty``, or a NaN/-1 filled tensor when :data:`POISON` is set."""
    if not POISON:
        return torch.empty(shape, dtype=dtype, device=device)
    fill = float("nan") if dtype.is_floating_point else (True if dtype == torch.bool else -1)
    return torch.full(shape, fill, dtype=dtype, device=device)


@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr):
    if _UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _tile(pid_m, offs_ptr, E, BM: tl.constexpr, EB: tl.constexpr):
    """Expert id and row range ``[start, end)`` of row tile ``pid_m``; empty for spare tiles."""
    e = tl.arange(0, EB)
    lo = tl.load(offs_ptr + e, mask=e < E, other=0).to(tl.int32)
    hi = tl.load(offs_ptr + e + 1, mask=e < E, other=0).to(tl.int32)
    nt = (hi - lo + BM - 1) // BM
    cum = tl.cumsum(nt, 0)
    expert = tl.sum((cum <= pid_m).to(tl.int32), 0)
    sel = e == expert
    first = tl.sum(tl.where(sel, cum - nt, 0), 0)
    start = tl.sum(tl.where(sel, lo, 0), 0) + (pid_m - first) * BM
    end = tl.sum(tl.where(sel, hi, 0), 0)
    return expert, start, end


@triton.jit
def _swizzle(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped launch order: GROUP_M row tiles share each weight column tile in L2."""
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % size, (pid % width) // size


@triton.jit
def _up_fwd_kernel(x_ptr, w_ptr, z_ptr, a_ptr, tok_ptr, offs_ptr, K, H, E, num_m,
                   sxt, sxk, swe, swk, swn, szp, sap,
                   SWIGLU: tl.constexpr, SAVE_Z: tl.constexpr, PREC: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EB: tl.constexpr,
                   GROUP_M: tl.constexpr):
    """``z = x[tok] @ w_in[e]`` per row tile, ``a = silu(z[:, :H]) * z[:, H:]`` or ``gelu(z)``.

    Stores ``a`` (and ``z`` when SAVE_Z) in sorted-pair order, in the input dtype.
    """
    pid_m, pid_n = _swizzle(tl.program_id(0), num_m, tl.cdiv(H, BN), GROUP_M)
    expert, start, end = _tile(pid_m, offs_ptr, E, BM, EB)
    if start >= end:
        return
    rows = start + tl.arange(0, BM)
    rmask = rows < end
    tok = tl.load(tok_ptr + rows, mask=rmask, other=0).to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < H
    kk = tl.arange(0, BK)
    xp = x_ptr + tok[:, None] * sxt + kk[None, :] * sxk
    wp = w_ptr + expert.to(tl.int64) * swe + kk[:, None] * swk + cols[None, :] * swn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc2 = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kmask = kk < K - k0
        xt = tl.load(xp, mask=rmask[:, None] & kmask[None, :], other=0.0)
        wt = tl.load(wp, mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = _dot(xt, wt, acc, PREC)
        if SWIGLU:
            wt2 = tl.load(wp + H * swn, mask=kmask[:, None] & cmask[None, :], other=0.0)
            acc2 = _dot(xt, wt2, acc2, PREC)
        xp += BK * sxk
        wp += BK * swk
    if SWIGLU:
        a = acc * tl.sigmoid(acc) * acc2
    else:
        a = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    r64 = rows.to(tl.int64)[:, None]
    m2 = rmask[:, None] & cmask[None, :]
    tl.store(a_ptr + r64 * sap + cols[None, :], a.to(a_ptr.dtype.element_ty), mask=m2)
    if SAVE_Z:
        tl.store(z_ptr + r64 * szp + cols[None, :], acc.to(z_ptr.dtype.element_ty), mask=m2)
        if SWIGLU:
            tl.store(z_ptr + r64 * szp + H + cols[None, :], acc2.to(z_ptr.dtype.element_ty),
                     mask=m2)


@triton.jit
def _up_bwd_kernel(dy_ptr, w_ptr, z_ptr, dz_ptr, sw_ptr, dsw_ptr, tok_ptr, offs_ptr,
                   K, H, E, num_m, P, syt, syk, swe, swk, swn, szp,
                   SWIGLU: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr, EB: tl.constexpr, GROUP_M: tl.constexpr,
                   ATOMIC: tl.constexpr):
    """``g = dy[tok] @ w_out[e]^T``; ``dz = (gate_weight * g) * act'(z)``;
    ``d gate_weight += sum_h g * act(z)``: an fp32 atomic add over column tiles (ATOMIC), or
    the partial sum of column tile ``j`` stored at ``dsw[j * P + row]``."""
    pid_m, pid_n = _swizzle(tl.program_id(0), num_m, tl.cdiv(H, BN), GROUP_M)
    expert, start, end = _tile(pid_m, offs_ptr, E, BM, EB)
    if start >= end:
        return
    rows = start + tl.arange(0, BM)
    rmask = rows < end
    tok = tl.load(tok_ptr + rows, mask=rmask, other=0).to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < H
    kk = tl.arange(0, BK)
    yp = dy_ptr + tok[:, None] * syt + kk[None, :] * syk
    wp = w_ptr + expert.to(tl.int64) * swe + kk[:, None] * swk + cols[None, :] * swn
    g = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kmask = kk < K - k0
        yt = tl.load(yp, mask=rmask[:, None] & kmask[None, :], other=0.0)
        wt = tl.load(wp, mask=kmask[:, None] & cmask[None, :], other=0.0)
        g = _dot(yt.to(wt.dtype), wt, g, PREC)
        yp += BK * syk
        wp += BK * swk
    r64 = rows.to(tl.int64)[:, None]
    m2 = rmask[:, None] & cmask[None, :]
    gw = tl.load(sw_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    zg = tl.load(z_ptr + r64 * szp + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    da = g * gw[:, None]
    if SWIGLU:
        zu = tl.load(z_ptr + r64 * szp + H + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        sg = tl.sigmoid(zg)
        silu = zg * sg
        a = silu * zu
        tl.store(dz_ptr + r64 * szp + cols[None, :],
                 (da * zu * sg * (1.0 + zg * (1.0 - sg))).to(dz_ptr.dtype.element_ty), mask=m2)
        tl.store(dz_ptr + r64 * szp + H + cols[None, :], (da * silu).to(dz_ptr.dtype.element_ty),
                 mask=m2)
    else:
        cdf = 0.5 * (1.0 + tl.erf(zg * 0.7071067811865476))
        a = zg * cdf
        pdf = tl.exp(-0.5 * zg * zg) * 0.3989422804014327
        tl.store(dz_ptr + r64 * szp + cols[None, :], (da * (cdf + zg * pdf)).to(dz_ptr.dtype.element_ty),
                 mask=m2)
    if ATOMIC:
        tl.atomic_add(dsw_ptr + rows, tl.sum(g * a, axis=1), mask=rmask, sem="relaxed")
    else:
        tl.store(dsw_ptr + pid_n.to(tl.int64) * P + rows, tl.sum(g * a, axis=1), mask=rmask)


@triton.jit
def _scatter_kernel(a_ptr, w_ptr, out_ptr, tok_ptr, scale_ptr, offs_ptr, K, N, E, num_m,
                    sap, sak, swe, swk, swn, sot, son,
                    HAS_SCALE: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr,
                    BN: tl.constexpr, BK: tl.constexpr, EB: tl.constexpr, GROUP_M: tl.constexpr,
                    SPLIT_K: tl.constexpr, ATOMIC: tl.constexpr):
    """``out[tok[r]] += scale[r] * (a[r] @ w[e])`` for sorted rows ``r`` of expert ``e``.

    ``a`` is in sorted-pair order; ``out`` is fp32 in token order, accumulated with atomic
    adds (also across the SPLIT_K slices of K). Without ATOMIC (SPLIT_K must be 1), ``out`` is
    ``[P, N]`` fp32 in sorted-pair order and row ``r`` is stored, not added. Forward: a = act,
    w = w_out, scale = gate weight. Backward: a = dz, w = w_in^T, no scale, out = dx.
    """
    pid_m, pid_n = _swizzle(tl.program_id(0), num_m, tl.cdiv(N, BN), GROUP_M)
    expert, start, end = _tile(pid_m, offs_ptr, E, BM, EB)
    if start >= end:
        return
    rows = start + tl.arange(0, BM)
    rmask = rows < end
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < N
    k_per = tl.cdiv(tl.cdiv(K, SPLIT_K), BK) * BK
    k_lo = tl.program_id(1) * k_per
    k_hi = tl.minimum(K, k_lo + k_per)
    kk = tl.arange(0, BK)
    ap = a_ptr + rows.to(tl.int64)[:, None] * sap + (k_lo + kk)[None, :] * sak
    wp = w_ptr + expert.to(tl.int64) * swe + (k_lo + kk)[:, None] * swk + cols[None, :] * swn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BK):
        kmask = kk < k_hi - k0
        at = tl.load(ap, mask=rmask[:, None] & kmask[None, :], other=0.0)
        wt = tl.load(wp, mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = _dot(at, wt, acc, PREC)
        ap += BK * sak
        wp += BK * swk
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[:, None]
    if ATOMIC:
        tok = tl.load(tok_ptr + rows, mask=rmask, other=0).to(tl.int64)
        tl.atomic_add(out_ptr + tok[:, None] * sot + cols[None, :] * son, acc,
                      mask=rmask[:, None] & cmask[None, :], sem="relaxed")
    else:
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * sot + cols[None, :] * son, acc,
                 mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _segment_sum_kernel(row_ptr, perm_ptr, start_ptr, out_ptr, T, N, srp, sot,
                        BT: tl.constexpr, BN: tl.constexpr):
    """``out[t] = sum_i row[perm[i]]`` over ``i in [start[t], start[t+1])``, added in that
    order in fp32 (a fixed order: the deterministic combine). Tokens without rows get 0."""
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    tm = t < T
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    cm = cols < N
    lo = tl.load(start_ptr + t, mask=tm, other=0).to(tl.int32)
    cnt = tl.load(start_ptr + t + 1, mask=tm, other=0).to(tl.int32) - lo
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for i in range(0, tl.max(cnt, 0)):
        m = tm & (i < cnt)
        r = tl.load(perm_ptr + lo + i, mask=m, other=0).to(tl.int64)
        acc += tl.load(row_ptr + r[:, None] * srp + cols[None, :], mask=m[:, None] & cm[None, :],
                       other=0.0)
    tl.store(out_ptr + t.to(tl.int64)[:, None] * sot + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=tm[:, None] & cm[None, :])


@triton.jit
def _wgrad_kernel(l_ptr, r_ptr, dw_ptr, tok_ptr, scale_ptr, offs_ptr, KD, N,
                  slp, slk, srp, srn, sde, sdk, sdn,
                  L_GATHER: tl.constexpr, R_GATHER: tl.constexpr, HAS_SCALE: tl.constexpr,
                  PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  GROUP_M: tl.constexpr):
    """``dw[e] = L_e^T @ (scale * R_e)`` over the sorted rows of expert ``e`` (grouped X^T dY).

    L/R rows are read through ``tok`` when *_GATHER (token-order tensors) or directly in
    sorted order. Every element of ``dw`` is written (zero for an expert with no rows).
    dW_in: L = x (gathered), R = dz. dW_out: L = a, R = dy (gathered, scaled by gate weight).
    """
    # grouped order: GROUP_M row tiles of dW sweep the column tiles together, so the R tiles
    # (an expert's rows of dz or dy, often larger than L2) are re-read from L2, not memory
    pid_m, pid_n = _swizzle(tl.program_id(0), tl.cdiv(KD, BM), tl.cdiv(N, BN), GROUP_M)
    e = tl.program_id(1)
    start = tl.load(offs_ptr + e).to(tl.int32)
    end = tl.load(offs_ptr + e + 1).to(tl.int32)
    mi = pid_m * BM + tl.arange(0, BM)
    ni = pid_n * BN + tl.arange(0, BN)
    mmask = mi < KD
    nmask = ni < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for p0 in range(start, end, BK):
        p = p0 + tl.arange(0, BK)
        pm = p < end
        src = tl.load(tok_ptr + p, mask=pm, other=0).to(tl.int64)
        lrow = src if L_GATHER else p.to(tl.int64)
        rrow = src if R_GATHER else p.to(tl.int64)
        lt = tl.load(l_ptr + lrow[None, :] * slp + mi[:, None] * slk,
                     mask=pm[None, :] & mmask[:, None], other=0.0)
        rt = tl.load(r_ptr + rrow[:, None] * srp + ni[None, :] * srn,
                     mask=pm[:, None] & nmask[None, :], other=0.0)
        if HAS_SCALE:
            s = tl.load(scale_ptr + p, mask=pm, other=0.0).to(tl.float32)
            rt = (rt.to(tl.float32) * s[:, None]).to(lt.dtype)
        acc = _dot(lt, rt.to(lt.dtype), acc, PREC)
    tl.store(dw_ptr + e.to(tl.int64) * sde + mi[:, None] * sdk + ni[None, :] * sdn,
             acc.to(dw_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def _prec(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _eb(E: int) -> int:
    return max(16, triton.next_power_of_2(E))


def _launch_up_fwd(x, w_in, z, a, tok, offs, swiglu, save_z, cfg):
    P, H = a.shape
    E, K = w_in.shape[0], w_in.shape[1]
    num_m = triton.cdiv(P, cfg.BM) + E
    grid = (num_m * triton.cdiv(H, cfg.BN),)
    zs = z.stride(0) if save_z else 0
    _up_fwd_kernel[grid](x, w_in, z, a, tok, offs, K, H, E, num_m, x.stride(0), x.stride(1),
                         w_in.stride(0), w_in.stride(1), w_in.stride(2), zs, a.stride(0),
                         SWIGLU=swiglu, SAVE_Z=save_z, PREC=_prec(x.dtype), BM=cfg.BM, BN=cfg.BN,
                         BK=cfg.BK, EB=_eb(E), GROUP_M=8, num_warps=cfg.warps,
                         num_stages=cfg.stages)


def _launch_scatter(a, w, w_strides, out, tok, scale, offs, K, N, cfg, atomic=True):
    """w_strides: (expert, k, n) strides of the [E, K, N] view of w. ``atomic=False``: ``out``
    is the ``[P, N]`` per-pair buffer (no split-K)."""
    P = a.shape[0]
    E = offs.numel() - 1
    split_k = cfg.split_k if atomic else 1
    num_m = triton.cdiv(P, cfg.BM) + E
    grid = (num_m * triton.cdiv(N, cfg.BN), split_k)
    _scatter_kernel[grid](a, w, out, tok, scale if scale is not None else a, offs, K, N, E, num_m,
                          a.stride(0), a.stride(1), *w_strides, out.stride(0), out.stride(1),
                          HAS_SCALE=scale is not None, PREC=_prec(a.dtype), BM=cfg.BM, BN=cfg.BN,
                          BK=cfg.BK, EB=_eb(E), GROUP_M=8, SPLIT_K=split_k, ATOMIC=atomic,
                          num_warps=cfg.warps, num_stages=cfg.stages)


def _token_groups(tok: torch.Tensor, offs: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted rows grouped by token: ``perm`` (live rows, token by token, each token's rows in
    sorted-row order) and ``start [T+1]``; rows at or past ``offs[E]`` are left out."""
    P = tok.numel()
    live = torch.arange(P, device=tok.device) < offs[-1]
    keys, perm = torch.sort(torch.where(live, tok, T), stable=True)
    start = torch.searchsorted(keys, torch.arange(T + 1, device=tok.device, dtype=keys.dtype))
    return perm, start


def _combine_fixed_order(rows: torch.Tensor, perm: torch.Tensor, start: torch.Tensor,
                         out: torch.Tensor) -> None:
    """``out[t] = sum of rows[perm[start[t]:start[t+1]]]`` in a fixed order (no atomics)."""
    T, N = out.shape
    if T == 0:
        return
    BT, BN = (16, 64) if INTERPRET else (16, 128)
    _segment_sum_kernel[(triton.cdiv(T, BT), triton.cdiv(N, BN))](
        rows, perm, start, out, T, N, rows.stride(0), out.stride(0), BT=BT, BN=BN, num_warps=4)


def _launch_wgrad(l, r, dw, tok, scale, offs, l_gather, r_gather, cfg):
    E, KD, N = dw.shape
    grid = (triton.cdiv(KD, cfg.BM) * triton.cdiv(N, cfg.BN), E)
    _wgrad_kernel[grid](l, r, dw, tok, scale if scale is not None else l, offs, KD, N,
                        l.stride(0), l.stride(1), r.stride(0), r.stride(1), *dw.stride(),
                        L_GATHER=l_gather, R_GATHER=r_gather, HAS_SCALE=scale is not None,
                        PREC=_prec(l.dtype), BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, GROUP_M=8,
                        num_warps=cfg.warps, num_stages=cfg.stages)


def _finish(acc32: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return acc32 if acc32.dtype == dtype else acc32.to(dtype)


def mlp_forward(x, w_in, w_out, sorted_token, sorted_weight, offsets, activation: str,
                save_z: bool, deterministic: bool = False):
    """Returns ``(y [T, dim], a [P, H], z [P, N1] or empty)``."""
    T, D = x.shape
    E, _, N1 = w_in.shape
    H = w_out.shape[1]
    P = sorted_token.numel()
    swiglu = activation == "swiglu"
    a = new_buffer((P, H), x.dtype, x.device)
    z = new_buffer((P, N1), x.dtype, x.device) if save_z else x.new_empty(0)
    if P == 0:
        return torch.zeros(T, D, dtype=x.dtype, device=x.device), a, z
    rpe = P // max(E, 1)
    key = (D, H, E, x.dtype, swiglu)
    cfg = tuning.pick("up", key, rpe, H, swiglu, lambda c: _launch_up_fwd(
        x, w_in, z, a, sorted_token, offsets, swiglu, save_z, c), x.element_size())
    _launch_up_fwd(x, w_in, z, a, sorted_token, offsets, swiglu, save_z, cfg)
    ws = (w_out.stride(0), w_out.stride(1), w_out.stride(2))
    if deterministic:
        rows = new_buffer((P, D), torch.float32, x.device)
        cfg = tuning.pick("down", key + ("det",), rpe, D, swiglu, lambda c: _launch_scatter(
            a, w_out, ws, rows, sorted_token, sorted_weight, offsets, H, D, c, False),
            x.element_size())
        _launch_scatter(a, w_out, ws, rows, sorted_token, sorted_weight, offsets, H, D, cfg,
                        atomic=False)
        y = new_buffer((T, D), x.dtype, x.device)
        _combine_fixed_order(rows, *_token_groups(sorted_token, offsets, T), y)
        return y, a, z
    y = torch.zeros(T, D, dtype=torch.float32, device=x.device)
    cfg = tuning.pick("down", key, rpe, D, swiglu, lambda c: _launch_scatter(
        a, w_out, ws, torch.zeros_like(y), sorted_token, sorted_weight, offsets, H, D, c),
        x.element_size())
    _launch_scatter(a, w_out, ws, y, sorted_token, sorted_weight, offsets, H, D, cfg)
    return _finish(y, x.dtype), a, z


def mlp_backward(dy, x, w_in, w_out, sorted_token, sorted_weight, offsets, a, z, activation: str,
                 deterministic: bool = False):
    """Returns ``(dx, dw_in, dw_out, d sorted_weight)``."""
    T, D = x.shape
    E, _, N1 = w_in.shape
    H = w_out.shape[1]
    P = sorted_token.numel()
    swiglu = activation == "swiglu"
    dw_in = new_buffer(w_in.shape, w_in.dtype, x.device)
    dw_out = new_buffer(w_out.shape, w_out.dtype, x.device)
    rpe = P // max(E, 1)
    if P == 0:
        dw_in.zero_()
        dw_out.zero_()
        return (torch.zeros(T, D, dtype=x.dtype, device=x.device), dw_in, dw_out,
                torch.zeros(P, dtype=sorted_weight.dtype, device=x.device))
    dz = new_buffer((P, N1), x.dtype, x.device)
    key = (D, H, E, x.dtype, swiglu) + (("det",) if deterministic else ())
    wo_t = (w_out.stride(0), w_out.stride(2), w_out.stride(1))  # [E, D, H] view

    def dsw_buffer(c):
        # deterministic: one row of partial sums per column tile (rows never written stay 0)
        shape = (triton.cdiv(H, c.BN), P) if deterministic else (P,)
        return torch.zeros(shape, dtype=torch.float32, device=x.device)

    def up_bwd(c, dsw):
        num_m = triton.cdiv(P, c.BM) + E
        _up_bwd_kernel[(num_m * triton.cdiv(H, c.BN),)](
            dy, w_out, z, dz, sorted_weight, dsw, sorted_token, offsets, D, H, E, num_m, P,
            dy.stride(0), dy.stride(1), *wo_t, z.stride(0), SWIGLU=swiglu, PREC=_prec(x.dtype),
            BM=c.BM, BN=c.BN, BK=c.BK, EB=_eb(E), GROUP_M=8, ATOMIC=not deterministic,
            num_warps=c.warps, num_stages=c.stages)

    cfg = tuning.pick("upbwd", key, rpe, H, swiglu, lambda c: up_bwd(c, dsw_buffer(c)),
                      x.element_size())
    dsw = dsw_buffer(cfg)
    up_bwd(cfg, dsw)
    if deterministic:
        dsw = dsw.sum(0)
    wi_t = (w_in.stride(0), w_in.stride(2), w_in.stride(1))  # [E, N1, D] view
    if deterministic:
        rows = new_buffer((P, D), torch.float32, x.device)
        cfg = tuning.pick("down", key + ("bwd",), rpe, D, swiglu, lambda c: _launch_scatter(
            dz, w_in, wi_t, rows, sorted_token, None, offsets, N1, D, c, False),
            x.element_size())
        _launch_scatter(dz, w_in, wi_t, rows, sorted_token, None, offsets, N1, D, cfg,
                        atomic=False)
        dx = new_buffer((T, D), x.dtype, x.device)
        _combine_fixed_order(rows, *_token_groups(sorted_token, offsets, T), dx)
    else:
        dx32 = torch.zeros(T, D, dtype=torch.float32, device=x.device)
        cfg = tuning.pick("down", key + ("bwd",), rpe, D, swiglu, lambda c: _launch_scatter(
            dz, w_in, wi_t, torch.zeros_like(dx32), sorted_token, None, offsets, N1, D, c),
            x.element_size())
        _launch_scatter(dz, w_in, wi_t, dx32, sorted_token, None, offsets, N1, D, cfg)
        dx = _finish(dx32, x.dtype)
    cfg = tuning.pick("wgrad", key + ("in",), rpe, N1, swiglu, lambda c: _launch_wgrad(
        x, dz, dw_in, sorted_token, None, offsets, True, False, c), x.element_size())
    _launch_wgrad(x, dz, dw_in, sorted_token, None, offsets, True, False, cfg)
    cfg = tuning.pick("wgrad", key + ("out",), rpe, D, swiglu, lambda c: _launch_wgrad(
        a, dy, dw_out, sorted_token, sorted_weight, offsets, False, True, c), x.element_size())
    _launch_wgrad(a, dy, dw_out, sorted_token, sorted_weight, offsets, False, True, cfg)
    return dx, dw_in, dw_out, dsw.to(sorted_weight.dtype)
