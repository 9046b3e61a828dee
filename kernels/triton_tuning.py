"""Kernel configurations for the grouped expert MLP, a default pick, and an in-process tuner.

A :class:`Cfg` is one tile shape plus launch settings. :func:`default_cfg` picks from the row
count per expert and the problem size with a fixed rule; with ``MMOE_TRITON_TUNE=1`` (or
:func:`set_tuning`) :func:`pick` times every candidate once per key (kernel, shapes, dtype) and
caches the winner in a dict, so a process never re-tunes the same shape. Under
``TRITON_INTERPRET=1`` (CPU) a single small tile is used and nothing is timed.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_TUNE = os.environ.get("MMOE_TRITON_TUNE") == "1"
_CACHE: dict[tuple, "Cfg"] = {}


class Cfg(NamedTuple):
    BM: int
    BN: int
    BK: int
    warps: int
    stages: int
    split_k: int = 1  # only the scatter (down-projection) kernel splits K


def set_tuning(enabled: bool) -> None:
    """Turn timing-based selection on or off for this process (the cache is kept)."""
    global _TUNE
    _TUNE = enabled


def tuned_configs() -> dict[tuple, Cfg]:
    """The cache of tuned picks, key -> config."""
    return dict(_CACHE)


def candidates(kind: str, rows_per_expert: int) -> list[Cfg]:
    """A small candidate set for ``kind`` in {"up", "upbwd", "down", "wgrad"}."""
    if INTERPRET:
        return [Cfg(32, 64, 64, 4, 1)]
    if kind == "wgrad":  # tiles over (K, N) of each expert's weight, loop over its rows
        return [Cfg(128, 128, 64, 8, 3), Cfg(128, 128, 32, 4, 4), Cfg(64, 128, 64, 4, 3),
                Cfg(128, 256, 64, 8, 3), Cfg(256, 128, 64, 8, 3), Cfg(128, 128, 64, 4, 4)]
    if rows_per_expert <= 64:  # decode: weight-bandwidth bound, small M tiles
        c = [Cfg(16, 64, 128, 4, 4), Cfg(16, 128, 128, 4, 4), Cfg(32, 64, 128, 4, 4),
             Cfg(16, 64, 256, 4, 3)]
        if kind == "down":
            c += [Cfg(16, 64, 128, 4, 4, 2), Cfg(16, 128, 128, 4, 4, 4)]
        return c
    if kind in ("up", "upbwd"):  # two accumulators / z tiles for SwiGLU: BN counts each half
        return [Cfg(128, 128, 64, 8, 3), Cfg(128, 64, 64, 4, 4), Cfg(64, 128, 64, 4, 4),
                Cfg(128, 128, 64, 8, 4), Cfg(128, 64, 64, 8, 4), Cfg(256, 64, 64, 8, 3)]
    return [Cfg(128, 128, 64, 8, 3), Cfg(128, 256, 64, 8, 3), Cfg(64, 128, 64, 4, 4),
            Cfg(128, 128, 64, 4, 4), Cfg(256, 128, 64, 8, 3), Cfg(128, 128, 64, 8, 4)]


def fit(cfg: Cfg, elt: int, mult: int, limit: int = 180 * 1024) -> Cfg:
    """Shrink stages, then BK, until the pipelined tiles fit in shared memory."""
    while (cfg.BM * cfg.BK + mult * cfg.BK * cfg.BN) * elt * cfg.stages > limit:
        cfg = cfg._replace(stages=cfg.stages - 1) if cfg.stages > 2 else cfg._replace(BK=cfg.BK // 2)
    return cfg


def default_cfg(kind: str, rows_per_expert: int, n: int, swiglu: bool = False, elt: int = 2) -> Cfg:
    """The rule-based pick used when tuning is off (fitted to shared memory for ``elt`` bytes)."""
    return fit(_default(kind, rows_per_expert, n, swiglu), elt, 2 if kind == "up" and swiglu else 1)


def _default(kind: str, rows_per_expert: int, n: int, swiglu: bool) -> Cfg:
    # Winners of the candidate sweep on an H100 (benchmarks/moe_kernels.py --tune).
    if INTERPRET:
        return Cfg(32, 64, 64, 4, 1)
    if kind == "wgrad":
        return Cfg(128, 128, 64, 4, 4)
    if rows_per_expert <= 64:
        bm = 16 if rows_per_expert <= 16 else 32 if rows_per_expert <= 32 else 64
        if kind == "up":
            return Cfg(16, 128, 128, 4, 2) if bm == 16 else Cfg(bm, 64, 128, 4, 4)
        return Cfg(16, 128, 128, 4, 4, 4)  # split-K: more programs for few rows
    if kind == "up":  # forward SwiGLU holds two accumulators; "upbwd" loads two z tiles
        return Cfg(128, 128, 64, 8, 3) if swiglu else Cfg(128, 256, 64, 8, 3)
    if kind == "upbwd":
        return Cfg(128, 64, 64, 8, 4) if swiglu else Cfg(128, 128, 64, 8, 4)
    return Cfg(128, 256, 64, 8, 3) if n >= 4096 else Cfg(128, 128, 64, 8, 3)


def _bucket(rows: int) -> int:
    return 1 << max(0, int(rows - 1).bit_length())


def pick(kind: str, key: tuple, rows_per_expert: int, n: int, swiglu: bool,
         run: Callable[[Cfg], None], elt: int = 2) -> Cfg:
    """Config for one launch. ``run(cfg)`` must launch the kernel with fresh outputs."""
    if not _TUNE or INTERPRET:
        return default_cfg(kind, rows_per_expert, n, swiglu, elt)
    full = (kind, _bucket(rows_per_expert)) + key
    if full in _CACHE:
        return _CACHE[full]
    best, best_t = None, float("inf")
    mult = 2 if kind == "up" and swiglu else 1
    for cfg in dict.fromkeys(fit(c, elt, mult) for c in candidates(kind, rows_per_expert)):
        try:
            run(cfg)  # compile + warm
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                run(cfg)
            end.record()
            torch.cuda.synchronize()
            t = start.elapsed_time(end)
        except Exception:  # a config that does not fit (shared memory) is skipped
            continue
        if t < best_t:
            best, best_t = cfg, t
    best = best or default_cfg(kind, rows_per_expert, n, swiglu, elt)
    _CACHE[full] = best
    return best
