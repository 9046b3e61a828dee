"""TrackingDataModule: single-object tracking with RGB and an optional X modality.

``dataset="synthetic"`` (the default) renders sequences from bundled photographs
(:mod:`mmoe.datamodules.tracking.synthetic`, no download); ``"lasher"``, ``"depthtrack"``,
``"visevent"``, ``"lasot"`` and ``"got10k"`` read those layouts
(:mod:`mmoe.datamodules.tracking.readers`; ``root`` holds the training sequences, ``test_root``
the test sequences, VisEvent takes both from ``root`` by its split lists). LaSOT and GOT-10k are
RGB-only: the model trains and runs with X missing.

X is given to the model as one channel in [0, 1]: depth as is (synthetic) or 16-bit millimetres
clipped at ``depth_range_mm`` (real), thermal as grey level, events as 0.5 + 0.5 x sign (synthetic)
or the event image's grey level (real). ``use_x=False`` drops X everywhere (the RGB-only ablation).
``modality="all"`` (synthetic): one model for every X: sequence k of each split is rendered with
X = depth, thermal, event in turn (the unified tracker's data; RGB alone comes from the model's
modality dropout, ``TrackingTask.x_dropout``).

Training batches are template/search crop pairs, as one-stream trackers train::

    "template"    float32 [B, 3, T, T]   RGB template crop (factor ``template_factor``)
    "template_x"  float32 [B, 1, T, T]   X of the template (zeros where X is missing)
    "search"      float32 [B, 3, S, S]   RGB search crop (factor ``search_factor``, jittered)
    "search_x"    float32 [B, 1, S, S]
    "has_x"       bool [B]
    "x_kind"      int64 [B]              the X kind: 0 none, 1 depth, 2 thermal, 3 event (model.X_KINDS)
    "box"         float32 [B, 4]         the target in the search crop, xywh / S

A pair takes two frames of one sequence at most ``max_gap`` apart where the target is present;
the search crop's centre is shifted by up to ``centre_jitter`` x sqrt(w h) and its side scaled by
exp(N(0, ``scale_jitter``)); colour jitter (albumentations) on RGB, and a joint horizontal flip.
All randomness of a sample comes from ``(seed, epoch, index)``.

Validation and test items are whole sequences (one per batch): ``"frames"`` uint8
``[N, H, W, 3]``, ``"x"`` float32 ``[N, H, W]`` (absent key where X is missing), ``"boxes"``
``[N, 4]``, ``"present"`` ``[N]``, ``"modality"`` (the X kind, with ``"x"``) and one bool ``[N]`` per
attribute under ``"attr/<name>"``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmoe.datamodules.base import MMoEDataModule
from mmoe.datamodules.tracking import predict_files, readers
from mmoe.datamodules.tracking.crops import crop_around
from mmoe.datamodules.tracking.preprocess import TrackingPreprocess
from mmoe.datamodules.tracking.synthetic import ATTRIBUTES, MODALITIES, render_sequence
from mmoe.inputs.video import VIDEO_EXTENSIONS, image_size, read_image
from mmoe.sampling import EpochSampler
from mmoe.validation import check_choice, check_number, check_positive_int

DATASETS = ("synthetic", "lasher", "depthtrack", "visevent", "lasot", "got10k")
#: the X modality of each real layout (None: RGB only)
REAL_MODALITY: dict[str, str | None] = {"lasher": "thermal", "depthtrack": "depth", "visevent": "event",
                                        "lasot": None, "got10k": None}
#: X kind ids of the batches' ``x_kind`` (0: no X), as the model's prompt numbers them (model.X_KINDS)
X_KIND_IDS: dict[str | None, int] = {None: 0, **{m: i + 1 for i, m in enumerate(MODALITIES)}}
#: fixed seeds of the validation and test sequences (independent of the training seed)
VAL_SEED, TEST_SEED = 1_000_033, 2_000_033


class TrackSequence:
    """One sequence in memory (synthetic) or on disk (real), read frame by frame.

    Args:
        name: sequence name.
        boxes: ``[N, 4]`` xywh.
        present: ``[N]`` bool.
        frames: uint8 ``[N, H, W, 3]`` array, or a list of N image paths.
        x: uint8 ``[N, H, W]`` (X x 255), a list of N paths, or None (X missing).
        modality: the X modality or None.
        attributes: per-frame bool arrays by name.
        depth_range_mm: depth that maps to 1 (real 16-bit depth).
        size: ``(H, W)`` every frame on disk must have (RGB and X alike: crops of both use the same
            box); None takes the first RGB frame's.
    """

    def __init__(self, name: str, boxes: np.ndarray, present: np.ndarray, frames: np.ndarray | list[str],
                 x: np.ndarray | list[str] | None, modality: str | None,
                 attributes: dict[str, np.ndarray] | None = None, depth_range_mm: float = 10000.0,
                 size: tuple[int, int] | None = None) -> None:
        self.name, self.boxes, self.present = name, boxes, present
        self.frames, self.x, self.modality = frames, x, modality
        self.attributes = attributes or {}
        self.depth_range_mm = depth_range_mm
        self.size = size

    def __len__(self) -> int:
        return len(self.boxes)

    def _read(self, path: str, what: str) -> np.ndarray:
        """One frame file, refused unless it has the sequence's size (the first RGB frame's)."""
        a = read_image(path, "root")
        if self.size is None:
            self.size = image_size(self.frames[0], "root")
        if a.shape[:2] != self.size:
            raise ValueError(f"root: sequence {self.name!r}: {what} frame {path!r} is {a.shape[1]}x{a.shape[0]}, "
                             f"expected the RGB frames' {self.size[1]}x{self.size[0]} (width x height)")
        return a

    def rgb(self, i: int) -> np.ndarray:
        """uint8 ``[H, W, 3]``."""
        if isinstance(self.frames, np.ndarray):
            return self.frames[i]
        a = self._read(self.frames[i], "RGB")
        if a.dtype != np.uint8:
            raise ValueError(f"root: sequence {self.name!r}: RGB frame {self.frames[i]!r} has dtype {a.dtype}, "
                             f"expected 8-bit colour")
        return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a[..., :3]

    def x_frame(self, i: int) -> np.ndarray | None:
        """float32 ``[H, W]`` in [0, 1], or None."""
        if self.x is None:
            return None
        if isinstance(self.x, np.ndarray):
            return self.x[i].astype(np.float32) / 255.0
        a = self._read(self.x[i], "X")
        if a.ndim == 3:  # thermal/event images saved as colour: their grey level (alpha dropped)
            a = a[..., :3].mean(2).astype(a.dtype) if a.shape[2] > 1 else a[..., 0]
        if a.dtype == np.uint8:
            return a.astype(np.float32) / 255.0
        if a.dtype.kind in "iu":  # 16-bit depth in millimetres
            return np.clip(a.astype(np.float32) / self.depth_range_mm, 0, 1)
        raise ValueError(f"root: sequence {self.name!r}: X frame {self.x[i]!r} has dtype {a.dtype}, "
                         f"expected 8-bit or 16-bit integers")


def synthetic_sequence(seed: int, split: str, modality: str, length: int, size: tuple[int, int]) -> TrackSequence:
    """A rendered sequence, X stored as uint8 (events as 0.5 + 0.5 sign)."""
    s = render_sequence(seed, split, modality, length, size)
    x = (s.x * 0.5 + 0.5) if modality == "event" else s.x
    return TrackSequence(s.name, s.boxes, s.present, s.frames, np.round(x * 255).astype(np.uint8), modality,
                         s.attributes)


def _to_chw(a: np.ndarray) -> torch.Tensor:
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))


class PairDataset(Dataset):
    """Template/search training pairs; ``dataset[(epoch, index)]`` is a pure function of ``(seed, epoch, index)``.

    Args:
        sequences: training sequences (each with at least two present frames).
        num_samples: samples per epoch.
        seed: training seed.
        use_x: False drops X (zeros, ``has_x`` False).
        template_size, search_size: crop sides in pixels.
        template_factor, search_factor: crop sides over sqrt(w h).
        max_gap: largest frame distance between template and search.
        centre_jitter: largest search-centre shift over sqrt(w h).
        scale_jitter: std of the log search-scale change.
    """

    def __init__(self, sequences: list[TrackSequence], num_samples: int, seed: int, use_x: bool, template_size: int,
                 search_size: int, template_factor: float, search_factor: float, max_gap: int,
                 centre_jitter: float, scale_jitter: float) -> None:
        self.sequences = [s for s in sequences if s.present.sum() >= 2]
        if not self.sequences:
            raise ValueError("root: no training sequence has two frames with the target present")
        self.num_samples, self.seed, self.use_x = num_samples, seed, use_x
        self.t_size, self.s_size, self.t_factor, self.s_factor = template_size, search_size, template_factor, search_factor
        self.max_gap, self.centre_jitter, self.scale_jitter = max_gap, centre_jitter, scale_jitter
        self._colour: Any = None

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        seq = self.sequences[int(rng.integers(len(self.sequences)))]
        frames = np.nonzero(seq.present)[0]
        i = int(frames[rng.integers(len(frames))])
        near = frames[(np.abs(frames - i) <= self.max_gap) & (frames != i)]
        j = int(near[rng.integers(len(near))]) if len(near) else i
        shift = tuple(rng.uniform(-self.centre_jitter, self.centre_jitter, 2))
        scale = float(np.exp(np.clip(rng.normal(0, self.scale_jitter), -2 * self.scale_jitter, 2 * self.scale_jitter)))
        template, _ = crop_around(seq.rgb(i), seq.boxes[i], self.t_factor, self.t_size)
        search, t = crop_around(seq.rgb(j), seq.boxes[j], self.s_factor, self.s_size, shift, scale)
        box = t.box_to_crop(seq.boxes[j]) / self.s_size
        has_x = self.use_x and seq.x is not None
        tx = crop_around(seq.x_frame(i), seq.boxes[i], self.t_factor, self.t_size)[0] if has_x else \
            np.zeros((self.t_size, self.t_size), np.float32)
        sx = crop_around(seq.x_frame(j), seq.boxes[j], self.s_factor, self.s_size, shift, scale)[0] if has_x else \
            np.zeros((self.s_size, self.s_size), np.float32)
        if self._colour is None:  # built on first use, in the worker process
            os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network from mmoe
            import albumentations as A

            self._colour = A.Compose([A.ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.8), A.ToGray(p=0.05)])
        aug_seed = int(rng.integers(2**63))
        self._colour.set_random_state(np.random.default_rng(aug_seed), random.Random(aug_seed))
        template, search = self._colour(image=template)["image"], self._colour(image=search)["image"]
        if rng.random() < 0.5:  # a joint horizontal flip
            template, tx, search, sx = template[:, ::-1], tx[:, ::-1], search[:, ::-1], sx[:, ::-1]
            box = np.array([1.0 - box[0] - box[2], box[1], box[2], box[3]])
        return {"template": _to_chw(template / np.float32(255)), "template_x": _to_chw(tx),
                "search": _to_chw(search / np.float32(255)), "search_x": _to_chw(sx),
                "has_x": torch.tensor(has_x), "x_kind": torch.tensor(X_KIND_IDS[seq.modality] if has_x else 0),
                "box": torch.tensor(box, dtype=torch.float32)}


class SequenceDataset(Dataset):
    """Whole sequences (validation, test), one item each; see the module docstring for the keys."""

    def __init__(self, sequences: list[TrackSequence], use_x: bool) -> None:
        self.sequences, self.use_x = sequences, use_x

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.sequences[i]
        item: dict[str, Any] = {
            "name": s.name,
            "frames": torch.from_numpy(np.stack([s.rgb(k) for k in range(len(s))])),
            "boxes": torch.from_numpy(np.asarray(s.boxes, dtype=np.float64)),
            "present": torch.from_numpy(np.asarray(s.present, dtype=bool)),
        }
        if self.use_x and s.x is not None:
            item["x"] = torch.from_numpy(np.stack([s.x_frame(k) for k in range(len(s))]))
            item["modality"] = s.modality
        for name in ATTRIBUTES:
            if name in s.attributes:
                item[f"attr/{name}"] = torch.from_numpy(np.asarray(s.attributes[name], dtype=bool))
        return item


def _read_real(dataset: str, root: str, split: Literal["train", "test"]) -> list[TrackSequence]:
    if dataset == "visevent":
        seqs = readers.read_visevent(root, split)
    else:
        seqs = {"lasher": readers.read_lasher, "depthtrack": readers.read_depthtrack,
                "lasot": readers.read_lasot, "got10k": readers.read_got10k}[dataset](root)
    out = []
    for s in seqs:
        if s.annotated < len(s.frames):
            raise ValueError(f"root: sequence {s.name!r} has boxes for {s.annotated} of {len(s.frames)} frames "
                             f"(GOT-10k's test split); training and scoring need every frame annotated")
        # X must be registered to RGB (crops of both use one box): sizes checked here from the headers
        # of the first frames, and on every frame as it is read
        size = image_size(s.frames[0], "root")
        if s.x_frames is not None and (x_size := image_size(s.x_frames[0], "root")) != size:
            raise ValueError(f"root: sequence {s.name!r}: {s.modality} frames are {x_size[1]}x{x_size[0]}, RGB frames "
                             f"{size[1]}x{size[0]} (width x height); X must have the RGB frames' size")
        out.append(TrackSequence(s.name, s.boxes, s.present, s.frames, s.x_frames, s.modality, size=size))
    return out


class TrackingDataModule(MMoEDataModule):
    """Tracking batches (see the module docstring).

    Args:
        dataset: ``"synthetic"`` or a real layout name.
        root: the training sequences' folder (real data); None for ``synthetic``.
        test_root: the test sequences' folder (real data except VisEvent, which lists both in ``root``).
        modality: the synthetic X modality: ``"depth"``, ``"thermal"``, ``"event"``, or ``"all"`` (the
            three in turn, sequence by sequence; the model's default X is then depth).
        use_x: False drops X everywhere (the RGB-only ablation).
        train_sequences, val_sequences, test_sequences: synthetic sequence counts (real data:
            ``val_sequences`` training sequences are held out for validation).
        sequence_length: frames per synthetic sequence.
        frame_size: synthetic frame ``(H, W)``.
        template_size, search_size: crop sides in pixels.
        template_factor, search_factor: crop sides over sqrt(w h).
        max_gap: largest frame distance between a pair's template and search.
        centre_jitter: largest search-centre shift over sqrt(w h).
        scale_jitter: std of the log search-scale change.
        samples_per_epoch: training pairs per epoch.
        batch_size: training batch size.
        num_workers: DataLoader workers.
        seed: seeds the training sequences and pairs.
        predict_path: ``mmoe predict``'s input: one sequence (a video with its first box beside it, or a
            frame folder with ``init_box.txt``; :mod:`mmoe.datamodules.tracking.predict_files`) or a folder of
            them; None: the sequences of the test split.
    """

    def __init__(
        self,
        dataset: Literal["synthetic", "lasher", "depthtrack", "visevent", "lasot", "got10k"] = "synthetic",
        root: str | None = None,
        test_root: str | None = None,
        modality: Literal["depth", "thermal", "event", "all"] = "depth",
        use_x: bool = True,
        train_sequences: int = 100,
        val_sequences: int = 6,
        test_sequences: int = 24,
        sequence_length: int = 48,
        frame_size: tuple[int, int] = (144, 192),
        template_size: int = 64,
        search_size: int = 128,
        template_factor: float = 2.0,
        search_factor: float = 4.0,
        max_gap: int = 30,
        centre_jitter: float = 1.5,
        scale_jitter: float = 0.25,
        samples_per_epoch: int = 2000,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("dataset", dataset, DATASETS)
        check_choice("modality", modality, (*MODALITIES, "all"))
        for name, value, minimum in (("train_sequences", train_sequences, 1), ("val_sequences", val_sequences, 1),
                                     ("test_sequences", test_sequences, 1), ("sequence_length", sequence_length, 2),
                                     ("template_size", template_size, 16), ("search_size", search_size, 16),
                                     ("max_gap", max_gap, 1), ("samples_per_epoch", samples_per_epoch, 1),
                                     ("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("seed", seed, 0)):
            check_positive_int(name, value, minimum=minimum)
        for name, value in (("template_factor", template_factor), ("search_factor", search_factor)):
            check_number(name, value, minimum=0.0, inclusive=False)
        check_number("centre_jitter", centre_jitter)
        check_number("scale_jitter", scale_jitter)
        if not isinstance(use_x, bool):
            raise ValueError(f"use_x: expected a bool, got {use_x!r}")
        if dataset == "synthetic":
            if root is not None or test_root is not None:
                raise ValueError(f"root: the synthetic dataset is embedded and takes no root, got {root!r}")
        else:
            if not isinstance(root, (str, os.PathLike)) or not Path(root).is_dir():
                raise ValueError(f"root: expected an existing folder for dataset={dataset!r}, got {root!r}")
            if dataset != "visevent" and (not isinstance(test_root, (str, os.PathLike)) or not Path(test_root).is_dir()):
                raise ValueError(f"test_root: expected an existing folder for dataset={dataset!r}, got {test_root!r}")
        self.save_hyperparameters()
        self.train_dataset: PairDataset | None = None
        self.val_dataset: SequenceDataset | None = None
        self.test_dataset: SequenceDataset | None = None

    @property
    def preprocess(self) -> TrackingPreprocess:
        """The settings the model takes from the data (the CLI links them to ``model.preprocess``)."""
        hp = self.hparams
        modality = hp.modality if hp.dataset == "synthetic" else REAL_MODALITY[hp.dataset]
        modality = MODALITIES[0] if modality == "all" else modality
        return TrackingPreprocess(template_size=hp.template_size, search_size=hp.search_size,
                                  template_factor=float(hp.template_factor), search_factor=float(hp.search_factor),
                                  modality=modality if hp.use_x else None)

    def _synthetic(self, split: str, count: int, seed: int) -> list[TrackSequence]:
        hp = self.hparams
        size = tuple(int(v) for v in hp.frame_size)
        kinds = MODALITIES if hp.modality == "all" else (hp.modality,)
        return [synthetic_sequence(seed * 100_003 + k, split, kinds[k % len(kinds)], hp.sequence_length, size)
                for k in tqdm(range(count), desc=f"rendering {split} sequences", leave=False,
                              disable=count < 10)]

    def setup(self, stage: str | None = None) -> None:
        """Render or read what ``stage`` needs ("fit": train and val, "validate": val, "test" and
        "predict": test, None: all), once."""
        hp = self.hparams
        need_train = stage in (None, "fit") and self.train_dataset is None
        need_val = stage in (None, "fit", "validate") and self.val_dataset is None
        need_test = stage in (None, "test", "predict") and self.test_dataset is None
        if hp.dataset == "synthetic":
            if need_train:
                self.train_dataset = self._pairs(self._synthetic("train", hp.train_sequences, hp.seed))
            if need_val:
                self.val_dataset = SequenceDataset(self._synthetic("val", hp.val_sequences, VAL_SEED), hp.use_x)
        elif need_train or need_val:
            train = _read_real(hp.dataset, hp.root, "train")
            if len(train) <= hp.val_sequences:
                raise ValueError(f"val_sequences: {len(train)} training sequences under root; holding out "
                                 f"{hp.val_sequences} for validation would leave none for training")
            train, val = train[:-hp.val_sequences], train[-hp.val_sequences:]
            self.train_dataset = self.train_dataset or self._pairs(train)
            self.val_dataset = self.val_dataset or SequenceDataset(val, hp.use_x)
        if need_test:
            test = (self._synthetic("test", hp.test_sequences, TEST_SEED) if hp.dataset == "synthetic" else
                    _read_real(hp.dataset, hp.root if hp.dataset == "visevent" else hp.test_root, "test"))
            self.test_dataset = SequenceDataset(test, hp.use_x)

    def _pairs(self, sequences: list[TrackSequence]) -> PairDataset:
        hp = self.hparams
        return PairDataset(sequences, hp.samples_per_epoch, hp.seed, hp.use_x, hp.template_size, hp.search_size,
                           hp.template_factor, hp.search_factor, hp.max_gap, hp.centre_jitter, hp.scale_jitter)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self.loader(self.train_dataset, sampler=EpochSampler(len(self.train_dataset)))

    def _sequences(self, dataset: SequenceDataset) -> DataLoader:
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._sequences(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self._sequences(self.test_dataset)

    predict_suffixes = VIDEO_EXTENSIONS

    def is_predict_folder(self, path: Path) -> bool:
        return predict_files.is_sequence_folder(path)

    def predict_file_inputs(self, path: Path) -> dict[str, Any]:
        return predict_files.read_sequence(path)

    def predict_split(self) -> tuple[Dataset, Any, list[str]]:
        self.setup("test")

        def inputs(item: dict[str, Any]) -> dict[str, Any]:
            out = {"frames": item["frames"].numpy(), "init_box": item["boxes"][0].tolist()}
            if "x" in item:
                out.update(x_frames=item["x"].numpy(), modality=item["modality"])
            return out

        return self.test_dataset, inputs, [s.name for s in self.test_dataset.sequences]
