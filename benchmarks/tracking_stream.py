"""Streaming throughput of a tracker: frames/s through ``tracker.update`` (issue 29, item 4).

    python benchmarks/tracking_stream.py                       # the released tracking-rgbd-moe
    python benchmarks/tracking_stream.py --model path.safetensors --threads 2 --runs 3

Per setting (frame size x with/without X): one embedded test-split sequence (``render_sequence``,
seed 9100) as uint8 RGB frames and uint8 X frames already in memory, so decoding is not timed;
``model.track`` on frame 0, then ``update`` on every next frame. frames/s = updated frames / the
update loop's seconds (the one-off ``track`` excluded), median of ``--runs`` after one warm-up, at
the model's shipped search size, ``torch.set_num_threads(--threads)``. Larger frames are the same
sequence resized (the crops the model sees are the same size, so only cropping costs more).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import cv2
import numpy as np
import torch

import mmoe
from mmoe.datamodules.tracking.synthetic import render_sequence


def frames_per_second(model, frames: list[np.ndarray], xs: list[np.ndarray] | None, box: np.ndarray,
                      runs: int) -> float:
    rates = []
    for r in range(runs + 1):
        tracker = model.track(frames[0], box, xs[0] if xs is not None else None)
        start = time.perf_counter()
        for k in range(1, len(frames)):
            tracker.update(frames[k], xs[k] if xs is not None else None)
        if r:  # the first run warms up
            rates.append((len(frames) - 1) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tracking-rgbd-moe", help="zoo name, .safetensors or .ckpt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--length", type=int, default=120, help="frames of the sequence")
    parser.add_argument("--sizes", nargs="+", default=["144x192", "480x640"], help="frame HxW")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = mmoe.load(args.model).float().eval()
    pre = model.pre
    seq = render_sequence(9_100, "test", pre.modality or "depth", length=args.length)
    print(f"# {args.model}: streaming update, {datetime.date.today()}, torch threads {torch.get_num_threads()}, "
          f"search size {pre.search_size}, template size {pre.template_size}, {args.length} frames, "
          f"median of {args.runs} after a warm-up\n")
    print("| frame size | X | frames/s | load avg (1 min) |\n|---|---|---|---|")
    H0, W0 = seq.frames.shape[1:3]
    for size in args.sizes:
        H, W = (int(v) for v in size.split("x"))
        scale = np.array([W / W0, H / H0, W / W0, H / H0])
        frames = [cv2.resize(f, (W, H), interpolation=cv2.INTER_LINEAR) for f in seq.frames]
        xs = [cv2.resize(np.round(x * 255).astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST)
              for x in seq.x]
        for with_x in ((True, False) if pre.modality is not None else (False,)):
            fps = frames_per_second(model, frames, xs if with_x else None, seq.boxes[0] * scale, args.runs)
            print(f"| {H}x{W} | {'yes' if with_x else 'no'} | {fps:.1f} | {os.getloadavg()[0]:.2f} |")


if __name__ == "__main__":
    main()
