"""AnomalyDataModule: medical image anomaly detection, training on normal images only.

``dataset="embedded"`` (the default) uses the medical images bundled in installed wheels
(:mod:`.sources`, no download), four modalities; ``"bmad"`` reads one BMAD sub-dataset
(:mod:`.bmad`) as one modality.

Batches are dicts::

    "image"         float32 [B, 3, S, S] in [0, 1]  the image (S = image_size)
    "mask"          float32 [B, 1, S, S]            true anomaly mask (zeros for normal images)
    "label"         long [B]                        0 normal, 1 anomalous
    "has_mask"      bool [B]                        whether the image has pixel labels
    "modality"      long [B]                        index into ``preprocess.modality_names``
    training batches also:
    "pseudo_image"  float32 [B, 3, S, S]            the image with a training pseudo-anomaly
    "pseudo_mask"   float32 [B, 1, S, S]            its mask (:mod:`.pseudo`)

Training images are normal only: augmented views (random resized crops, flips where anatomy
allows, small elastic and intensity changes; albumentations), a pure function of
``(seed, epoch, index)``. Validation holds the normal validation views (and their mirror
images), used to calibrate the anomaly map, plus as many copies with *training* pseudo-anomalies
(a sanity signal, not the test). The test set holds the held-out normal views (as they are and
mirrored) and as many copies with lesions from the test-set lesion simulator (:mod:`.lesions`),
a different generator from the training synthesis, with fixed seeds.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmoe.datamodules.anomaly import bmad, sources
from mmoe.datamodules.anomaly.lesions import simulate_lesion
from mmoe.datamodules.anomaly.preprocess import AnomalyPreprocess
from mmoe.datamodules.anomaly.pseudo import KINDS, synthesize
from mmoe.datamodules.base import MMoEDataModule
from mmoe.inputs.image import DICOM_SUFFIXES, IMAGE_SUFFIXES, NIFTI_SUFFIXES
from mmoe.sampling import EpochSampler
from mmoe.validation import check_choice, check_positive_int

DATASETS = ("embedded", "bmad")
VAL_SEED = 1_000_033
TEST_SEED = 2_000_033
#: modalities whose anatomy has an orientation (only left-right flips are plausible)
ORIENTED = ("brain_mri", "ct")


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """``[H, W, C]`` float32 -> ``[size, size, C]`` (area averaging down, bilinear up)."""
    import cv2

    H, W = image.shape[:2]
    interp = cv2.INTER_AREA if min(H, W) >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp).reshape(size, size, -1).astype(np.float32)


def _augmentation(size: int, oriented: bool) -> Any:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations never asks the network
    import albumentations as A

    flips = [A.HorizontalFlip()] if oriented else [A.HorizontalFlip(), A.VerticalFlip(), A.RandomRotate90()]
    return A.Compose([
        A.RandomResizedCrop((size, size), scale=(0.6, 1.0), ratio=(0.85, 1.15)),
        *flips,
        A.Affine(rotate=(-8, 8), scale=(0.95, 1.05), p=0.5),
        A.ElasticTransform(alpha=4, sigma=8, p=0.3),
        A.RandomBrightnessContrast(brightness_limit=0.05, contrast_limit=0.05, p=0.5),
        A.RandomGamma(gamma_limit=(90, 110), p=0.3),
    ])


@dataclass(frozen=True)
class Item:
    """One normal source image: modality index, readable name, the image (or a path to read)."""

    modality: int
    name: str
    image: np.ndarray | None = None
    path: str | None = None
    mask_path: str | None = None
    label: int = 0

    def load(self) -> np.ndarray:
        return self.image if self.image is not None else bmad.read_image(self.path)


def _is_dicom_series(folder: Path) -> bool:
    """A folder holding DICOM files (one series) is one predict input."""
    with os.scandir(folder) as entries:
        return any(e.name.lower().endswith(DICOM_SUFFIXES) for e in entries)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))


def _sample(image: np.ndarray, mask: np.ndarray, label: int, modality: int, has_mask: bool) -> dict[str, torch.Tensor]:
    return {"image": _tensor(image), "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "label": torch.tensor(label), "has_mask": torch.tensor(has_mask), "modality": torch.tensor(modality)}


class TrainDataset(Dataset):
    """Augmented normal views with a pseudo-anomalous copy; ``dataset[(epoch, index)]`` is a pure
    function of ``(seed, epoch, index)``. The modality is drawn uniformly, then a view of it."""

    def __init__(self, items: dict[int, list[Item]], modality_names: list[str], size: int, num_samples: int,
                 seed: int) -> None:
        self.items, self.names, self.size = items, modality_names, size
        self.modalities = sorted(items)
        self.num_samples, self.seed = num_samples, seed
        self._augment: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.num_samples

    def _view(self, m: int, rng: np.random.Generator) -> np.ndarray:
        pool = self.items[m]
        image = pool[rng.integers(len(pool))].load()
        if m not in self._augment:
            self._augment[m] = _augmentation(self.size, self.names[m] in ORIENTED)
        seed = int(rng.integers(2**63))
        self._augment[m].set_random_state(np.random.default_rng(seed), random.Random(seed))
        return np.clip(self._augment[m](image=image)["image"], 0, 1).astype(np.float32)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        m = self.modalities[rng.integers(len(self.modalities))]
        image = self._view(m, rng)
        kind = KINDS[rng.integers(len(KINDS))]
        other = self._view(m, rng) if kind == "foreign" else None  # a second view only when it is used
        pseudo, pmask = synthesize(image, rng, other=other, kind=kind)
        out = _sample(image, np.zeros(image.shape[:2]), 0, m, True)
        out["pseudo_image"], out["pseudo_mask"] = _tensor(pseudo), torch.from_numpy(pmask)[None]
        return out


@dataclass(frozen=True)
class EvalItem:
    """One fixed evaluation sample: the source, mirrored or not, and how its anomaly is made."""

    item: Item
    flip: bool
    anomaly: Literal["none", "lesion", "pseudo", "real"]
    seed: tuple[int, ...]
    name: str
    lesion: str | None = None  # a lesion type of :data:`.lesions.LESION_TYPES` (None: the modality's own)


class ReferenceDataset(Dataset):
    """Normal training images as they are and mirrored (resized, no augmentation): ``image`` and
    ``modality`` only (the anomaly task's feature bank is filled from them)."""

    def __init__(self, items: list[Item], size: int) -> None:
        self.items, self.size = items, size

    def __len__(self) -> int:
        return 2 * len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        it = self.items[i // 2]
        image = resize(it.load(), self.size)
        if i % 2:
            image = np.ascontiguousarray(image[:, ::-1])
        return {"image": _tensor(image), "modality": torch.tensor(it.modality)}


class EvalDataset(Dataset):
    def __init__(self, items: list[EvalItem], size: int, modality_names: list[str]) -> None:
        self.items, self.size, self.names = items, size, modality_names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e = self.items[i]
        src = e.item.load()
        image = resize(src, self.size)
        if e.anomaly == "real":  # a real labelled image (BMAD): its own mask, if any
            has_mask = e.item.mask_path is not None or e.item.label == 0
            mask = bmad.read_mask(e.item.mask_path, src.shape[:2]).astype(np.float32)
            mask = (resize(mask[..., None], self.size)[..., 0] > 0.5)
            if e.flip:
                image, mask = image[:, ::-1], mask[:, ::-1]
            return _sample(image, mask, e.item.label, e.item.modality, has_mask)
        if e.flip:
            image = np.ascontiguousarray(image[:, ::-1])
        rng = np.random.default_rng(list(e.seed))
        mask = np.zeros(image.shape[:2], dtype=bool)
        if e.anomaly == "lesion":
            image, mask = simulate_lesion(image, self.names[e.item.modality], rng, kind=e.lesion)
        elif e.anomaly == "pseudo":
            image, m = synthesize(image, rng, other=image[::-1, ::-1].copy())
            mask = m > 0.5
        return _sample(image, mask, int(e.anomaly != "none"), e.item.modality, True)


class AnomalyDataModule(MMoEDataModule):
    """Anomaly detection batches (see the module docstring for the keys).

    Args:
        dataset: ``"embedded"`` (medical images bundled in installed wheels, four modalities) or
            ``"bmad"`` (one BMAD sub-dataset folder under ``root``).
        root: the BMAD sub-dataset folder (e.g. ``.../BraTS2021_slice``); None for ``embedded``.
        modalities: modalities to use (``embedded``: names from brain_mri, ct, fundus, histology;
            ``bmad``: one name for the folder, default ``["bmad"]``).
        image_size: side S the images are resized to (the model's input size).
        samples_per_epoch: training samples per epoch.
        batch_size: batch size of every split.
        num_workers: DataLoader workers.
        seed: seeds the training samples (evaluation samples have fixed seeds).
        reference_images: at most this many normal training images per modality (evenly spaced, each
            also mirrored) in :meth:`reference_dataloader`, which fills the model's feature bank.
        predict_path: ``mmoe predict``'s input: an image (PNG/JPEG/BMP/TIFF), DICOM or NIfTI file, a DICOM
            series folder, or a folder of those; None: the images of the test split.
    """

    def __init__(
        self,
        dataset: Literal["embedded", "bmad"] = "embedded",
        root: str | None = None,
        modalities: list[str] | None = None,
        image_size: int = 64,
        samples_per_epoch: int = 2000,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        reference_images: int = 64,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("dataset", dataset, DATASETS)
        check_positive_int("image_size", image_size, minimum=16)
        if image_size % 8:
            raise ValueError(f"image_size: expected a multiple of 8, got {image_size}")
        check_positive_int("samples_per_epoch", samples_per_epoch)
        check_positive_int("batch_size", batch_size)
        check_positive_int("num_workers", num_workers, minimum=0)
        check_positive_int("seed", seed, minimum=0)
        check_positive_int("reference_images", reference_images)
        if dataset == "embedded":
            if root is not None:
                raise ValueError(f"root: the embedded dataset takes no root, got {root!r}")
            modalities = list(sources.MODALITIES) if modalities is None else modalities
            if (not isinstance(modalities, (list, tuple)) or not modalities or len(set(modalities)) != len(modalities)
                    or any(m not in sources.MODALITIES for m in modalities)):
                raise ValueError(f"modalities: expected distinct names from {list(sources.MODALITIES)}, "
                                 f"got {modalities!r}")
        else:
            if not isinstance(root, (str, os.PathLike)) or not Path(root).is_dir():
                raise ValueError(f"root: expected an existing BMAD dataset folder, got {root!r}")
            modalities = ["bmad"] if modalities is None else modalities
            if not isinstance(modalities, (list, tuple)) or len(modalities) != 1 or not isinstance(modalities[0], str):
                raise ValueError(f"modalities: expected one name for the BMAD folder, got {modalities!r}")
        self.save_hyperparameters()
        self.modality_names: list[str] = list(modalities)
        self.train_dataset: TrainDataset | None = None
        self.val_dataset: EvalDataset | None = None
        self.test_dataset: EvalDataset | None = None
        self.reference_dataset: ReferenceDataset | None = None

    @property
    def preprocess(self) -> AnomalyPreprocess:
        """The settings the model takes from the data (the CLI links them to ``model.preprocess``)."""
        return AnomalyPreprocess(image_size=self.hparams.image_size, modality_names=list(self.modality_names))

    @property
    def test_names(self) -> list[str]:
        self.setup()
        return [e.name for e in self.test_dataset.items]

    def _eval_items(self, items: list[Item], anomaly: str, seed: int) -> list[EvalItem]:
        out = []
        for k, item in enumerate(items):
            for flip in (False, True):
                out.append(EvalItem(item, flip, "none", (seed, k, flip, 0), f"{item.name}{'/flip' if flip else ''}"))
            for flip in (False, True):
                out.append(EvalItem(item, flip, anomaly, (seed, k, flip, 1),
                                    f"{item.name}{'/flip' if flip else ''}/{anomaly}"))
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        hp, names = self.hparams, self.modality_names
        if hp.dataset == "embedded":
            split = {s: [Item(names.index(v.modality), v.name, v.image) for v in sources.views_by_split(s, tuple(names))]
                     for s in ("train", "val", "test")}
            val = self._eval_items(split["val"], "pseudo", VAL_SEED)
            test = self._eval_items(split["test"], "lesion", TEST_SEED)
            train_items = split["train"]
        else:
            train_items = [Item(0, Path(r.image).name, path=r.image) for r in bmad.read_bmad(hp.root, "train")]
            try:
                val_records = bmad.read_bmad(hp.root, "val")
            except ValueError:  # no validation split: the last 10% of the training images
                n = max(1, len(train_items) // 10)
                train_items, held = train_items[:-n], train_items[-n:]
                val_records = [bmad.BMADRecord(it.path, 0, None) for it in held]
            # calibration uses the normal validation images only; labelled anomalies are evaluated as they are
            val = [EvalItem(Item(0, Path(r.image).name, path=r.image, mask_path=r.mask, label=r.label), False, "real",
                            (VAL_SEED, k), Path(r.image).name) for k, r in enumerate(val_records)]
            test = [EvalItem(Item(0, Path(r.image).name, path=r.image, mask_path=r.mask, label=r.label), False, "real",
                             (TEST_SEED, k), Path(r.image).name) for k, r in enumerate(bmad.read_bmad(hp.root, "test"))]
            if not train_items:
                raise ValueError(f"root: too few training images under {hp.root!r}")
        train: dict[int, list[Item]] = {}
        for it in train_items:
            train.setdefault(it.modality, []).append(it)
        self.train_dataset = TrainDataset(train, names, hp.image_size, hp.samples_per_epoch, hp.seed)
        reference = []
        for m in sorted(train):
            pool, n = train[m], min(len(train[m]), hp.reference_images)
            reference += [pool[int(j)] for j in np.linspace(0, len(pool) - 1, n).round()]
        self.reference_dataset = ReferenceDataset(reference, hp.image_size)
        self.val_dataset = EvalDataset(val, hp.image_size, names)
        self.test_dataset = EvalDataset(test, hp.image_size, names)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self.loader(self.train_dataset, sampler=EpochSampler(len(self.train_dataset)))

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self.loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self.loader(self.test_dataset)

    def reference_dataloader(self) -> DataLoader:
        """Normal training images, unaugmented (see :class:`ReferenceDataset`), for the feature bank."""
        self.setup()
        return self.loader(self.reference_dataset)

    predict_suffixes = IMAGE_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES

    def is_predict_folder(self, path: Path) -> bool:
        return _is_dicom_series(path)

    def predict_file_inputs(self, path: Path) -> dict[str, Any]:
        return {"images": str(path)}

    def predict_split(self) -> tuple[Dataset, Any, list[str]]:
        self.setup()
        names = self.modality_names
        return self.test_dataset, lambda s: {"images": s["image"], "modality": names[int(s["modality"])]}, self.test_names
