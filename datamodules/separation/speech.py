"""The embedded two-speaker corpus: English sentences spoken by eSpeak NG voices, cached on disk.

Sentences come from a small seeded grammar (:func:`make_sentences`); voices are English accents
with eSpeak voice variants and per-speaker pitch, pitch range and rate (:func:`make_voices`).
The test split uses sentences and voice variants that training never sees. Each split's
utterances are synthesised once (eSpeak at 22.05 kHz, leading/trailing silence trimmed,
resampled to the target rate (torchaudio), peak-normalised) and cached as one ``.npz`` under
``$MMOE_HOME/data/separation`` whose name carries a hash of every generation setting.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mmoe.datamodules.separation.espeak import ESpeak, Voice, list_variants
from mmoe.inputs.audio import resample as resample_audio

#: bump when synthesis or the grammar changes: part of the cache key
GENERATOR_VERSION = 2  # 2: torchaudio's resampler instead of scipy's polyphase filter
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
Split = Literal["train", "val", "test"]

_SUBJECTS = ("the old man", "a young girl", "my neighbour", "the teacher", "our captain", "the farmer",
             "a tired doctor", "his sister", "the small child", "the baker", "every student", "the driver",
             "a quiet painter", "her brother", "the new manager", "the pilot", "a clever fox", "the gardener",
             "my uncle", "the singer", "a lonely sailor", "the judge", "our cousin", "the waiter")
_VERBS = ("carried", "painted", "found", "watched", "opened", "cleaned", "followed", "borrowed", "repaired",
          "described", "forgot", "admired", "bought", "delivered", "measured", "counted", "hid", "lifted",
          "sold", "returned", "noticed", "tested", "ordered", "moved")
_OBJECTS = ("a heavy wooden box", "the yellow kite", "seven silver coins", "the broken window", "a long letter",
            "the green bicycle", "three loaves of bread", "an ancient map", "the blue umbrella", "a basket of apples",
            "the morning paper", "a strange old clock", "the kitchen table", "two warm blankets", "a bottle of milk",
            "the garden gate", "a bag of marbles", "the paper lantern", "a set of keys", "the leather boots")
_PLACES = ("near the river", "behind the station", "in the quiet library", "at the busy market",
           "under the bridge", "beside the lake", "on the top floor", "inside the barn", "across the valley",
           "at the end of the street", "in the crowded hall", "along the coast", "by the old mill",
           "outside the bakery", "next to the church")
_TIMES = ("early this morning", "late last night", "before the storm", "after dinner", "on a rainy Sunday",
          "during the long winter", "just after midnight", "at noon yesterday", "in the spring",
          "while everyone slept")
_ENDINGS = ("and nobody said a word", "because the roads were closed", "while the band kept playing",
            "but the dog kept barking", "so the children laughed", "and then it started to snow",
            "although it was very late", "before anyone could stop them", "and the bells rang twice",
            "as the sun went down")


def make_sentences(num: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``num`` distinct sentences (subject, verb, object, place, time, optional clause), none in ``exclude``."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen = set(exclude)
    while len(out) < num:
        pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
        parts = [pick(_SUBJECTS), pick(_VERBS), pick(_OBJECTS), pick(_PLACES), pick(_TIMES)]
        if rng.random() < 0.6:
            parts.append(pick(_ENDINGS))
        sentence = " ".join(parts).capitalize() + "."
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out


def variant_split() -> tuple[list[str], list[str]]:
    """``(train variants, test variants)``: every fourth shipped variant is held out for testing."""
    variants = list_variants()
    test = variants[1::4]
    return [v for v in variants if v not in test], test


def make_voices(num: int, variants: list[str], seed: int) -> list[Voice]:
    """``num`` speakers: a random accent and variant, pitch 15..85, pitch range 20..90, rate 130..230 wpm."""
    rng = np.random.default_rng(seed)
    voices = []
    for _ in range(num):
        accent = ACCENTS[rng.integers(len(ACCENTS))]
        variant = variants[rng.integers(len(variants))]
        voices.append(Voice(f"{accent}+{variant}", pitch=int(rng.integers(15, 86)),
                            pitch_range=int(rng.integers(20, 91)), rate=int(rng.integers(130, 231))))
    return voices


def resample(audio: np.ndarray, orig: int, target: int) -> np.ndarray:
    """``audio`` from ``orig`` to ``target`` Hz with the one resampler every reader uses
    (:func:`mmoe.inputs.audio.resample`, torchaudio's windowed sinc)."""
    return resample_audio(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), orig, target).numpy()


def trim_silence(audio: np.ndarray, sample_rate: int, threshold_db: float = -40.0) -> np.ndarray:
    """Cut leading and trailing parts whose 10 ms frames are ``threshold_db`` below the peak frame."""
    hop = max(1, sample_rate // 100)
    n = len(audio) // hop
    if n == 0:
        return audio
    energy = (audio[: n * hop].reshape(n, hop) ** 2).mean(1)
    loud = np.flatnonzero(energy > energy.max() * 10 ** (threshold_db / 10))
    return audio[loud[0] * hop: (loud[-1] + 1) * hop]


# ----------------------------------------------------------------------------------- splits
def split_spec(split: Split, num_utterances: int, sample_rate: int, seed: int) -> dict:
    """Everything that decides a split's audio (the cache key is its hash)."""
    return {"split": split, "num_utterances": num_utterances, "sample_rate": sample_rate, "seed": seed,
            "version": GENERATOR_VERSION, "accents": list(ACCENTS)}


def split_plan(split: Split, num_utterances: int, seed: int) -> tuple[list[str], list[Voice], np.ndarray]:
    """``(sentences, voices, speaker per utterance)`` of a split.

    Train and validation share voice variants but not sentences; test sentences and variants are
    disjoint from both. Each utterance is one sentence by one of ``num_utterances // 4`` speakers
    (at least 8), so every speaker says several sentences.
    """
    train_variants, test_variants = variant_split()
    # the test sentences are drawn first and excluded from the others, so they never change
    test_sentences = make_sentences(600, seed=10_000 + seed)
    val_sentences = make_sentences(600, seed=20_000 + seed, exclude=set(test_sentences))
    num_speakers = max(8, num_utterances // 4)
    if split == "test":
        sentences, voices = test_sentences, make_voices(num_speakers, test_variants, seed=30_000 + seed)
    elif split == "val":
        sentences, voices = val_sentences, make_voices(num_speakers, train_variants, seed=40_000 + seed)
    else:
        sentences = make_sentences(max(num_utterances, 1), seed=50_000 + seed,
                                   exclude=set(test_sentences) | set(val_sentences))
        voices = make_voices(num_speakers, train_variants, seed=60_000 + seed)
    rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split]])
    picks = rng.permutation(len(sentences))[:num_utterances] if len(sentences) >= num_utterances else \
        rng.integers(len(sentences), size=num_utterances)
    speakers = np.arange(num_utterances) % num_speakers
    return [sentences[i] for i in picks], voices, speakers


def synthesize_split(split: Split, num_utterances: int, sample_rate: int, seed: int,
                     progress: bool = True) -> dict[str, np.ndarray]:
    """Synthesise a split: ``audio`` (all utterances concatenated, float32), ``offsets [N + 1]``,
    ``speaker [N]``, ``voices`` (JSON), ``sentences`` (JSON)."""
    from tqdm.auto import tqdm

    sentences, voices, speakers = split_plan(split, num_utterances, seed)
    engine = ESpeak.get()
    pieces = []
    for text, spk in tqdm(list(zip(sentences, speakers)), desc=f"eSpeak NG {split} ({sample_rate} Hz)",
                          unit="utt", disable=not progress):
        wav = trim_silence(engine.synthesize(text, voices[spk]), engine.sample_rate)
        wav = resample(wav, engine.sample_rate, sample_rate)
        pieces.append(wav / max(float(np.abs(wav).max()), 1e-6) * 0.9)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    return {"audio": np.concatenate(pieces).astype(np.float32), "offsets": offsets,
            "speaker": speakers.astype(np.int64),
            "voices": np.array(json.dumps([asdict(v) for v in voices])),
            "sentences": np.array(json.dumps(sentences))}


def default_cache_dir() -> Path:
    """``$MMOE_HOME/data/separation`` (``MMOE_HOME`` defaults to ``~/.cache/mmoe``)."""
    home = os.environ.get("MMOE_HOME") or os.path.join("~", ".cache", "mmoe")
    return Path(home).expanduser() / "data" / "separation"


def cache_path(split: Split, num_utterances: int, sample_rate: int, seed: int, cache_dir: str | Path) -> Path:
    spec = split_spec(split, num_utterances, sample_rate, seed)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"espeak_{split}_{sample_rate}hz_n{num_utterances}_s{seed}_{key}.npz"


def load_or_synthesize(split: Split, num_utterances: int, sample_rate: int, seed: int, cache_dir: str | Path,
                       progress: bool = True) -> dict[str, np.ndarray]:
    """The split from its cache file, synthesising and writing it (temp file + rename) when absent."""
    path = cache_path(split, num_utterances, sample_rate, seed, cache_dir)
    keys = ("audio", "offsets", "speaker", "voices", "sentences")
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in keys}
        except (OSError, ValueError, KeyError):
            pass  # unreadable (truncated): synthesise again
    data = synthesize_split(split, num_utterances, sample_rate, seed, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data
