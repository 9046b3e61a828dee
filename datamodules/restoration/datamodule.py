"""RestorationDataModule: all-in-one image restoration (one model, several degradations).

``dataset="synthetic"`` (the default) degrades the photographs bundled with scikit-image
(:mod:`mmoe.datamodules.restoration.synthetic`, no download) on the fly with
:mod:`mmoe.datamodules.restoration.degradations`; ``"promptir"`` reads the PromptIR/AirNet
all-in-one layout and ``"paired"`` a generic ``input/``/``target/`` folder
(:mod:`mmoe.datamodules.restoration.readers`).

Batches are dicts::

    "input"        float32 [B, 3, H, W] in [0, 1]   degraded image
    "target"       float32 [B, 3, H, W] in [0, 1]   clean image
    "degradation"  long [B]                         index into ``preprocess.degradation_names``
    "sigma"        float32 [B]                      noise level (0-255 scale) of synthesised
                                                    noise, 0 otherwise (real pairs included)

Training samples are random ``crop_size`` crops (plus flips and 90-degree rotations) of random
training images with a uniformly drawn degradation; all their randomness comes from a
generator seeded by ``(seed, epoch, index)``, so a run is reproducible whatever the number of
workers. Validation samples are fixed-seed crops; test samples are whole images at full size
(``batch_size`` 1, as sizes differ) with fixed-seed degradations, denoise once per noise level.
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

from mmoe.datamodules.base import MMoEDataModule
from mmoe.datamodules.restoration import synthetic
from mmoe.datamodules.restoration.degradations import DEGRADATION_NAMES, NOISE_SIGMAS, degrade
from mmoe.datamodules.restoration.preprocess import RestorationPreprocess
from mmoe.datamodules.restoration.readers import (
    PROMPTIR_DEGRADATIONS,
    Record,
    read_image,
    read_paired,
    read_promptir_test,
    read_promptir_train,
)
from mmoe.inputs.image import IMAGE_SUFFIXES
from mmoe.sampling import EpochSampler
from mmoe.validation import check_choice, check_number, check_positive_int

DATASETS = ("synthetic", "promptir", "paired")
Entry = synthetic.EmbeddedImage | Record


# ---------------------------------------------------------------------------------------
# Loading one pair
# ---------------------------------------------------------------------------------------
def load_entry(entry: Entry) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """``(degraded or None, clean, depth or None)``; None for the degraded image means it is to be
    synthesised (embedded images, and clean images of the denoise folders)."""
    if isinstance(entry, synthetic.EmbeddedImage):
        return None, entry.image, entry.depth
    clean = read_image(entry.target)
    if entry.extra.get("add_noise"):
        return None, clean, None
    degraded = read_image(entry.input)
    if degraded.shape != clean.shape:
        raise ValueError(f"root: input {entry.input!r} is {degraded.shape[:2]} but its target "
                         f"{entry.target!r} is {clean.shape[:2]}; a pair must have the same size")
    return degraded, clean, None


def _sample(degraded: np.ndarray, clean: np.ndarray, label: int, sigma: float) -> dict[str, torch.Tensor]:
    to_chw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))  # noqa: E731
    return {"input": to_chw(degraded), "target": to_chw(clean), "degradation": torch.tensor(label, dtype=torch.long),
            "sigma": torch.tensor(sigma, dtype=torch.float32)}


def _item_name(image: str, degradation: str, sigma: float) -> str:
    """``image/degradation`` with ``/sigma<s>`` for synthesised noise, e.g. ``chelsea/denoise/sigma25``."""
    return f"{image}/{degradation}" + (f"/sigma{sigma:g}" if sigma else "")


def _augmentation(crop_size: int) -> Any:
    """Random crop (reflect-padded when the image is smaller), flips and 90-degree rotations,
    applied alike to the clean image, the degraded one and the depth map."""
    # albumentations asks PyPI for a newer version when imported unless this is set; mmoe
    # never touches the network on its own
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A  # here: only training crops need albumentations (and cv2)
    import cv2

    return A.Compose(
        [A.PadIfNeeded(crop_size, crop_size, border_mode=cv2.BORDER_REFLECT_101), A.RandomCrop(crop_size, crop_size),
         A.HorizontalFlip(), A.VerticalFlip(), A.RandomRotate90()],
        additional_targets={"degraded": "image", "depth": "mask"},
    )


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------
class TrainDataset(Dataset):
    """Random crops, degraded on the fly; ``dataset[(epoch, index)]`` is a pure function of
    ``(seed, epoch, index)``.

    Args:
        entries: per label (index into the degradation names), the images it draws from.
        names: degradation names in label order.
        crop_size: side of the square crops.
        num_samples: samples per epoch.
        seed: training seed.
        noise_sigma: fixed noise level for denoise, or None to draw from 15, 25, 50.
    """

    def __init__(self, entries: dict[int, list[Entry]], names: list[str], crop_size: int, num_samples: int,
                 seed: int, noise_sigma: float | None = None) -> None:
        self.entries, self.names, self.crop_size = entries, names, crop_size
        self.labels = sorted(entries)
        self.num_samples, self.seed, self.noise_sigma = num_samples, seed, noise_sigma
        self._augment: Any = None

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        label = self.labels[rng.integers(len(self.labels))]
        pool = self.entries[label]
        degraded, clean, depth = load_entry(pool[rng.integers(len(pool))])
        if self._augment is None:  # built on first use, in the worker process
            self._augment = _augmentation(self.crop_size)
        aug_seed = int(rng.integers(2**63))
        # one shared generator for all transforms: a seed per transform would make the flips agree
        self._augment.set_random_state(np.random.default_rng(aug_seed), random.Random(aug_seed))
        targets = {"image": clean}
        if degraded is not None:
            targets["degraded"] = degraded
        if depth is not None:
            targets["depth"] = depth
        out = self._augment(**targets)
        clean, sigma = out["image"], 0.0
        if degraded is not None:
            degraded = out["degraded"]
        else:
            name = self.names[label]
            sigma_arg = self.noise_sigma if name == "denoise" else None
            degraded, sigma = degrade(name, clean, rng, depth=out.get("depth"), sigma=sigma_arg)
        return _sample(degraded, clean, label, sigma)


@dataclass(frozen=True)
class EvalItem:
    """One fixed validation or test sample.

    Args:
        entry: the image (embedded) or record (real data).
        label: index into the degradation names.
        sigma: noise level for synthesised noise (0 otherwise).
        seed: seeds the crop position and the degradation.
        crop: side of a fixed crop, or None for the whole image.
        name: readable id, e.g. ``chelsea/denoise/sigma25``.
    """

    entry: Entry
    label: int
    sigma: float
    seed: tuple[int, ...]
    crop: int | None
    name: str


class EvalDataset(Dataset):
    """Fixed samples: the same crops and degradations every time.

    Args:
        items: the samples.
        names: degradation names in label order.
    """

    def __init__(self, items: list[EvalItem], names: list[str]) -> None:
        self.items, self.names = items, names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.items[i]
        rng = np.random.default_rng(list(item.seed))
        degraded, clean, depth = load_entry(item.entry)
        if item.crop is not None:
            c = item.crop
            pad = [(0, max(0, c - clean.shape[0])), (0, max(0, c - clean.shape[1]))]  # images smaller than c
            top = int(rng.integers(max(clean.shape[0], c) - c + 1))
            left = int(rng.integers(max(clean.shape[1], c) - c + 1))

            def crop(a: np.ndarray | None) -> np.ndarray | None:
                if a is None:
                    return None
                return np.pad(a, pad + [(0, 0)] * (a.ndim - 2), mode="reflect")[top: top + c, left: left + c]

            degraded, clean, depth = crop(degraded), crop(clean), crop(depth)
        if degraded is not None:  # a real pair: nothing to synthesise
            return _sample(degraded, clean, item.label, 0.0)
        name = self.names[item.label]
        degraded, sigma = degrade(name, clean, rng, depth=depth, sigma=item.sigma if name == "denoise" else None)
        return _sample(degraded, clean, item.label, sigma)


# ---------------------------------------------------------------------------------------
# DataModule
# ---------------------------------------------------------------------------------------
def _hold_out(records: list[Record], per_degradation: int) -> tuple[list[Record], list[Record]]:
    """``(train, val)``: for each degradation the last ``per_degradation`` clean images (with every
    degraded version of them, e.g. all hazy variants of one RESIDE scene) go to validation."""
    train, val = [], []
    for name in dict.fromkeys(r.degradation for r in records):
        recs = [r for r in records if r.degradation == name]
        targets = sorted({r.target for r in recs})
        if len(targets) <= per_degradation:
            raise ValueError(f"val_images: {name} has {len(targets)} clean image(s) under root; holding out "
                             f"{per_degradation} for validation would leave none for training")
        held = set(targets[-per_degradation:])
        train += [r for r in recs if r.target not in held]
        val += [r for r in recs if r.target in held]
    return train, val


class RestorationDataModule(MMoEDataModule):
    """All-in-one restoration batches (see the module docstring for the keys).

    Args:
        dataset: ``"synthetic"`` (bundled photographs, degraded on the fly), ``"promptir"`` (the
            PromptIR/AirNet layout under ``root``) or ``"paired"`` (``root/train``, ``root/test``
            and optionally ``root/val``, each with ``input/`` and ``target/``).
        root: dataset folder for ``promptir`` and ``paired``; must be None for ``synthetic``.
        degradations: degradation names in label order (default denoise, derain, dehaze); from
            denoise, derain, dehaze, deblur, lowlight (``promptir``: the first three).
        crop_size: side of the square training and validation crops.
        samples_per_epoch: training samples per epoch.
        batch_size: training and validation batch size (test batches hold one whole image).
        num_workers: DataLoader workers.
        seed: seeds the training samples (validation and test samples are fixed).
        paired_degradation: the degradation of the ``paired`` folder (one of ``degradations``).
        noise_sigma: fixed noise level (0-255 scale) for denoise in every split; None draws
            15, 25 or 50 in training and tests each of them.
        val_samples: number of fixed validation crops.
        val_images: clean images per degradation held out of the real training data for
            validation (``promptir``, and ``paired`` without ``root/val``).
        predict_path: ``mmoe predict``'s input: an image file (PNG/JPEG/BMP/TIFF) or a folder of them;
            None: the degraded images of the test split.
    """

    def __init__(
        self,
        dataset: Literal["synthetic", "promptir", "paired"] = "synthetic",
        root: str | None = None,
        degradations: list[str] | None = None,
        crop_size: int = 64,
        samples_per_epoch: int = 2000,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        paired_degradation: str | None = None,
        noise_sigma: float | None = None,
        val_samples: int = 60,
        val_images: int = 1,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("dataset", dataset, DATASETS)
        if degradations is None:
            degradations = list(DEGRADATION_NAMES[:3])
        allowed = PROMPTIR_DEGRADATIONS if dataset == "promptir" else DEGRADATION_NAMES
        if (not isinstance(degradations, (list, tuple)) or not degradations
                or len(set(degradations)) != len(degradations) or any(d not in allowed for d in degradations)):
            raise ValueError(f"degradations: expected distinct names from {list(allowed)} for dataset={dataset!r}, "
                             f"got {degradations!r}")
        check_positive_int("crop_size", crop_size, minimum=8)
        check_positive_int("samples_per_epoch", samples_per_epoch)
        check_positive_int("batch_size", batch_size)
        check_positive_int("num_workers", num_workers, minimum=0)
        check_positive_int("seed", seed, minimum=0)
        check_positive_int("val_samples", val_samples)
        check_positive_int("val_images", val_images)
        if noise_sigma is not None:
            check_number("noise_sigma", noise_sigma, minimum=0.0, inclusive=False)
        if dataset == "synthetic":
            if root is not None:
                raise ValueError(f"root: the synthetic dataset is embedded and takes no root, got {root!r}")
        elif not isinstance(root, (str, os.PathLike)) or not Path(root).is_dir():
            raise ValueError(f"root: expected an existing folder for dataset={dataset!r}, got {root!r}")
        if dataset == "paired":
            if paired_degradation not in degradations:
                raise ValueError(f"paired_degradation: expected one of {list(degradations)} for dataset='paired', "
                                 f"got {paired_degradation!r}")
        elif paired_degradation is not None:
            raise ValueError(f"paired_degradation: only used with dataset='paired', got {paired_degradation!r}")
        self.save_hyperparameters()
        self.degradations: list[str] = list(degradations)
        # noise levels of synthesised noise in validation and test
        sigmas = NOISE_SIGMAS if noise_sigma is None else (noise_sigma,)
        self.sigmas: tuple[float, ...] = tuple(float(s) for s in sigmas)
        self.train_dataset: TrainDataset | None = None
        self.val_dataset: EvalDataset | None = None
        self.test_dataset: EvalDataset | None = None

    @property
    def preprocess(self) -> RestorationPreprocess:
        """The settings the model takes from the data (the CLI links them to ``model.preprocess``)."""
        return RestorationPreprocess(degradation_names=list(self.degradations))

    @property
    def test_names(self) -> list[str]:
        """A readable id per test sample, in test-loader order (e.g. ``chelsea/denoise/sigma25``)."""
        self.setup()
        return [item.name for item in self.test_dataset.items]

    # -- splits ------------------------------------------------------------------------------
    def _val_items(self, pairs: list[tuple[Entry, int, str]]) -> list[EvalItem]:
        """``val_samples`` fixed crops cycling over ``(image, label, image name)``; synthesised noise
        cycles over the noise levels."""
        items = []
        for k in range(self.hparams.val_samples):
            entry, label, image_name = pairs[k % len(pairs)]
            name = self.degradations[label]
            real_pair = isinstance(entry, Record) and not entry.extra.get("add_noise")
            sigma = self.sigmas[(k // len(pairs)) % len(self.sigmas)] if name == "denoise" and not real_pair else 0.0
            items.append(EvalItem(entry, label, sigma, (synthetic.VAL_SEED, k), self.hparams.crop_size,
                                  _item_name(image_name, name, sigma) + f"/crop{k}"))
        return items

    def _test_items(self, records: list[Record]) -> list[EvalItem]:
        """Whole-image items of real records; synthesised-noise records once per noise level."""
        items, counts = [], dict.fromkeys(self.degradations, 0)
        for r in records:
            label, index = self.degradations.index(r.degradation), counts[r.degradation]
            counts[r.degradation] += 1
            image_name = f"{r.extra['set']}/{Path(r.input).name}" if "set" in r.extra else Path(r.input).name
            for sigma in self.sigmas if r.extra.get("add_noise") else (0.0,):
                # the seed depends on (degradation, image, sigma) only, not on the other degradations
                seed = (synthetic.TEST_SEED, DEGRADATION_NAMES.index(r.degradation), index, int(round(sigma * 100)))
                items.append(EvalItem(r, label, sigma, seed, None, _item_name(image_name, r.degradation, sigma)))
        return items

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        hp, names = self.hparams, self.degradations
        labels = range(len(names))
        if hp.dataset == "synthetic":
            split, images = synthetic.split_images(), synthetic.load_images()
            train = {label: list(split["train"]) for label in labels}
            val = self._val_items([(img, label, img.name) for img in split["val"] for label in labels])
            test = [EvalItem(images[s.image], names.index(s.degradation), s.sigma, s.seed, None,
                             _item_name(s.image, s.degradation, s.sigma))
                    for s in synthetic.synthetic_test_samples(names, self.sigmas)]
        else:
            if hp.dataset == "promptir":
                records = read_promptir_train(hp.root, names)
                test_records = read_promptir_test(hp.root, names)
                train_records, val_records = _hold_out(records, hp.val_images)
            else:
                root = Path(hp.root)
                records = read_paired(root / "train", hp.paired_degradation)
                test_records = read_paired(root / "test", hp.paired_degradation)
                if (root / "val").is_dir():
                    train_records, val_records = records, read_paired(root / "val", hp.paired_degradation)
                else:
                    train_records, val_records = _hold_out(records, hp.val_images)
            train = {}
            for r in train_records:
                train.setdefault(names.index(r.degradation), []).append(r)
            val = self._val_items([(r, names.index(r.degradation), Path(r.input).name) for r in val_records])
            test = self._test_items(test_records)
        self.train_dataset = TrainDataset(train, names, hp.crop_size, hp.samples_per_epoch, hp.seed, hp.noise_sigma)
        self.val_dataset = EvalDataset(val, names)
        self.test_dataset = EvalDataset(test, names)

    # -- loaders -----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self.loader(self.train_dataset, sampler=EpochSampler(len(self.train_dataset)))

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self.loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self.loader(self.test_dataset, 1)

    predict_suffixes = IMAGE_SUFFIXES

    def predict_file_inputs(self, path: Path) -> dict[str, Any]:
        return {"image": str(path)}

    def predict_split(self) -> tuple[Dataset, Any, list[str]]:
        names = self.test_names  # sets the data up
        return self.test_dataset, lambda sample: {"image": sample["input"]}, names
