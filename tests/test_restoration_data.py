"""Restoration data: degradations, the embedded image split, the datamodule's batches and the
readers of the PromptIR/AirNet layout and of paired folders (tiny fixtures written here)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmoe.datamodules.restoration import RestorationDataModule
from mmoe.datamodules.restoration import degradations as D
from mmoe.datamodules.restoration import readers as R
from mmoe.datamodules.restoration import synthetic as S
from mmoe.sampling import EpochSampler
from mmoe.datamodules.restoration.preprocess import DEGRADATIONS_3, DEGRADATIONS_5


def _grad_energy(x: np.ndarray) -> tuple[float, float]:
    """Mean |d/dy| and |d/dx| of an [H, W, ...] array."""
    return float(np.abs(np.diff(x, axis=0)).mean()), float(np.abs(np.diff(x, axis=1)).mean())


def _rand_image(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Degradations
# ---------------------------------------------------------------------------------------
def test_names_match_the_task_io():
    assert list(D.DEGRADATION_NAMES) == DEGRADATIONS_5
    assert list(D.DEGRADATION_NAMES[:3]) == DEGRADATIONS_3


def test_noise_std_matches_sigma_and_is_8_bit():
    grey = np.full((256, 256, 3), 128 / 255, np.float32)
    for sigma in (15, 25):  # mid-grey is >= 5 sigma from both bounds: clipping is negligible
        out = D.add_noise(grey, np.random.default_rng(0), sigma)
        assert abs((out - grey).std() * 255 - sigma) < 0.02 * sigma
        assert abs((out - grey).mean() * 255) < 0.3
        np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-3)  # uint8 levels
    out = D.add_noise(grey, np.random.default_rng(0), 50)  # clipped at ~2.5 sigma: a bit under 50
    assert 0.93 * 50 < (out - grey).std() * 255 < 50 and out.min() == 0.0 and out.max() == 1.0
    drawn = {D.degrade("denoise", grey[:8, :8], np.random.default_rng(s))[1] for s in range(40)}
    assert drawn == {15.0, 25.0, 50.0}
    assert D.degrade("denoise", grey[:8, :8], np.random.default_rng(0), sigma=25)[1] == 25.0


def test_haze_follows_the_scattering_model():
    clear = _rand_image(1, 32, 48)
    depth = np.tile(np.linspace(0.0, 1.0, 48, dtype=np.float32), (32, 1))
    hazy = D.add_haze(clear, np.random.default_rng(0), depth, beta=1.3, airlight=0.85)
    t = np.exp(-1.3 * depth)[:, :, None]
    np.testing.assert_allclose(hazy, clear * t + 0.85 * (1 - t), atol=1e-6)
    # the far side is close to the airlight, the near side unchanged
    assert np.abs(hazy[:, 0] - clear[:, 0]).max() < 1e-6
    assert np.abs(hazy[:, -1] - 0.85).mean() < np.abs(clear[:, -1] - 0.85).mean()
    field = D.random_depth((100, 150), np.random.default_rng(2))
    assert field.shape == (100, 150) and field.min() == 0.0 and field.max() == 1.0
    assert max(_grad_energy(field)) < 0.02  # smooth
    with pytest.raises(ValueError, match="depth"):
        D.add_haze(clear, np.random.default_rng(0), depth[:, :10])


def test_motion_blur_kernel_sums_to_one_and_blurs():
    for seed, curved in [(0, False), (1, True), (2, None), (3, None)]:
        k = D.motion_blur_kernel(np.random.default_rng(seed), curved=curved)
        assert k.ndim == 2 and k.shape[0] % 2 == 1 and k.shape[0] == k.shape[1]
        assert abs(k.sum() - 1) < 1e-5 and k.min() >= 0 and (k > 0).sum() >= 5
    img = _rand_image(3, 96, 96)
    blurred = D.add_motion_blur(img, np.random.default_rng(4), D.motion_blur_kernel(np.random.default_rng(4), 11.0))
    assert sum(_grad_energy(blurred)) < 0.5 * sum(_grad_energy(img))
    assert abs(blurred.mean() - img.mean()) < 0.01
    with pytest.raises(ValueError, match="kernel"):
        D.add_motion_blur(img, np.random.default_rng(0), np.ones((4, 4)) / 16)


def test_low_light_darkens():
    img = S.load_images()["astronaut"].image[::4, ::4]
    dark = D.add_low_light(img, np.random.default_rng(0))
    assert dark.mean() < 0.6 * img.mean() and dark.min() >= 0 and dark.max() <= 1
    # without noise it is gain * image ** gamma on the 8-bit grid
    exact = D.add_low_light(img, np.random.default_rng(0), gamma=2.0, gain=0.5, photons=1e12, read_noise=0.0)
    np.testing.assert_allclose(exact, 0.5 * img.astype(np.float64) ** 2, atol=0.5 / 255 + 1e-5)


def test_rain_adds_bright_oriented_streaks():
    grey = np.full((128, 128, 3), 0.2, np.float32)
    for angle, along in ((0.0, 0), (90.0, 1)):  # vertical streaks vary little along y, and vice versa
        rainy = D.add_rain(grey, np.random.default_rng(0), angle=angle, density=0.004, length=25, layers=2)
        diff = rainy - grey
        assert diff.min() >= 0 and diff.mean() > 0.02
        assert np.allclose(diff[..., 0], diff[..., 2])  # white: the same in every channel
        energy = _grad_energy(diff)
        assert energy[along] < 0.4 * energy[1 - along]


@pytest.mark.parametrize("name", DEGRADATIONS_5)
def test_degradations_are_reproducible(name):
    img = _rand_image(5, 48, 40)
    a, sa = D.degrade(name, img, np.random.default_rng(7))
    b, sb = D.degrade(name, img, np.random.default_rng(7))
    c, _ = D.degrade(name, img, np.random.default_rng(8))
    assert a.dtype == np.float32 and a.shape == img.shape and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and sa == sb and not np.array_equal(a, c)
    assert (sa > 0) == (name == "denoise")


# ---------------------------------------------------------------------------------------
# Embedded images
# ---------------------------------------------------------------------------------------
def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_embedded_split_is_by_whole_image():
    split = S.split_images()
    names = {k: {img.name for img in v} for k, v in split.items()}
    assert not (names["test"] & names["train"]) and not (names["test"] & names["val"])
    assert not (names["val"] & names["train"]) and len(names["test"]) >= 2 and len(names["val"]) == 1
    train_pixels = {_digest(img.image) for img in split["train"] + split["val"]}
    assert not any(_digest(img.image) in train_pixels for img in split["test"])
    for img in sum(split.values(), []):
        assert img.image.dtype == np.float32 and img.image.ndim == 3 and img.image.shape[2] == 3
        assert 0 <= img.image.min() and img.image.max() <= 1
    moto = S.load_images()["motorcycle"]
    assert moto.depth is not None and moto.depth.shape == moto.image.shape[:2]
    assert np.isfinite(moto.depth).all() and moto.depth.min() == 0 and moto.depth.max() == 1


def test_disparity_to_depth_fills_holes():
    disparity = np.array([[np.inf, 40.0, 20.0], [0.0, 40.0, 10.0]], dtype=np.float32)  # two holes
    depth = S.disparity_to_depth(disparity)
    assert np.isfinite(depth).all() and depth.min() == 0 and depth.max() == 1
    assert depth[0, 1] < depth[0, 2] < depth[1, 2]  # larger disparity is nearer
    assert depth[0, 0] == depth[1, 0] == depth[0, 1]  # holes take their nearest valid neighbour


# ---------------------------------------------------------------------------------------
# DataModule (embedded)
# ---------------------------------------------------------------------------------------
def _check_batch(batch: dict, size: int | tuple[int, int], batch_size: int, num_labels: int) -> None:
    h, w = (size, size) if isinstance(size, int) else size
    assert set(batch) == {"input", "target", "degradation", "sigma"}
    for key in ("input", "target"):
        assert batch[key].dtype == torch.float32 and batch[key].shape == (batch_size, 3, h, w)
        assert batch[key].min() >= 0 and batch[key].max() <= 1
    assert batch["degradation"].dtype == torch.long and batch["degradation"].shape == (batch_size,)
    assert batch["degradation"].min() >= 0 and batch["degradation"].max() < num_labels
    assert batch["sigma"].dtype == torch.float32 and batch["sigma"].shape == (batch_size,)


def test_synthetic_train_batches_are_reproducible():
    dm = RestorationDataModule(crop_size=32, samples_per_epoch=16, batch_size=8, seed=3)
    assert dm.preprocess.degradation_names == DEGRADATIONS_3
    loader = dm.train_dataloader()
    epoch0, epoch1 = list(loader), list(loader)  # a new iteration is a new epoch
    _check_batch(epoch0[0], 32, 8, 3)
    assert len(epoch0) == 2
    labels = torch.cat([b["degradation"] for b in epoch0 + epoch1])
    sigmas = torch.cat([b["sigma"] for b in epoch0 + epoch1])
    assert set(labels.tolist()) == {0, 1, 2}
    assert ((sigmas > 0) == (labels == 0)).all() and set(sigmas[labels == 0].tolist()) <= {15.0, 25.0, 50.0}
    assert not torch.equal(epoch0[0]["input"], epoch1[0]["input"])
    again = list(RestorationDataModule(crop_size=32, samples_per_epoch=16, batch_size=8, seed=3).train_dataloader())
    for a, b in zip(epoch0, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    other = RestorationDataModule(crop_size=32, samples_per_epoch=16, batch_size=8, seed=4)
    other = next(iter(other.train_dataloader()))
    assert not torch.equal(epoch0[0]["input"], other["input"])
    assert torch.equal(dm.train_dataset[(5, 2)]["input"], dm.train_dataset[(5, 2)]["input"])
    sampler = EpochSampler(3)
    assert list(sampler) == [(0, 0), (0, 1), (0, 2)] and list(sampler)[0] == (1, 0)
    sampler.set_epoch(7)  # what Lightning does before each epoch (and after resuming)
    assert list(sampler) == [(7, 0), (7, 1), (7, 2)]


def test_synthetic_val_and_test_are_fixed_whole_images():
    dm = RestorationDataModule(degradations=DEGRADATIONS_5, crop_size=32, samples_per_epoch=8, batch_size=10,
                               val_samples=20)
    val = list(dm.val_dataloader())
    _check_batch(val[0], 32, 10, 5)
    assert val[0]["degradation"].tolist() == [0, 1, 2, 3, 4] * 2
    assert all(torch.equal(a["input"], b["input"]) for a, b in zip(val, dm.val_dataloader()))
    _check_batch(next(iter(dm.train_dataloader())), 32, 8, 5)

    dm3 = RestorationDataModule(crop_size=32)
    names = dm3.test_names
    assert len(names) == len(S.TEST_IMAGES) * 5  # 3 noise levels + derain + dehaze
    images = S.load_images()
    train_pixels = {_digest(img.image) for img in S.split_images()["train"]}
    for name, batch in zip(names, dm3.test_dataloader()):
        image, degradation = name.split("/")[:2]
        clean = images[image].image
        _check_batch(batch, clean.shape[:2], 1, 3)
        assert np.array_equal(batch["target"][0].permute(1, 2, 0).numpy(), clean)
        assert _digest(clean) not in train_pixels
        assert DEGRADATIONS_3[int(batch["degradation"])] == degradation
        assert float(batch["sigma"]) == (float(name.split("sigma")[1]) if degradation == "denoise" else 0.0)
    # the same test sample whatever else is configured
    first = dm.test_dataset[dm.test_names.index("chelsea/dehaze")]["input"]
    assert torch.equal(first, dm3.test_dataset[names.index("chelsea/dehaze")]["input"])


def test_fixed_noise_sigma():
    dm = RestorationDataModule(degradations=["denoise"], crop_size=16, samples_per_epoch=4, batch_size=4,
                               noise_sigma=25)
    assert next(iter(dm.train_dataloader()))["sigma"].tolist() == [25.0] * 4
    assert dm.test_names == ["chelsea/denoise/sigma25", "coffee/denoise/sigma25"]


@pytest.mark.parametrize("kwargs, arg", [
    ({"dataset": "folder"}, "dataset"),
    ({"degradations": ["denoise", "snow"]}, "degradations"),
    ({"degradations": ["denoise", "denoise"]}, "degradations"),
    ({"degradations": []}, "degradations"),
    ({"root": "/tmp"}, "root"),
    ({"dataset": "promptir"}, "root"),
    ({"dataset": "paired", "root": "/definitely/not/here", "paired_degradation": "derain"}, "root"),
    ({"dataset": "promptir", "root": ".", "degradations": ["deblur"]}, "degradations"),
    ({"dataset": "paired", "root": "."}, "paired_degradation"),
    ({"paired_degradation": "derain"}, "paired_degradation"),
    ({"crop_size": 4}, "crop_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"samples_per_epoch": 1.5}, "samples_per_epoch"),
    ({"seed": -1}, "seed"),
    ({"noise_sigma": -5}, "noise_sigma"),
    ({"val_samples": 0}, "val_samples"),
])
def test_bad_arguments_name_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=f"^{arg}:"):
        RestorationDataModule(**kwargs)


# ---------------------------------------------------------------------------------------
# Readers (tiny fixtures in the real layouts)
# ---------------------------------------------------------------------------------------
def _image(path: Path, seed: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _promptir(root: Path) -> Path:
    _image(root / "Train/Denoise/a.png", 0)
    _image(root / "Train/Denoise/WED/b.jpg", 1)
    (root / "Train/Denoise/.DS_Store").write_bytes(b"\0")  # ignored: hidden, not an image
    for n in (1, 2):
        _image(root / f"Train/Derain/rainy/rain-{n}.png", 10 + n)
        _image(root / f"Train/Derain/gt/norain-{n}.png", 20 + n)
    _image(root / "Train/Dehaze/synthetic/part1/0001_0.8_0.2.jpg", 30)
    _image(root / "Train/Dehaze/synthetic/part2/0001_0.9_0.1.jpg", 31)
    _image(root / "Train/Dehaze/synthetic/part1/0002_0.8_0.2.jpg", 32)
    _image(root / "Train/Dehaze/original/0001.jpg", 33)
    _image(root / "Train/Dehaze/original/0002.png", 34)
    _image(root / "test/denoise/bsd68/x.png", 40)
    _image(root / "test/denoise/urban100/y.png", 41, size=24)
    _image(root / "test/derain/Rain100L/input/rain-1.png", 50)
    _image(root / "test/derain/Rain100L/target/rain-1.png", 51)
    _image(root / "test/dehaze/input/0005_0.8_0.2.jpg", 60, size=20)
    _image(root / "test/dehaze/target/0005.png", 61, size=20)
    return root


def test_promptir_layout(tmp_path):
    root = _promptir(tmp_path / "data")
    train = R.read_promptir_train(root, DEGRADATIONS_3)
    by = {name: [r for r in train if r.degradation == name] for name in DEGRADATIONS_3}
    assert sorted(Path(r.input).name for r in by["denoise"]) == ["a.png", "b.jpg"]  # WED/ subfolder included
    assert all(r.input == r.target and r.extra["add_noise"] for r in by["denoise"])
    assert [(Path(r.input).name, Path(r.target).name) for r in by["derain"]] == [
        ("rain-1.png", "norain-1.png"), ("rain-2.png", "norain-2.png")]
    pairs = sorted((Path(r.input).parent.name + "/" + Path(r.input).name, Path(r.target).name) for r in by["dehaze"])
    assert pairs == [("part1/0001_0.8_0.2.jpg", "0001.jpg"), ("part1/0002_0.8_0.2.jpg", "0002.png"),
                     ("part2/0001_0.9_0.1.jpg", "0001.jpg")]
    assert {(r.extra["airlight"], r.extra["beta"]) for r in by["dehaze"]} == {(0.8, 0.2), (0.9, 0.1)}
    test = R.read_promptir_test(root, DEGRADATIONS_3)
    assert [(r.degradation, r.extra.get("set"), Path(r.input).name, Path(r.target).name) for r in test] == [
        ("denoise", "bsd68", "x.png", "x.png"), ("denoise", "urban100", "y.png", "y.png"),
        ("derain", "Rain100L", "rain-1.png", "rain-1.png"), ("dehaze", "dehaze", "0005_0.8_0.2.jpg", "0005.png")]
    image = R.read_image(root / "Train/Denoise/a.png")
    assert image.dtype == np.float32 and image.shape == (16, 16, 3) and 0 <= image.min() and image.max() <= 1

    dm = RestorationDataModule(dataset="promptir", root=str(root), crop_size=24, samples_per_epoch=8, batch_size=4,
                               val_samples=6)
    dm.setup()
    train_targets = {r.target for rs in dm.train_dataset.entries.values() for r in rs}
    val_targets = {item.entry.target for item in dm.val_dataset.items}
    assert val_targets and not (train_targets & val_targets)  # held out by clean image
    assert str(root / "Train/Dehaze/original/0002.png") in val_targets
    for batch in dm.train_dataloader():  # 16 px images, 24 px crops: reflect-padded
        _check_batch(batch, 24, 4, 3)
    _check_batch(next(iter(dm.val_dataloader())), 24, 4, 3)
    names = dm.test_names
    assert names == ["bsd68/x.png/denoise/sigma15", "bsd68/x.png/denoise/sigma25", "bsd68/x.png/denoise/sigma50",
                     "urban100/y.png/denoise/sigma15", "urban100/y.png/denoise/sigma25",
                     "urban100/y.png/denoise/sigma50", "Rain100L/rain-1.png/derain", "dehaze/0005_0.8_0.2.jpg/dehaze"]
    sizes = [batch["input"].shape[-1] for batch in dm.test_dataloader()]
    assert sizes == [16, 16, 16, 24, 24, 24, 16, 20]
    real = dm.test_dataset[names.index("Rain100L/rain-1.png/derain")]
    assert np.array_equal(real["input"].permute(1, 2, 0).numpy(),
                          R.read_image(root / "test/derain/Rain100L/input/rain-1.png")) and real["sigma"] == 0


def test_promptir_errors(tmp_path):
    root = _promptir(tmp_path / "data")
    (root / "Train/Derain/gt/norain-2.png").unlink()
    with pytest.raises(ValueError, match=r"^root: 1 image\(s\) without a clean target.*rain-2\.png.*norain-2"):
        R.read_promptir_train(root, DEGRADATIONS_3)
    shutil.rmtree(root / "Train/Dehaze")
    with pytest.raises(ValueError, match=r"^root: expected folder .*Train/Dehaze/synthetic"):
        R.read_promptir_train(root, ["dehaze"])
    assert len(R.read_promptir_train(root, ["denoise"])) == 2  # only the requested folders must exist
    dm = RestorationDataModule(dataset="promptir", root=str(root), degradations=["denoise", "dehaze"])
    with pytest.raises(ValueError, match="Train/Dehaze"):
        dm.setup()
    (root / "Train/Denoise/bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"^root: cannot read .*bad\.png"):
        R.read_image(root / "Train/Denoise/bad.png")
    (root / "test/denoise/bsd68/x.png").unlink()
    with pytest.raises(ValueError, match=r"^root: no images .*bsd68"):
        R.read_promptir_test(root, ["denoise"])


def _paired(folder: Path, names: list[str], seed: int) -> None:
    for i, name in enumerate(names):
        _image(folder / "input" / name, seed + i)
        _image(folder / "target" / name, seed + 100 + i)


def test_paired_folder(tmp_path):
    _paired(tmp_path / "train", ["a.png", "b.png", "c.png"], 0)
    _paired(tmp_path / "test", ["d.png"], 10)
    records = R.read_paired(tmp_path / "train", "deblur")
    assert [(Path(r.input).name, Path(r.target).name, r.degradation) for r in records] == [
        ("a.png", "a.png", "deblur"), ("b.png", "b.png", "deblur"), ("c.png", "c.png", "deblur")]
    assert all(Path(r.input).parent.name == "input" and Path(r.target).parent.name == "target" for r in records)

    dm = RestorationDataModule(dataset="paired", root=str(tmp_path), degradations=DEGRADATIONS_5,
                               paired_degradation="deblur", crop_size=16, samples_per_epoch=4, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, 16, 4, 5)
    assert batch["degradation"].tolist() == [3] * 4 and batch["sigma"].tolist() == [0.0] * 4
    assert dm.test_names == ["d.png/deblur"]
    sample = dm.test_dataset[0]
    assert np.array_equal(sample["input"].permute(1, 2, 0).numpy(), R.read_image(tmp_path / "test/input/d.png"))
    assert np.array_equal(sample["target"].permute(1, 2, 0).numpy(), R.read_image(tmp_path / "test/target/d.png"))

    (tmp_path / "train/target/b.png").unlink()
    with pytest.raises(ValueError, match=r"^root: 1 image\(s\) without a clean target.*b\.png"):
        R.read_paired(tmp_path / "train", "deblur")
    shutil.rmtree(tmp_path / "test/target")
    with pytest.raises(ValueError, match=r"^root: expected folder .*test/target"):
        R.read_paired(tmp_path / "test", "deblur")


def test_readers_refuse_links_out_of_the_root(tmp_path):
    root = _promptir(tmp_path / "data")
    _image(tmp_path / "elsewhere" / "secret.png", 9)
    (root / "Train/Derain/gt/norain-3.png").symlink_to(tmp_path / "elsewhere" / "secret.png")
    with pytest.raises(ValueError, match=r"^root: .*norain-3\.png.* leads outside the dataset folder"):
        R.read_promptir_train(root, ["derain"])
    _paired(tmp_path / "paired", ["a.png"], 0)
    (tmp_path / "paired/input/b.png").symlink_to(tmp_path / "elsewhere" / "secret.png")
    with pytest.raises(ValueError, match=r"^root: .*b\.png.* leads outside"):
        R.read_paired(tmp_path / "paired", "deblur")
    # a link inside the dataset is fine
    (tmp_path / "paired/input/b.png").unlink()
    (tmp_path / "paired/input/b.png").symlink_to(tmp_path / "paired/input/a.png")
    _image(tmp_path / "paired/target/b.png", 3)
    assert len(R.read_paired(tmp_path / "paired", "deblur")) == 2


def test_read_image_keeps_16_bits_and_refuses_what_is_not_an_image_pair(tmp_path):
    import cv2
    import tifffile

    rgb16 = (np.random.default_rng(0).random((10, 12, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])
    np.testing.assert_allclose(R.read_image(tmp_path / "c16.png"), rgb16 / 65535, atol=1e-6)  # was: 8 bits
    f = np.random.default_rng(1).random((10, 12)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f)
    np.testing.assert_array_equal(R.read_image(tmp_path / "f.tif"), np.repeat(f[..., None], 3, -1))  # was: black
    tifffile.imwrite(tmp_path / "big.tif", f * 300)
    with pytest.raises(ValueError, match=r"^root: .*big\.tif.*expected float values in \[0, 1\]"):
        R.read_image(tmp_path / "big.tif")
    Image.fromarray(np.full((4, 4), -7, np.int32), mode="I").save(tmp_path / "i.tif")
    with pytest.raises(ValueError, match=r"^root: .*i\.tif.*expected dtype uint8, uint16 or float"):
        R.read_image(tmp_path / "i.tif")
