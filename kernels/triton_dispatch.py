"""Dispatch metadata in Triton: pairs sorted by expert, expert offsets, capacity keep/position.

No host synchronisation, no memset, and one or two launches:

1. ``_sort_chunks_kernel``: each program takes a chunk of ``CHUNK`` pairs, builds one unique
   int64 key per pair, ``expert | ~orderable(priority) | pair index`` (an order-preserving map
   of the fp32 bits, so ascending keys = by expert, higher priority first, ties by pair
   index), sorts the chunk with ``tl.sort`` and stores it with the chunk's expert histogram.
   With one chunk (``P <= CHUNK``) the same program also places the pairs (step 2).
2. ``_merge_place_kernel``: a pair's place in the global order is the number of keys below its
   own in every sorted chunk (a vectorised binary search per chunk, since keys are unique);
   from it come its rank inside the expert, keep = rank < C, and its slot in the reference
   layout: kept pairs of expert ``e`` at ``offsets[e] + rank``, then the dropped pairs expert
   by expert, then the invalid ones, exactly as :func:`mmoe.kernels.reference.dispatch_metadata`
   orders them.

When the key does not fit 63 bits (``bits(E + 1) + bits(P - 1) > 31``), a fallback builds
``expert | ~orderable(priority)`` keys and sorts them with ``torch.sort`` (stable).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


# Pairs per sorted chunk (one program), a power of two. The CPU interpreter runs tl.sort slowly,
# so it gets small chunks (which also puts the multi-chunk merge under test on small inputs).
CHUNK = 256 if os.environ.get("TRITON_INTERPRET") == "1" else 2048
# Expert bits + pair-index bits that fit beside the 32 priority bits in a non-negative int64.
PACKED_KEY_BITS = 31


@triton.jit
def _orderable(prio):
    """fp32 -> uint32 (held in int64) with the same order; -0.0 and +0.0 map together."""
    bits = (prio + 0.0).to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    return tl.where(bits >= 0x80000000, 0xFFFFFFFF - bits, bits + 0x80000000)


@triton.jit
def _chunk_keys(expert_ptr, prio_ptr, c, P, E, IB: tl.constexpr, CH: tl.constexpr):
    """Keys of chunk ``c`` (padding past P: expert E + 1, after every real pair) and experts."""
    i = c * CH + tl.arange(0, CH)
    im = i < P
    ex = tl.load(expert_ptr + i, mask=im, other=0).to(tl.int64)
    ex = tl.where(im, ex, E + 1)
    pr = tl.load(prio_ptr + i, mask=im, other=0.0).to(tl.float32)
    key = (ex << (32 + IB)) | ((0xFFFFFFFF - _orderable(pr)) << IB) | i.to(tl.int64)
    return key, ex


@triton.jit
def _place(ex, pair, g, cnt, sorted_ptr, offs_ptr, keep_ptr, pos_ptr, E, C, write_offsets,
           HB: tl.constexpr):
    """Place pair ``pair`` of expert ``ex`` whose index in the sorted order is ``g``;
    ``cnt[b]`` = pairs of expert b (b = E: invalid). Padding (``ex > E``) is skipped."""
    b = tl.arange(0, HB)
    cnt = tl.where(b <= E, cnt, 0)
    valid_bin = b < E
    kept = tl.where(valid_bin, tl.minimum(cnt, C), 0)
    drop = tl.where(valid_bin, cnt - kept, 0)
    starts = _exclusive(cnt)
    koff = _exclusive(kept)
    doff = _exclusive(drop)
    total_kept = tl.sum(kept, 0)
    total_drop = tl.sum(drop, 0)
    if write_offsets:
        tl.store(offs_ptr + b, koff.to(tl.int64), mask=b <= E)
    real = ex <= E
    exc = tl.minimum(ex, E)
    rank = g - tl.gather(starts, exc, 0)
    valid = ex < E
    keep = valid & (rank < C)
    slot = tl.where(keep, tl.gather(koff, exc, 0) + rank,
                    tl.where(valid, total_kept + tl.gather(doff, exc, 0) + rank - C,
                             total_kept + total_drop + rank))
    tl.store(sorted_ptr + slot, pair, mask=real)
    tl.store(keep_ptr + pair, keep, mask=real)
    tl.store(pos_ptr + pair, rank.to(tl.int64), mask=real)


@triton.jit
def _sort_chunks_kernel(expert_ptr, prio_ptr, skey_ptr, hist_ptr, sorted_ptr, offs_ptr,
                        keep_ptr, pos_ptr, P, E, C, IB: tl.constexpr, CH: tl.constexpr,
                        HB: tl.constexpr, SINGLE: tl.constexpr):
    """Sort chunk ``program_id`` of keys into ``skey`` and its histogram into ``hist[c]``;
    SINGLE (one chunk): place the pairs directly."""
    c = tl.program_id(0)
    key, ex = _chunk_keys(expert_ptr, prio_ptr, c, P, E, IB, CH)
    sk = tl.sort(key)
    hist = tl.histogram(ex.to(tl.int32), HB)
    if SINGLE:
        _place((sk >> (32 + IB)).to(tl.int32), sk & ((1 << IB) - 1), tl.arange(0, CH), hist,
               sorted_ptr, offs_ptr, keep_ptr, pos_ptr, E, C, True, HB)
    else:
        o = c * CH + tl.arange(0, CH)
        tl.store(skey_ptr + o, sk)
        tl.store(hist_ptr + c * HB + tl.arange(0, HB), hist)


@triton.jit
def _merge_place_kernel(skey_ptr, hist_ptr, sorted_ptr, offs_ptr, keep_ptr, pos_ptr, E, C, NC,
                        IB: tl.constexpr, CH: tl.constexpr, LOG_CH: tl.constexpr,
                        NCB: tl.constexpr, HB: tl.constexpr, BLOCK: tl.constexpr):
    """Global sorted index of each key = sum over chunks of the keys below it; then place."""
    g0 = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    gm = g0 < NC * CH
    key = tl.load(skey_ptr + g0, mask=gm, other=0x7FFFFFFFFFFFFFFF)
    cs = tl.arange(0, NCB)
    cm = cs < NC
    base_ptr = skey_ptr + cs.to(tl.int64)[None, :] * CH
    below = tl.zeros((BLOCK, NCB), dtype=tl.int32)
    for s in tl.static_range(LOG_CH):  # branchless lower bound in every chunk at once
        probe = tl.load(base_ptr + below + ((CH >> (s + 1)) - 1), mask=cm[None, :],
                        other=0x7FFFFFFFFFFFFFFF)  # missing chunks hold nothing below
        below += tl.where(probe < key[:, None], CH >> (s + 1), 0)
    last = tl.load(base_ptr + below, mask=cm[None, :], other=0x7FFFFFFFFFFFFFFF)
    below += (last < key[:, None]).to(tl.int32)
    g = tl.sum(below, 1)
    b = tl.arange(0, HB)
    cnt = tl.sum(tl.load(hist_ptr + cs[:, None] * HB + b[None, :], mask=cm[:, None], other=0), 0)
    key = tl.where(gm, key, (tl.zeros_like(key) + E + 1) << (32 + IB))  # past the scratch
    _place((key >> (32 + IB)).to(tl.int32), key & ((1 << IB) - 1), g, cnt, sorted_ptr, offs_ptr,
           keep_ptr, pos_ptr, E, C, tl.program_id(0) == 0, HB)


@triton.jit
def _key_kernel(expert_ptr, prio_ptr, key_ptr, count_ptr, P, E, BLOCK: tl.constexpr,
                HB: tl.constexpr):
    """Fallback keys: ``expert[p] * 2^32 + (2^32 - 1 - orderable(priority[p]))``;
    ``count[e] +=`` pairs of expert ``e`` (``e == E``: invalid)."""
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = p < P
    ex = tl.load(expert_ptr + p, mask=pm, other=0).to(tl.int64)
    pr = tl.load(prio_ptr + p, mask=pm, other=0.0).to(tl.float32)
    tl.store(key_ptr + p, ex * 4294967296 + (0xFFFFFFFF - _orderable(pr)), mask=pm)
    hist = tl.histogram(tl.where(pm, ex, E + 1).to(tl.int32), HB)
    b = tl.arange(0, HB)
    tl.atomic_add(count_ptr + b, hist, mask=b <= E, sem="relaxed")


@triton.jit
def _exclusive(v):
    return tl.cumsum(v, 0) - v


@triton.jit
def _place_kernel(key_ptr, order_ptr, count_ptr, sorted_ptr, offs_ptr, keep_ptr, pos_ptr,
                  P, E, C, BLOCK: tl.constexpr, HB: tl.constexpr):
    """Fallback: from the stably sorted keys, rank inside the expert, keep, slot, offsets."""
    b = tl.arange(0, HB)
    cnt = tl.load(count_ptr + b, mask=b <= E, other=0)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    im = i < P
    ex = tl.where(im, (tl.load(key_ptr + i, mask=im, other=0) >> 32).to(tl.int32), E + 1)
    pair = tl.load(order_ptr + i, mask=im, other=0)
    _place(ex, pair, i, cnt, sorted_ptr, offs_ptr, keep_ptr, pos_ptr, E, C,
           tl.program_id(0) == 0, HB)


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
    C = P if capacity is None else max(0, min(int(capacity), P))
    IB = max(1, (P - 1).bit_length())
    if (E + 1).bit_length() + IB <= PACKED_KEY_BITS:
        CH = min(CHUNK, triton.next_power_of_2(max(P, 2)))
        NC = triton.cdiv(P, CH)
        skeys = torch.empty(NC * CH if NC > 1 else 1, dtype=torch.int64, device=dev)
        hist = torch.empty(NC * HB if NC > 1 else 1, dtype=torch.int32, device=dev)
        warps = 4 if CH <= 256 else 8 if CH <= 1024 else 16
        _sort_chunks_kernel[(NC,)](pair_expert, priority, skeys, hist, sorted_pair, offsets, keep,
                                   position, P, E, C, IB=IB, CH=CH, HB=HB, SINGLE=NC == 1,
                                   num_warps=warps)
        if NC > 1:
            BLOCK = 256
            _merge_place_kernel[(triton.cdiv(NC * CH, BLOCK),)](
                skeys, hist, sorted_pair, offsets, keep, position, E, C, NC, IB=IB, CH=CH,
                LOG_CH=CH.bit_length() - 1, NCB=max(2, triton.next_power_of_2(NC)), HB=HB, BLOCK=BLOCK, num_warps=4)
        return sorted_pair, offsets, keep, position
    counts = torch.zeros(HB, dtype=torch.int32, device=dev)
    keys = torch.empty(P, dtype=torch.int64, device=dev)
    BLOCK = 1024
    grid = (triton.cdiv(P, BLOCK),)
    _key_kernel[grid](pair_expert, priority, keys, counts, P, E, BLOCK=BLOCK, HB=HB)
    skeys, order = torch.sort(keys, stable=True)
    _place_kernel[grid](skeys, order, counts, sorted_pair, offsets, keep, position, P, E, C,
                        BLOCK=BLOCK, HB=HB)
    return sorted_pair, offsets, keep, position
