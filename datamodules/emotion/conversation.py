"""Conversation inputs: checking, resampling, tokenization and batching of utterances.

One code path prepares utterances for training (the emotion datamodule) and for inference
(``EmotionTask.predict``), so both see identical inputs.

An utterance is ``{"audio": 1-D float array or audio file path, "sample_rate": int, "text": str}``
(``sample_rate`` is required with an array and read from the file with a path). A batch of
conversations is a dict of tensors:

* ``labels [B, U]`` (long, -1 = padding or unknown), ``types [B, U]`` (utterance type, -1 unknown),
* ``utterance_index [B, U]``: row of the utterance in the flat tensors below, -1 = padding;
  rows are in conversation-major order, so ``labels[utterance_index >= 0]`` lines up with them,
* ``audio [N, S]`` float32 waveforms at the model's sample rate, zero-padded; ``audio_lengths [N]``,
* ``text [N, L]`` open_clip BPE token ids (0 = padding).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import torch

from mmoe.inputs.audio import load_waveform, resample

SAMPLE_RATE = 16_000


@lru_cache(maxsize=1)
def _tokenizer():
    import open_clip  # the BPE vocabulary ships inside the package: no download

    return open_clip.tokenizer.SimpleTokenizer()


def tokenize(texts: Sequence[str], context_length: int) -> torch.Tensor:
    """open_clip BPE ids ``[len(texts), context_length]`` (start and end tokens included, 0-padded,
    long texts truncated with the end token kept)."""
    if not texts:
        return torch.zeros(0, context_length, dtype=torch.long)
    return _tokenizer()(list(texts), context_length=context_length).long()


def prepare_audio(audio: Any, sample_rate: int | None, target_rate: int = SAMPLE_RATE,
                  max_seconds: float | None = None, name: str = "audio") -> torch.Tensor:
    """Mono float32 waveform at ``target_rate`` from a 1-D array/tensor (with ``sample_rate``) or a
    WAV/FLAC/OGG path (multi-channel files averaged), cropped to ``max_seconds``. The rules (integer
    PCM, layouts, rates, file caps, the resampler) are :mod:`mmoe.inputs.audio`'s; errors name ``name``."""
    # "conversation[3]['audio']" -> "conversation[3]['sample_rate']": errors name the key the user set
    rate_name = name[: -len("['audio']")] + "['sample_rate']" if name.endswith("['audio']") else "sample_rate"
    x, rate = load_waveform(audio, sample_rate, arg=name, rate_arg=rate_name, downmix=True)
    x = resample(x, rate, target_rate, arg=rate_name)
    if max_seconds is not None:
        x = x[: int(max_seconds * target_rate)]
    return x.contiguous()


def check_conversation(conversation: Any, name: str = "conversation") -> list[dict]:
    """Checks the structure of a conversation (a non-empty list of utterance dicts)."""
    if not isinstance(conversation, (list, tuple)):
        raise TypeError(f"{name}: expected a list of utterance dicts, got {type(conversation).__name__}")
    if not conversation:
        raise ValueError(f"{name}: expected at least one utterance, got an empty list")
    for i, utt in enumerate(conversation):
        if not isinstance(utt, dict):
            raise TypeError(f"{name}[{i}]: expected a dict with 'audio' and 'text', got {type(utt).__name__}")
        missing = [k for k in ("audio", "text") if k not in utt]
        if missing:
            raise ValueError(f"{name}[{i}]: missing keys {missing} (expected 'audio', 'text' and, with an array, 'sample_rate')")
        if not isinstance(utt["text"], str):
            raise TypeError(f"{name}[{i}]['text']: expected str, got {type(utt['text']).__name__}")
    return list(conversation)


def collate_conversations(conversations: Sequence[Sequence[dict]], context_length: int,
                          sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> dict[str, torch.Tensor]:
    """Batch of conversations (see the module docstring). Utterance dicts may carry ``label``
    and ``type``; each ``audio`` goes through :func:`prepare_audio`."""
    B = len(conversations)
    U = max((len(c) for c in conversations), default=0)
    labels = torch.full((B, U), -1, dtype=torch.long)
    types = torch.full((B, U), -1, dtype=torch.long)
    index = torch.full((B, U), -1, dtype=torch.long)
    waves, texts = [], []
    for b, conv in enumerate(conversations):
        for u, utt in enumerate(conv):
            index[b, u] = len(waves)
            labels[b, u] = int(utt.get("label", -1))
            types[b, u] = int(utt.get("type", -1))
            # every utterance is checked (and resampled when needed): cheap for 1-D tensors
            waves.append(prepare_audio(utt["audio"], utt.get("sample_rate"), sample_rate, max_seconds,
                                       name=f"conversation[{u}]['audio']"))
            texts.append(utt["text"])
    lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
    S = int(lengths.max()) if len(waves) else 0
    audio = torch.zeros(len(waves), max(S, 1))
    for i, w in enumerate(waves):
        audio[i, : w.numel()] = w
    return {"labels": labels, "types": types, "utterance_index": index, "audio": audio,
            "audio_lengths": lengths, "text": tokenize(texts, context_length)}


def num_frames(lengths: torch.Tensor, hop_length: int) -> torch.Tensor:
    """STFT frames (centered) of waveforms of ``lengths`` samples."""
    return torch.div(lengths, hop_length, rounding_mode="floor") + 1


def num_patches(frames: torch.Tensor, patch: int) -> torch.Tensor:
    return torch.div(frames + patch - 1, patch, rounding_mode="floor")


__all__ = ["SAMPLE_RATE", "check_conversation", "collate_conversations", "num_frames", "num_patches",
           "prepare_audio", "tokenize"]
