"""What separation predict needs: input checks, chunking, and the sources at the input's rate (the
preprocessing config is the data's: :mod:`mmoe.datamodules.separation.preprocess`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmoe.datamodules.separation.preprocess import SeparationPreprocess
from mmoe.inputs.audio import load_waveform, resample


def prepare_audio(pre: SeparationPreprocess, audio: Any, sample_rate: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check and convert predict's input into ``{"mixture": [N, L] at pre.sample_rate, "chunked": True}``.

    ``audio``: 1-D array/tensor ``[L]`` (one mixture), 2-D ``[N, L]`` (a batch; ``[L, channels]`` is
    refused), or a WAV/FLAC/OGG path (its own rate; ``sample_rate`` must then be None or equal to it).
    The rules (integer PCM, layouts, rates, file caps) are :mod:`mmoe.inputs.audio`'s.
    """
    x, rate = load_waveform(audio, sample_rate, arg="audio", batch=True)
    if x.shape[0] == 0 or x.shape[-1] == 0:
        raise ValueError(f"audio: expected at least one sample, got shape {tuple(x.shape)}")
    # outputs come back in the input's float dtype; integer PCM and files come back float32
    if isinstance(audio, torch.Tensor):
        kind, dtype, np_dtype = "torch", audio.dtype if audio.is_floating_point() else torch.float32, None
    else:
        floating = isinstance(audio, np.ndarray) and np.issubdtype(audio.dtype, np.floating)
        kind, dtype, np_dtype = "numpy", None, audio.dtype if floating else np.float32
    batched = x.ndim == 2
    length = x.shape[-1]
    x = resample(x.reshape(-1, length), rate, pre.sample_rate)
    context = {"sample_rate": rate, "length": length, "batched": batched, "kind": kind, "dtype": dtype,
               "np_dtype": np_dtype}
    return {"mixture": x, "chunked": True}, context


def finish_audio(pre: SeparationPreprocess, output: dict[str, torch.Tensor], context: dict[str, Any]) -> Any:
    """Estimates ``[N, S, L']`` back to the input's rate and length: ``[S, samples]`` (``[N, S, samples]``
    for a batch), numpy for numpy/path inputs, torch for tensors; the input's float dtype, float32 for
    integer PCM and files."""
    est = output["sources"].detach().float().cpu()
    est = resample(est, pre.sample_rate, context["sample_rate"])
    L = context["length"]
    if est.shape[-1] < L:
        est = torch.nn.functional.pad(est, (0, L - est.shape[-1]))
    est = est[..., :L]
    if not context["batched"]:
        est = est[0]
    if context["kind"] == "torch":
        return est.to(context["dtype"])
    return est.numpy().astype(context["np_dtype"], copy=False)
