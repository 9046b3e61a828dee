"""Dispatch metadata in Triton: pairs sorted by expert, expert offsets, capacity keep/position.

Three launches, no host synchronisation:

1. ``_key_kernel`` builds one int64 sort key per pair, ``expert << 32 | rank of -priority``
   (an order-preserving map of the fp32 bits), and a per-expert histogram (bin ``E`` holds
   the invalid pairs).
2. a stable radix sort of the keys (``torch.sort``), so ties in priority keep pair order.
3. ``_place_kernel`` turns the sorted order into the reference layout: kept pairs of expert
   ``e`` at ``offsets[e] + rank``; then the dropped pairs expert by expert, then the invalid
   ones, exactly as :func:`mmoe.kernels.reference.dispatch_metadata` orders them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _key_kernel(expert_ptr, prio_ptr, key_ptr, count_ptr, P, E, BLOCK: tl.constexpr,
                HB: tl.constexpr):
    """``key[p] = expert[p] * 2^32 + (2^32 - 1 - orderable_bits(priority[p]))``;
    ``count[e] +=`` pairs of expert ``e`` (``e == E``: invalid)."""
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = p < P
    ex = tl.load(expert_ptr + p, mask=pm, other=0).to(tl.int64)
    pr = tl.load(prio_ptr + p, mask=pm, other=0.0).to(tl.float32) + 0.0  # -0.0 -> +0.0
    bits = pr.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    neg = bits >= 0x80000000
    orderable = tl.where(neg, 0xFFFFFFFF - bits, bits + 0x80000000)
    tl.store(key_ptr + p, ex * 4294967296 + (0xFFFFFFFF - orderable), mask=pm)
    hist = tl.histogram(tl.where(pm, ex, E + 1).to(tl.int32), HB)
    b = tl.arange(0, HB)
    tl.atomic_add(count_ptr + b, hist, mask=b <= E, sem="relaxed")


@triton.jit
def _exclusive(v):
    return tl.cumsum(v, 0) - v


@triton.jit
def _place_kernel(key_ptr, order_ptr, count_ptr, sorted_ptr, offs_ptr, keep_ptr, pos_ptr,
                  P, E, C, BLOCK: tl.constexpr, HB: tl.constexpr):
    """From the sorted keys: rank inside the expert, keep = rank < C, final slot, offsets."""
    b = tl.arange(0, HB)
    cnt = tl.load(count_ptr + b, mask=b <= E, other=0)
    valid_bin = b < E
    kept = tl.where(valid_bin, tl.minimum(cnt, C), 0)
    drop = tl.where(valid_bin, cnt - kept, 0)
    starts = _exclusive(cnt)
    koff = _exclusive(kept)
    doff = _exclusive(drop)
    total_kept = tl.sum(kept, 0)
    total_drop = tl.sum(drop, 0)
    if tl.program_id(0) == 0:
        tl.store(offs_ptr + b, koff.to(tl.int64), mask=b <= E)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    im = i < P
    ex = (tl.load(key_ptr + i, mask=im, other=0) >> 32).to(tl.int32)
    pair = tl.load(order_ptr + i, mask=im, other=0)
    rank = i - tl.gather(starts, ex, 0)
    valid = ex < E
    keep = valid & (rank < C)
    slot = tl.where(keep, tl.gather(koff, ex, 0) + rank,
                    tl.where(valid, total_kept + tl.gather(doff, ex, 0) + rank - C,
                             total_kept + total_drop + rank))
    tl.store(sorted_ptr + slot, pair, mask=im)
    tl.store(keep_ptr + pair, keep, mask=im)
    tl.store(pos_ptr + pair, rank.to(tl.int64), mask=im)


def dispatch_launch(pair_expert: torch.Tensor, priority: torch.Tensor, num_experts: int,
                    capacity: int | None, new_buffer):
    """Returns ``(sorted_pair, expert_offsets, keep, position)`` as the reference defines them."""
    P = pair_expert.numel()
    E = num_experts
    dev = pair_expert.device
    sorted_pair = new_buffer((P,), torch.int64, dev)
    offsets = new_buffer((E + 1,), torch.int64, dev)
    keep = new_buffer((P,), torch.bool, dev)
    position = new_buffer((P,), torch.int64, dev)
    HB = max(16, triton.next_power_of_2(E + 2))
    if P == 0:
        offsets.zero_()
        return sorted_pair, offsets, keep, position
    counts = torch.zeros(HB, dtype=torch.int32, device=dev)
    keys = torch.empty(P, dtype=torch.int64, device=dev)
    BLOCK = 1024
    grid = (triton.cdiv(P, BLOCK),)
    _key_kernel[grid](pair_expert.reshape(-1), priority.reshape(-1), keys, counts, P, E,
                      BLOCK=BLOCK, HB=HB)
    skeys, order = torch.sort(keys, stable=True)
    C = P if capacity is None else max(0, min(int(capacity), P))
    _place_kernel[grid](skeys, order, counts, sorted_pair, offsets, keep, position, P, E, C,
                        BLOCK=BLOCK, HB=HB)
    return sorted_pair, offsets, keep, position
