"""Low-latency streaming separation: ``s = model.stream(sample_rate)``, then ``s.push(chunk)``.

The offline model looks at whole chunks of seconds. The stream runs it on a sliding window:
every ``block`` new samples, on the last ``context`` samples plus the block plus ``lookahead``
samples after it, and emits the block. The algorithmic latency is ``block + lookahead`` (a
sample pushed at time t comes out once the samples up to ``t + block + lookahead`` are in).
Each block's speakers are put in the order that best matches what was already emitted, over the
part of the window that overlaps it (correlation), so the two outputs stay with one speaker.
Memory is bounded by one window whatever the stream's length; the cost is one model call per
block on ``context + block + lookahead`` samples.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from mmoe.inputs.audio import check_sample_rate, load_waveform


class SeparationStream:
    """Streaming separation with a model of :class:`~mmoe.tasks.separation.task.SeparationTask`.

    Args:
        task: the separation task model (eval mode is set for each call and restored).
        sample_rate: the rate of the pushed audio; it must be the model's (streams are not resampled).
        block_ms: samples emitted per model call, in milliseconds.
        lookahead_ms: future audio each block sees before it is emitted, in milliseconds.
        context_seconds: past audio each model call sees.
    """

    def __init__(self, task: Any, sample_rate: int, block_ms: float = 32.0, lookahead_ms: float = 32.0,
                 context_seconds: float = 1.0) -> None:
        rate = check_sample_rate(sample_rate)
        if rate != task.pre.sample_rate:
            raise ValueError(f"sample_rate: a stream runs at the model's rate, {task.pre.sample_rate} Hz, got {rate} "
                             "(resample the audio first, or use predict, which resamples whole inputs)")
        for name, value, low in (("block_ms", block_ms, 1.0), ("lookahead_ms", lookahead_ms, 0.0),
                                 ("context_seconds", context_seconds, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < low:
                raise ValueError(f"{name}: expected a finite number >= {low}, got {value!r}")
        self.task, self.rate = task, rate
        self.block = max(1, round(block_ms * rate / 1000))
        self.lookahead = round(lookahead_ms * rate / 1000)
        self.context = round(context_seconds * rate)
        self.align = max(self.block, min(self.context, rate // 4))  # emitted samples kept to align speakers
        self.num_speakers = task.pre.num_speakers
        self._perms = torch.tensor(list(itertools.permutations(range(self.num_speakers))))
        self._x = torch.zeros(0)  # input samples from absolute index self._base on
        self._base = 0
        self._emitted = 0  # absolute index of the next sample to emit
        self._history = torch.zeros(self.num_speakers, 0)  # the last emitted output samples, [S, <= align]

    @property
    def latency_seconds(self) -> float:
        """The algorithmic latency: block plus lookahead."""
        return (self.block + self.lookahead) / self.rate

    def push(self, chunk: np.ndarray | torch.Tensor) -> np.ndarray:
        """Add ``chunk`` (mono ``[samples]``, float or integer PCM) and return the sources
        ``[S, n]`` (float32) of the samples that can now be emitted (``n`` may be 0)."""
        x, _ = load_waveform(chunk, self.rate, arg="chunk")
        if x.ndim != 1:
            raise ValueError(f"chunk: expected mono samples [samples], got shape {tuple(x.shape)}")
        self._x = torch.cat([self._x, x.float().cpu()])
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        """The sources of the samples still held back (the last block and lookahead); ends the stream."""
        out = self._emit(final=True)
        self._x, self._base = torch.zeros(0), self._base + self._x.numel()
        return out

    def _emit(self, final: bool) -> np.ndarray:
        end_of_input = self._base + self._x.numel()
        parts = []
        while True:
            stop = min(self._emitted + self.block, end_of_input)
            if stop <= self._emitted or (not final and self._emitted + self.block + self.lookahead > end_of_input):
                break
            parts.append(self._separate_block(stop, min(stop + self.lookahead, end_of_input)))
        # past context only: older samples are dropped, so memory stays bounded
        keep_from = max(self._base, self._emitted - self.context)
        self._x, self._base = self._x[keep_from - self._base:], keep_from
        return (torch.cat(parts, -1) if parts else torch.zeros(self.num_speakers, 0)).numpy()

    def _separate_block(self, stop: int, window_end: int) -> torch.Tensor:
        start = max(self._base, self._emitted - self.context)
        window = self._x[start - self._base: window_end - self._base]
        param = next(self.task.parameters())
        was_training = self.task.training
        self.task.eval()
        try:
            with torch.no_grad():
                est = self.task.model(window[None].to(param.device, param.dtype))[0].float().cpu()  # [S, n]
        finally:
            self.task.train(was_training)
        seen = min(self._history.shape[-1], self._emitted - start)
        if seen > 0:  # the order that matches what was already emitted best
            past = est[:, self._emitted - start - seen: self._emitted - start]
            scores = torch.stack([(self._history[:, -seen:] * past[p]).sum() for p in self._perms])
            est = est[self._perms[int(scores.argmax())]]
        block = est[:, self._emitted - start: stop - start]
        self._history = torch.cat([self._history, block], -1)[:, -self.align:]
        self._emitted = stop
        return block
