"""What separation predict needs: the preprocess config and the input/output functions."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class SeparationPreprocess:
    """Data settings of a separation model (provided by ``SeparationDataModule.preprocess``).

    Args:
        sample_rate: the rate the model was trained at; predict resamples other rates to it and back.
        num_speakers: sources per mixture.
        chunk_seconds: inputs longer than this are separated in overlapping chunks of this length.
        overlap_seconds: overlap of neighbouring chunks (used to align speaker order and to cross-fade).
    """

    sample_rate: int = 8000
    num_speakers: int = 2
    chunk_seconds: float = 4.0
    overlap_seconds: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "num_speakers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"preprocess.{name}: expected a positive int, got {v!r}")
        for name in ("chunk_seconds", "overlap_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"preprocess.{name}: expected a finite number >= 0, got {v!r}")
        if not 0 < self.overlap_seconds < self.chunk_seconds / 2:
            raise ValueError(f"preprocess.overlap_seconds: expected 0 < overlap < chunk_seconds / 2 = "
                             f"{self.chunk_seconds / 2}, got {self.overlap_seconds}")


def resample_torch(x: torch.Tensor, orig: int, target: int) -> torch.Tensor:
    """Polyphase resampling of ``x [..., L]`` (scipy) from ``orig`` to ``target`` Hz, float32."""
    if orig == target:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(orig, target)
    y = resample_poly(x.detach().cpu().double().numpy(), target // g, orig // g, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))


def prepare_audio(pre: SeparationPreprocess, audio: Any, sample_rate: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check and convert predict's input into ``{"mixture": [N, L] at pre.sample_rate, "chunked": True}``.

    ``audio``: 1-D array/tensor ``[L]`` (one mixture), 2-D ``[N, L]`` (a batch), or a wav path
    (its own rate; ``sample_rate`` must then be None or equal to it).
    """
    batched = False
    if isinstance(audio, (str, os.PathLike)):
        from mmoe.datamodules.separation.readers import read_audio

        path = Path(audio)
        if not path.is_file():
            raise ValueError(f"audio: expected an existing audio file, got {str(audio)!r}")
        try:
            data, rate = read_audio(path, arg="audio")
        except ValueError:
            raise
        except Exception as e:  # soundfile's own errors: not an audio file
            raise ValueError(f"audio: could not read {str(audio)!r} as audio ({e})") from e
        if sample_rate is not None and sample_rate != rate:
            raise ValueError(f"sample_rate: the file {str(audio)!r} is {rate} Hz, got sample_rate={sample_rate}")
        x, sample_rate = torch.from_numpy(data)[None], rate
        kind = "numpy"
    else:
        if isinstance(audio, np.ndarray):
            if not (np.issubdtype(audio.dtype, np.floating) or np.issubdtype(audio.dtype, np.integer)):
                raise TypeError(f"audio: expected a float or int array, got dtype {audio.dtype}")
            kind = "numpy"
            x = torch.from_numpy(np.ascontiguousarray(audio))
        elif isinstance(audio, torch.Tensor):
            kind = "torch"
            x = audio.detach().cpu()
            if x.is_complex() or x.dtype == torch.bool:
                raise TypeError(f"audio: expected a real float tensor, got dtype {x.dtype}")
        else:
            raise TypeError(f"audio: expected a 1-D/2-D numpy array or torch tensor or a wav path, "
                            f"got {type(audio).__name__}")
        if x.ndim == 2:
            batched = True
        elif x.ndim != 1:
            raise ValueError(f"audio: expected mono audio [samples] or a batch [N, samples], got shape "
                             f"{tuple(x.shape)} (stereo: pass one channel or their mean)")
        if sample_rate is None:
            raise ValueError("sample_rate: required with an array or tensor input (the rate of `audio` in Hz), "
                             "got None")
        if not torch.is_floating_point(x):
            info = np.iinfo(audio.dtype) if kind == "numpy" else torch.iinfo(x.dtype)
            x = x.double() / max(abs(info.min), info.max)  # integer PCM to [-1, 1]
        x = x.reshape(-1, x.shape[-1]) if x.ndim == 2 else x[None]
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate: expected a positive int (Hz), got {sample_rate!r}")
    sample_rate = int(sample_rate)
    if x.shape[0] == 0 or x.shape[-1] == 0:
        raise ValueError(f"audio: expected at least one sample, got shape {tuple(x.shape if batched else x.shape[1:])}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("audio: contains NaN or inf")
    dtype = x.dtype if x.is_floating_point() and kind == "torch" else None
    out_np_dtype = audio.dtype if kind == "numpy" and isinstance(audio, np.ndarray) and \
        np.issubdtype(audio.dtype, np.floating) else np.float32
    length = x.shape[-1]
    x = resample_torch(x.float(), sample_rate, pre.sample_rate)
    context = {"sample_rate": sample_rate, "length": length, "batched": batched, "kind": kind, "dtype": dtype,
               "np_dtype": out_np_dtype}
    return {"mixture": x.float(), "chunked": True}, context


def finish_audio(pre: SeparationPreprocess, output: dict[str, torch.Tensor], context: dict[str, Any]) -> Any:
    """Estimates ``[N, S, L']`` back to the input's rate and length: ``[S, samples]`` (``[N, S, samples]``
    for a batch), numpy for numpy/path inputs, torch (input dtype) for tensors."""
    est = output["sources"].detach().float().cpu()
    est = resample_torch(est, pre.sample_rate, context["sample_rate"])
    L = context["length"]
    if est.shape[-1] < L:
        est = torch.nn.functional.pad(est, (0, L - est.shape[-1]))
    est = est[..., :L]
    if not context["batched"]:
        est = est[0]
    if context["kind"] == "torch":
        return est.to(context["dtype"] or torch.float32)
    return est.numpy().astype(context["np_dtype"], copy=False)
