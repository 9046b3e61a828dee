"""Conversation inputs: checking, resampling, tokenization and batching of utterances.

One code path prepares utterances for training (the emotion datamodule) and for inference
(``EmotionTask.predict``), so both see identical inputs.

An utterance is ``{"audio": 1-D float array or audio file path, "sample_rate": int, "text": str}``
(``sample_rate`` is required with an array and read from the file with a path); either modality
may be absent (a text-only or a speech-only turn: the key missing or None). A conversation may
also be a plain string or a list of strings (text-only turns). A batch of conversations is a dict:

* ``labels [B, U]`` (long, -1 = padding or unknown), ``types [B, U]`` (utterance type, -1 unknown),
* ``utterance_index [B, U]``: row of the utterance in the flat tensors below, -1 = padding;
  rows are in conversation-major order, so ``labels[utterance_index >= 0]`` lines up with them,
* ``audio [N, S]`` float32 waveforms at the model's sample rate, zero-padded; ``audio_lengths [N]``,
* ``text [N, L]`` open_clip BPE token ids (0 = padding); ``texts``: the N strings (for a sentence encoder),
* ``has_audio [N]``, ``has_text [N]`` (bool): which modalities the utterance carries; an absent
  one is an empty waveform / empty string in the tensors above and the model ignores it.
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
    """A conversation as a non-empty list of utterance dicts, checked.

    A string is one text-only turn and a list of strings text-only turns; a dict needs ``"text"``
    (str), ``"audio"`` or both (a missing key or None: that modality is absent).
    """
    if isinstance(conversation, str):
        conversation = [conversation]
    if not isinstance(conversation, (list, tuple)):
        raise TypeError(f"{name}: expected a list of utterance dicts or strings (or one string), "
                        f"got {type(conversation).__name__}")
    if not conversation:
        raise ValueError(f"{name}: expected at least one utterance, got an empty list")
    out = []
    for i, utt in enumerate(conversation):
        if isinstance(utt, str):
            utt = {"text": utt}
        if not isinstance(utt, dict):
            raise TypeError(f"{name}[{i}]: expected a dict with 'text' and/or 'audio' (or a string), "
                            f"got {type(utt).__name__}")
        if utt.get("audio") is None and utt.get("text") is None:
            raise ValueError(f"{name}[{i}]: expected 'text', 'audio' (with 'sample_rate' for an array) or both, "
                             f"got keys {sorted(map(str, utt))}")
        if utt.get("text") is not None and not isinstance(utt["text"], str):
            raise TypeError(f"{name}[{i}]['text']: expected str, got {type(utt['text']).__name__}")
        if utt.get("audio") is None and utt.get("sample_rate") is not None:
            raise ValueError(f"{name}[{i}]['sample_rate']: given without 'audio' (a text-only turn takes no rate), "
                             f"got {utt['sample_rate']!r}")
        out.append(utt)
    return out


def collate_conversations(conversations: Sequence[Sequence[dict]], context_length: int,
                          sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> dict[str, torch.Tensor]:
    """Batch of conversations (see the module docstring). Utterance dicts may carry ``label``
    and ``type``; each ``audio`` goes through :func:`prepare_audio`."""
    B = len(conversations)
    U = max((len(c) for c in conversations), default=0)
    labels = torch.full((B, U), -1, dtype=torch.long)
    types = torch.full((B, U), -1, dtype=torch.long)
    index = torch.full((B, U), -1, dtype=torch.long)
    waves, texts, has_audio, has_text = [], [], [], []
    for b, conv in enumerate(conversations):
        for u, utt in enumerate(conv):
            index[b, u] = len(waves)
            labels[b, u] = int(utt.get("label", -1))
            types[b, u] = int(utt.get("type", -1))
            audio, text = utt.get("audio"), utt.get("text")
            has_audio.append(audio is not None)
            has_text.append(text is not None)
            # every utterance is checked (and resampled when needed): cheap for 1-D tensors
            waves.append(torch.zeros(0) if audio is None else
                         prepare_audio(audio, utt.get("sample_rate"), sample_rate, max_seconds,
                                       name=f"conversation[{u}]['audio']"))
            texts.append("" if text is None else text)
    lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
    S = int(lengths.max()) if len(waves) else 0
    audio = torch.zeros(len(waves), max(S, 1))
    for i, w in enumerate(waves):
        audio[i, : w.numel()] = w
    return {"labels": labels, "types": types, "utterance_index": index, "audio": audio,
            "audio_lengths": lengths, "text": tokenize(texts, context_length), "texts": texts,
            "has_audio": torch.tensor(has_audio, dtype=torch.bool), "has_text": torch.tensor(has_text, dtype=torch.bool)}


def num_frames(lengths: torch.Tensor, hop_length: int) -> torch.Tensor:
    """STFT frames (centered) of waveforms of ``lengths`` samples."""
    return torch.div(lengths, hop_length, rounding_mode="floor") + 1


def num_patches(frames: torch.Tensor, patch: int) -> torch.Tensor:
    return torch.div(frames + patch - 1, patch, rounding_mode="floor")


__all__ = ["SAMPLE_RATE", "check_conversation", "collate_conversations", "num_frames", "num_patches",
           "prepare_audio", "tokenize"]
