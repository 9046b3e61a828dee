"""Streaming separation against the offline model, on the released model's embedded test split.

    python benchmarks/separation_stream.py --model separation-tfmoe-8k --mixtures 20

For each (block, lookahead, context) setting: SI-SNRi (best permutation, mean over mixtures) of the
stream (audio pushed in 10 ms chunks) beside the offline ``predict`` of the same mixtures, the
algorithmic latency, and the real-time factor of the stream (audio seconds per compute second)
on this machine. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import mmoe
from mmoe.datamodules.separation.datamodule import SeparationDataModule
from mmoe.tasks.separation.metrics import SISNRi

SETTINGS = [(32.0, 32.0, 0.5), (32.0, 32.0, 1.0), (64.0, 0.0, 1.0)]


def run_stream(model, mixture: np.ndarray, block: float, lookahead: float, context: float) -> tuple[np.ndarray, float]:
    """The stream's sources of ``mixture`` (pushed 10 ms at a time) and the compute seconds."""
    s = model.stream(8000, block_ms=block, lookahead_ms=lookahead, context_seconds=context)
    start, parts = time.perf_counter(), []
    for i in range(0, len(mixture), 80):
        parts.append(s.push(mixture[i:i + 80]))
    parts.append(s.flush())
    return np.concatenate(parts, -1), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="separation-tfmoe-8k")
    ap.add_argument("--mixtures", type=int, default=20, help="first N mixtures of the test split")
    args = ap.parse_args()
    model = mmoe.load(args.model).float()
    dm = SeparationDataModule(test_mixtures=100, progress=False)  # the released model's test split
    dm.setup("test")
    items = [dm.test_set[k] for k in range(min(args.mixtures, len(dm.test_set)))]
    offline = SISNRi()
    for it in items:
        offline.update(torch.from_numpy(model.predict(it["mixture"].numpy(), sample_rate=8000))[None],
                       it["sources"][None], it["mixture"][None])
    seconds = sum(it["mixture"].shape[-1] for it in items) / 8000
    print(f"{len(items)} mixtures, {seconds:.1f} s of audio; offline SI-SNRi {float(offline.compute()):.2f} dB\n")
    print("| block ms | lookahead ms | context s | latency ms | SI-SNRi dB | offline dB | x real time |")
    print("|---|---|---|---|---|---|---|")
    for block, look, ctx in SETTINGS:
        metric, compute = SISNRi(), 0.0
        for it in items:
            est, sec = run_stream(model, it["mixture"].numpy(), block, look, ctx)
            compute += sec
            assert est.shape == tuple(it["sources"].shape), est.shape
            metric.update(torch.from_numpy(est)[None], it["sources"][None], it["mixture"][None])
        print(f"| {block:g} | {look:g} | {ctx:g} | {block + look:g} | {float(metric.compute()):.2f} | "
              f"{float(offline.compute()):.2f} | {seconds / compute:.1f} |")


if __name__ == "__main__":
    main()
