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
    """A small candidate set for ``kind`` in {"up", "down", "wgrad"}."""
    if INTERPRET:
        return [Cfg(16, 32, 32, 4, 1)]
    if kind == "wgrad":  # tiles over (K, N) of each expert's weight, loop over its rows
        return [Cfg(128, 128, 64, 8, 3), Cfg(128, 128, 32, 4, 4), Cfg(64, 128, 64, 4, 3),
                Cfg(128, 256, 64, 8, 3)]
    if rows_per_expert <= 64:  # decode: weight-bandwidth bound, small M tiles
        c = [Cfg(16, 64, 128, 4, 4), Cfg(16, 128, 128, 4, 4), Cfg(32, 64, 128, 4, 4),
             Cfg(16, 64, 256, 4, 3)]
        if kind == "down":
            c += [Cfg(16, 64, 128, 4, 4, 2), Cfg(16, 128, 128, 4, 4, 4)]
        return c
    if kind == "up":  # two accumulators for SwiGLU: BN counts each half
        return [Cfg(128, 128, 64, 8, 3), Cfg(128, 64, 64, 4, 4), Cfg(64, 128, 64, 4, 4),
                Cfg(128, 128, 64, 8, 4)]
    return [Cfg(128, 128, 64, 8, 3), Cfg(128, 256, 64, 8, 3), Cfg(64, 128, 64, 4, 4),
            Cfg(128, 128, 64, 4, 4)]


def default_cfg(kind: str, rows_per_expert: int, n: int, swiglu: bool = False) -> Cfg:
    """The rule-based pick used when tuning is off."""
    if INTERPRET:
        return Cfg(16, 32, 32, 4, 1)
    if kind == "wgrad":
        return Cfg(128, 128, 64, 8, 3)
    if rows_per_expert <= 64:
        return Cfg(16, 64, 128, 4, 4)
    if kind == "up":
        return Cfg(128, 128, 64, 8, 3) if swiglu else Cfg(128, 256, 64, 8, 3)
    return Cfg(128, 256, 64, 8, 3) if n >= 2048 else Cfg(128, 128, 64, 8, 3)


def _bucket(rows: int) -> int:
    return 1 << max(0, int(rows - 1).bit_length())


def pick(kind: str, key: tuple, rows_per_expert: int, n: int, swiglu: bool,
         run: Callable[[Cfg], None]) -> Cfg:
    """Config for one launch. ``run(cfg)`` must launch the kernel with fresh outputs."""
    if not _TUNE or INTERPRET:
        return default_cfg(kind, rows_per_expert, n, swiglu)
    full = (kind, _bucket(rows_per_expert)) + key
    if full in _CACHE:
        return _CACHE[full]
    best, best_t = None, float("inf")
    for cfg in candidates(kind, rows_per_expert):
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
    best = best or default_cfg(kind, rows_per_expert, n, swiglu)
    _CACHE[full] = best
    return best
