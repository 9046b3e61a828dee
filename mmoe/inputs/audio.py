"""Audio input rules shared by every task that reads audio (separation, emotion) and their readers.

The rules, in one place:

* **Files** are read with soundfile: WAV, FLAC and OGG (:data:`AUDIO_FORMATS`). The frame and channel
  counts come from the header before anything is decoded; a file holding more than ``max_samples``
  samples (frames x channels, default :data:`MAX_AUDIO_SAMPLES`) is refused, and never more frames
  than the header declares are decoded. An unreadable or corrupt file is a ``ValueError`` naming the
  argument and the path.
* **Integer PCM** (arrays, tensors, files alike) becomes float32 in [-1, 1) by :func:`pcm_to_float`:
  signed integers are divided by their full scale ``2**(bits-1)``; unsigned integers (8-bit WAV) are
  first shifted down by half their range. Float input keeps its float dtype.
* **Layout**: a waveform is ``[samples]`` (mono), or ``[N, samples]`` where a task takes a batch.
  ``[samples, channels]`` (the soundfile/scipy layout of stereo) is refused with a hint, never read
  as many tiny mixtures: a 2-D input whose last axis is at most :data:`MAX_CHANNELS` long and
  shorter than its first is taken for that layout.
* **Sample rates** are ints in ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]`` Hz.
* **Resampling** is :func:`resample` (torchaudio's windowed-sinc resampler). Its filter grows with the
  product of the gcd-reduced rates: pairs whose filter would exceed :data:`MAX_RESAMPLE_KERNEL` entries
  (odd rates such as 8001 Hz) are refused; the usual rates (8, 11.025, 16, 22.05, 32, 44.1, 48, 96 kHz...)
  all pass.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
MAX_AUDIO_SAMPLES = 2**28  # 1 GiB as float32: about 4.6 hours of 16 kHz mono
MAX_CHANNELS = 8  # 7.1 audio; a 2-D input [L, c] with c <= this and L > c is channels-last
AUDIO_FORMATS = ("WAV", "WAVEX", "FLAC", "OGG")  # soundfile's names of the containers accepted
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")  # the file endings of those containers
# torchaudio builds a [new, orig + 2 * width] sinc kernel of the gcd-reduced rates: rates sharing no large
# factor (383999 -> 16000 Hz) would need 6e9 entries; this caps it at 32 MiB per float64 temporary
MAX_RESAMPLE_KERNEL = 2**22

_STEREO_HINT = "pass one channel (audio[:, 0]) or the mean over channels (audio.mean(axis=1))"


def check_sample_rate(sample_rate: Any, arg: str = "sample_rate") -> int:
    """``sample_rate`` as an int in ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``; ValueError naming ``arg`` otherwise."""
    if (isinstance(sample_rate, (bool, np.bool_)) or not isinstance(sample_rate, (int, np.integer))
            or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE):
        raise ValueError(f"{arg}: expected a positive int (Hz) in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}, "
                         f"got {sample_rate!r}")
    return int(sample_rate)


def pcm_to_float(data: np.ndarray) -> np.ndarray:
    """float32 samples in [-1, 1) from integer PCM, the way WAV files store them; floats are returned as given.

    Args:
        data: integer or float array; signed integers are divided by ``2**(bits-1)``, unsigned ones
            (8-bit WAV) are first shifted down by half their range (24-bit data arrives left-justified
            in int32).
    """
    if np.issubdtype(data.dtype, np.unsignedinteger):
        half = float(np.iinfo(data.dtype).max // 2 + 1)
        return ((data.astype(np.float64) - half) / half).astype(np.float32)
    if np.issubdtype(data.dtype, np.signedinteger):
        return (data.astype(np.float64) / float(np.iinfo(data.dtype).max + 1)).astype(np.float32)
    if np.issubdtype(data.dtype, np.floating):
        return data
    raise TypeError(f"expected real numbers (float or integer PCM), got dtype {data.dtype}")


def read_audio(path: str | os.PathLike, *, arg: str = "path", sample_rate: int | None = None,
               downmix: bool = False, max_samples: int = MAX_AUDIO_SAMPLES) -> tuple[np.ndarray, int]:
    """Mono float32 waveform ``[samples]`` of a WAV/FLAC/OGG file and its rate in Hz.

    Args:
        path: the audio file.
        arg: the argument named in errors.
        sample_rate: when given, the file must be at this rate.
        downmix: average the channels of a multi-channel file (otherwise such a file is refused).
        max_samples: refuse files declaring more than this many samples (frames x channels), read
            from the header before decoding.
    """
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{arg}: expected an existing audio file, got {str(path)!r}")
    try:
        with sf.SoundFile(str(p)) as f:
            frames, channels, rate, fmt = f.frames, f.channels, f.samplerate, f.format
            if fmt not in AUDIO_FORMATS:
                raise ValueError(f"{arg}: expected one of the formats {AUDIO_FORMATS}, got {fmt} in {str(path)!r}")
            if frames * channels > max_samples:
                raise ValueError(f"{arg}: {str(path)!r} declares {frames} frames x {channels} channels, more than "
                                 f"the cap of {max_samples} samples (max_samples)")
            if channels != 1 and not downmix:
                raise ValueError(f"{arg}: expected a mono file, got {channels} channels in {str(path)!r}")
            # never decode more than the header declared (a lying header cannot grow the buffer)
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except ValueError:
        raise
    except (RuntimeError, OSError, TypeError, EOFError) as e:  # soundfile's errors on corrupt files
        raise ValueError(f"{arg}: could not read {str(path)!r} as audio ({e})") from e
    check_sample_rate(rate, f"{arg} (the rate of {str(path)!r})")
    if sample_rate is not None and rate != sample_rate:
        raise ValueError(f"{arg}: expected {sample_rate} Hz audio, got {rate} Hz in {str(path)!r}")
    if data.shape[0] == 0:
        raise ValueError(f"{arg}: expected at least one sample, got an empty file {str(path)!r}")
    wave = data[:, 0] if channels == 1 else data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(wave).all():
        raise ValueError(f"{arg}: {str(path)!r} contains NaN or inf")
    return np.ascontiguousarray(wave), int(rate)


def resample(x: torch.Tensor, orig: int, target: int, arg: str = "sample_rate") -> torch.Tensor:
    """``x [..., L]`` resampled from ``orig`` to ``target`` Hz (torchaudio, windowed sinc); float32 out.

    Args:
        x: float waveforms, time last.
        orig: the rate of ``x`` in Hz.
        target: the rate wanted in Hz.
        arg: the argument named when the two rates need a filter over :data:`MAX_RESAMPLE_KERNEL` entries.
    """
    x = x.float()
    if orig == target or x.shape[-1] == 0:
        return x
    g = math.gcd(int(orig), int(target))
    o, n = int(orig) // g, int(target) // g
    # torchaudio's kernel (lowpass width 6), counted both ways so that a rate accepted on the way in
    # (predict's input to the model's rate) is accepted on the way back
    taps = max(b * (a + 2 * math.ceil(6 * a / (min(a, b) * 0.99))) for a, b in ((o, n), (n, o)))
    if taps > MAX_RESAMPLE_KERNEL:
        raise ValueError(f"{arg}: resampling {orig} Hz to {target} Hz needs a {taps}-entry filter (the rates "
                         f"share only the factor {g}; the cap is {MAX_RESAMPLE_KERNEL}): expected a usual rate "
                         f"such as 8000, 16000, 22050, 44100 or 48000 Hz")
    import torchaudio.functional

    return torchaudio.functional.resample(x, int(orig), int(target))


def as_waveform(audio: Any, *, arg: str = "audio", batch: bool = False) -> torch.Tensor:
    """A float CPU tensor from a numpy array or torch tensor of audio, its layout checked.

    Integer PCM comes back float32 (:func:`pcm_to_float`); float input keeps its float dtype.

    Args:
        audio: ``[samples]``, or ``[N, samples]`` when ``batch``.
        arg: the argument named in errors.
        batch: accept ``[N, samples]``.
    """
    if isinstance(audio, torch.Tensor):
        x = audio.detach().cpu()
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{arg}: expected real numbers (float or integer PCM), got dtype {x.dtype}")
        if not x.is_floating_point():  # integer PCM: the one conversion, shared with arrays and files
            x = torch.from_numpy(pcm_to_float(x.numpy()))
    elif isinstance(audio, np.ndarray):
        if audio.dtype == np.bool_ or not (np.issubdtype(audio.dtype, np.floating)
                                           or np.issubdtype(audio.dtype, np.integer)):
            raise TypeError(f"{arg}: expected real numbers (float or integer PCM), got dtype {audio.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(pcm_to_float(audio)))
    else:
        raise TypeError(f"{arg}: expected a numpy array, a torch tensor or an audio file path, "
                        f"got {type(audio).__name__}")
    expected = "a 1-D waveform [samples]" + (" or a batch [N, samples]" if batch else "")
    channels_last = x.ndim == 2 and x.shape[1] <= MAX_CHANNELS and x.shape[0] > x.shape[1]
    if channels_last:
        raise ValueError(f"{arg}: expected mono audio, {expected}, got shape {tuple(x.shape)}, which looks like "
                         f"[samples, channels] (the soundfile/scipy layout): {_STEREO_HINT}")
    if x.ndim != 1 and not (batch and x.ndim == 2):
        raise ValueError(f"{arg}: expected mono audio, {expected}, got shape {tuple(x.shape)} "
                         f"(stereo or multi-channel: {_STEREO_HINT})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{arg}: contains NaN or inf")
    return x


def load_waveform(audio: Any, sample_rate: Any, *, arg: str = "audio", rate_arg: str = "sample_rate",
                  batch: bool = False, downmix: bool = False,
                  max_samples: int = MAX_AUDIO_SAMPLES) -> tuple[torch.Tensor, int]:
    """predict's audio input as ``(float tensor, rate)``: an array/tensor with its rate, or a file path.

    Integer PCM comes back float32; float input keeps its float dtype; files come back float32 ``[samples]``.

    Args:
        audio: ``[samples]`` (``[N, samples]`` when ``batch``) numpy array or torch tensor, or an audio file path.
        sample_rate: the rate of an array in Hz (required); for a file, None or the file's own rate.
        arg: the name of ``audio`` in errors.
        rate_arg: the name of ``sample_rate`` in errors.
        batch: accept ``[N, samples]`` arrays.
        downmix: average the channels of a multi-channel file (otherwise refused).
        max_samples: the cap on a file's declared samples (see :func:`read_audio`).
    """
    if isinstance(audio, (str, os.PathLike)):
        x, rate = read_audio(audio, arg=arg, downmix=downmix, max_samples=max_samples)
        if sample_rate is not None and sample_rate != rate:
            raise ValueError(f"{rate_arg}: the file {str(audio)!r} is {rate} Hz, got {rate_arg}={sample_rate!r}")
        return torch.from_numpy(x), rate
    x = as_waveform(audio, arg=arg, batch=batch)
    if sample_rate is None:
        raise ValueError(f"{rate_arg}: required with an array or tensor input (the rate of {arg} in Hz), got None")
    return x, check_sample_rate(sample_rate, rate_arg)


__all__ = ["AUDIO_FORMATS", "MAX_AUDIO_SAMPLES", "MAX_CHANNELS", "MAX_RESAMPLE_KERNEL", "MAX_SAMPLE_RATE",
           "MIN_SAMPLE_RATE", "as_waveform", "check_sample_rate", "load_waveform", "pcm_to_float", "read_audio",
           "resample"]
