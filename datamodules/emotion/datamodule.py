"""EmotionDataModule: emotion recognition in conversations (speech + text).

``dataset="synthetic"`` (the default) generates conversations of raw audio and text
(:mod:`mmoe.datamodules.emotion.synthetic`, no download); ``"iemocap"`` and ``"meld"`` read the
real datasets from ``root`` (:mod:`mmoe.datamodules.emotion.readers`). Splits are by
conversation. A batch holds ``batch_size`` conversations in the layout of
:mod:`mmoe.datamodules.emotion.conversation`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmoe.datamodules.base import MMoEDataModule
from mmoe.datamodules.emotion import predict_files
from mmoe.datamodules.emotion.conversation import SAMPLE_RATE, collate_conversations
from mmoe.datamodules.emotion.preprocess import EmotionPreprocess
from mmoe.datamodules.emotion.readers import IEMOCAP_CLASSES, MELD_CLASSES, read_iemocap, read_meld
from mmoe.datamodules.emotion.synthetic import CLASSES, UTTERANCE_TYPES, generate_conversations
from mmoe.inputs.audio import pcm_to_float
from mmoe.validation import check_choice, check_positive_int

DATASETS = ("synthetic", "iemocap", "meld")


class ConversationDataset(Dataset):
    """Conversations (lists of utterance dicts). Generated audio is kept as int16 in memory and
    returned as float; paths and arrays are read, checked and resampled by the collate function
    (:func:`mmoe.datamodules.emotion.conversation.collate_conversations`)."""

    def __init__(self, conversations: list[list[dict]]) -> None:
        self.conversations = conversations

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, i: int) -> list[dict]:
        out = []
        for utt in self.conversations[i]:
            audio = utt["audio"]
            if isinstance(audio, np.ndarray) and audio.dtype == np.int16:  # the one PCM conversion (as wav files)
                audio = torch.from_numpy(pcm_to_float(audio))
            out.append({**utt, "audio": audio})
        return out


def _windows(conversations: list[list[dict]], max_turns: int | None) -> list[list[dict]]:
    if max_turns is None:
        return conversations
    return [c[i: i + max_turns] for c in conversations for i in range(0, len(c), max_turns)]


class EmotionDataModule(MMoEDataModule):
    """Conversations for emotion recognition; see the module docstring.

    Args:
        dataset: ``"synthetic"``, ``"iemocap"`` (sessions 1-4 train, 5 test) or ``"meld"``
            (its train/dev/test splits).
        root: dataset folder for the real datasets.
        num_conversations: synthetic conversations in all splits together.
        val_fraction, test_fraction: synthetic split fractions (by conversation); for IEMOCAP
            ``val_fraction`` of the training dialogs is held out for validation.
        min_turns, max_turns_generated: synthetic conversation lengths.
        everyday_text: share of the synthetic text-cued turns that say their emotion in an everyday
            sentence (:mod:`mmoe.datamodules.emotion.everyday`) rather than the keyword grammar.
        max_turns: cut longer conversations into windows of this many utterances (None: keep).
        max_seconds: crop each utterance's audio to this length.
        context_length: text tokens per utterance (open_clip BPE, start/end included).
        batch_size: conversations per batch. num_workers: DataLoader workers. seed: generation
            and split seed.
        predict_path: ``mmoe predict``'s input: a conversation file (``.txt``, ``.json``, or audio: see
            :mod:`mmoe.datamodules.emotion.predict_files`) or a folder of them; None: the test split.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        num_conversations: int = 1000,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        min_turns: int = 6,
        max_turns_generated: int = 12,
        everyday_text: float = 0.0,
        max_turns: int | None = None,
        max_seconds: float | None = 10.0,
        context_length: int = 16,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("dataset", dataset, DATASETS)
        check_positive_int("num_conversations", num_conversations)
        check_positive_int("batch_size", batch_size)
        check_positive_int("context_length", context_length)
        if dataset != "synthetic" and root is None:
            raise ValueError(f"root: expected the {dataset} folder for dataset={dataset!r}, got None")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction/test_fraction: expected fractions summing to < 1, got {val_fraction}, {test_fraction}")
        if not 1 <= min_turns <= max_turns_generated:
            raise ValueError(f"min_turns/max_turns_generated: expected 1 <= min <= max, got {min_turns}, {max_turns_generated}")
        if max_turns is not None:
            check_positive_int("max_turns", max_turns)
        if isinstance(everyday_text, bool) or not isinstance(everyday_text, (int, float)) or not 0 <= everyday_text <= 1:
            raise ValueError(f"everyday_text: expected a share in [0, 1], got {everyday_text!r}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds: expected None or > 0 seconds, got {max_seconds!r}")
        self.save_hyperparameters()
        self.class_names = list({"synthetic": CLASSES, "iemocap": IEMOCAP_CLASSES, "meld": MELD_CLASSES}[dataset])
        self.type_names = list(UTTERANCE_TYPES) if dataset == "synthetic" else []
        self.splits: dict[str, list[list[dict]]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def preprocess(self) -> EmotionPreprocess:
        """The settings the model takes from the data (the CLI links them to ``model.preprocess``)."""
        hp = self.hparams
        return EmotionPreprocess(list(self.class_names), SAMPLE_RATE, hp.context_length, hp.max_seconds)

    def _split(self, conversations: list, fraction_val: float, fraction_test: float) -> tuple[list, list, list]:
        order = np.random.default_rng(self.hparams.seed + 1).permutation(len(conversations))
        n_test = int(round(fraction_test * len(conversations)))
        n_val = int(round(fraction_val * len(conversations)))
        pick = lambda idx: [conversations[i] for i in sorted(idx)]  # noqa: E731
        return pick(order[n_test + n_val:]), pick(order[n_test: n_test + n_val]), pick(order[:n_test])

    def prepare_splits(self) -> dict[str, list[list[dict]]]:
        """Generate or read the train/val/test conversations (once)."""
        if self.splits:
            return self.splits
        hp = self.hparams
        if hp.dataset == "synthetic":
            convs = generate_conversations(hp.num_conversations, hp.seed, hp.min_turns, hp.max_turns_generated,
                                           everyday_text=hp.everyday_text)
            for conv in convs:  # int16 in memory, like a wav file
                for utt in conv:
                    utt["audio"] = np.round(utt["audio"] * 32767).astype(np.int16)  # peak <= 1: no clipping
            train, val, test = self._split(convs, hp.val_fraction, hp.test_fraction)
        elif hp.dataset == "iemocap":
            train_val = read_iemocap(hp.root, [1, 2, 3, 4])
            train, val, _ = self._split(train_val, hp.val_fraction, 0.0)
            test = read_iemocap(hp.root, [5])
        else:
            train, val, test = (read_meld(hp.root, s) for s in ("train", "dev", "test"))
        self.splits = {k: _windows(v, hp.max_turns) for k, v in (("train", train), ("val", val), ("test", test))}
        return self.splits

    def setup(self, stage: str | None = None) -> None:
        self.prepare_splits()

    def split_dataset(self, split: str) -> ConversationDataset:
        """The conversations of ``split`` as a Dataset."""
        check_choice("split", split, ("train", "val", "test"))
        return ConversationDataset(self.prepare_splits()[split])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        collate = partial(collate_conversations, context_length=hp.context_length, sample_rate=SAMPLE_RATE,
                          max_seconds=hp.max_seconds)
        return self.loader(self.split_dataset(split), shuffle=shuffle, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    predict_suffixes = predict_files.SUFFIXES

    def predict_file_inputs(self, path: Path) -> dict[str, Any]:
        return predict_files.read_conversation(path)

    def predict_split(self) -> tuple[Dataset, Any, None]:
        def inputs(conversation: list[dict]) -> dict[str, Any]:
            keep = ("text", "audio", "sample_rate")
            return {"conversation": [{k: u[k] for k in keep if u.get(k) is not None} for u in conversation]}

        return self.split_dataset("test"), inputs, None

