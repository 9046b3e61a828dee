"""Anomaly data: embedded wheel images, the test-set lesion simulator, the training pseudo-anomaly
synthesis (a different generator), the BMAD reader on tiny fixtures written in that layout, the datamodule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation, distance_transform_edt

from mmoe.datamodules.anomaly import AnomalyDataModule
from mmoe.datamodules.anomaly.bmad import read_bmad
from mmoe.datamodules.anomaly.lesions import LESION_TYPES, simulate_lesion
from mmoe.datamodules.anomaly.pseudo import KINDS, synthesize
from mmoe.datamodules.anomaly.sources import MODALITIES, load_views, to_unit_range


def _normal(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.2 + 0.5 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.1)  # a bright body on a dark background
    return np.clip(base[..., None] + 0.03 * rng.standard_normal((size, size, 3)), 0, 1).astype(np.float32)


def test_embedded_views_cover_every_modality_and_split() -> None:
    views = load_views()
    names = {}
    for v in views:
        assert v.modality in MODALITIES
        assert v.image.dtype == np.float32 and v.image.ndim == 3 and v.image.shape[-1] == 3
        assert 0 <= v.image.min() and v.image.max() <= 1
        names.setdefault(v.name, set()).add(v.split)
    assert all(len(s) == 1 for s in names.values())  # a view is in one split only
    for m in MODALITIES:
        for split in ("train", "val", "test"):
            assert any(v.modality == m and v.split == split for v in views), (m, split)


def test_to_unit_range_handles_scanner_units_and_flat_images() -> None:
    a = np.arange(-1000, 3000, dtype=np.int16).reshape(40, 100)
    u = to_unit_range(a)
    assert u.dtype == np.float32 and u.min() == 0 and u.max() == 1
    assert not to_unit_range(np.full((5, 7), 3)).any()


@pytest.mark.parametrize("modality", MODALITIES)
def test_lesion_simulator_changes_only_its_soft_region(modality: str) -> None:
    image = _normal()
    out, mask = simulate_lesion(image, modality, np.random.default_rng(5))
    again, mask2 = simulate_lesion(image, modality, np.random.default_rng(5))
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(mask, mask2)
    assert mask.dtype == bool and mask.any() and mask.mean() < 0.35
    changed = np.abs(out - image).max(-1) > 1e-6
    assert changed[mask].mean() > 0.9  # the lesion is where the mask says
    assert not (changed & ~binary_dilation(mask, iterations=4)).any()  # and nowhere far from it
    # soft borders: some pixels just outside the mask are partly changed
    assert changed[binary_dilation(mask, iterations=2) & ~mask].any()


def test_lesion_simulator_makes_hypo_and_hyper_masses() -> None:
    image = _normal()
    signs = set()
    for seed in range(12):
        out, mask = simulate_lesion(image, "brain_mri", np.random.default_rng(seed))
        signs.add(np.sign(float((out - image)[mask].mean())))
    assert signs == {-1.0, 1.0}
    with pytest.raises(ValueError, match="image"):
        simulate_lesion(image[..., 0], "ct", np.random.default_rng(0))


@pytest.mark.parametrize("kind", list(LESION_TYPES))
def test_lesion_types_are_reproducible_local_and_masked(kind: str) -> None:
    """Every benchmark lesion type (issue 32 item 5): same seed, same lesion; the mask is a modest
    region that changed; the change stays near the mask, except mass effect, which deforms the tissue
    around it (and changes more than its mask)."""
    image = _normal(size=64)
    out, mask = simulate_lesion(image, "ct", np.random.default_rng(7), kind=kind)
    again, _ = simulate_lesion(image, "ct", np.random.default_rng(7), kind=kind)
    np.testing.assert_array_equal(out, again)
    assert out.shape == image.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert mask.dtype == bool and 0 < mask.mean() < 0.35
    changed = np.abs(out - image).max(-1) > 1e-3
    assert changed[mask].mean() > 0.9
    far = changed & (distance_transform_edt(~mask) > 7)  # more than 7 px from the mask (diffuse: a 5.3 px ramp)
    if kind == "mass_effect":
        assert far.sum() > 10  # the displaced tissue around the mass
    else:
        assert not far.any()


def test_lesion_type_shapes_and_intensities_differ() -> None:
    """Bright and dark masses go both ways; a ring has a dark core inside a bright rim; a streak is thin."""
    image = _normal(size=64)
    sign = {k: np.sign(float((simulate_lesion(image, "ct", np.random.default_rng(3), kind=k)[0] - image)[
        simulate_lesion(image, "ct", np.random.default_rng(3), kind=k)[1]].mean())) for k in ("bright_mass", "dark_mass")}
    assert sign == {"bright_mass": 1.0, "dark_mass": -1.0}
    out, mask = simulate_lesion(image, "ct", np.random.default_rng(3), kind="ring")
    inner = mask & ~binary_dilation(~mask, iterations=3)  # well inside the lesion: the core
    rim = mask & ~inner
    assert out[inner].mean() < out[rim].mean() - 0.2
    _, streak = simulate_lesion(image, "ct", np.random.default_rng(3), kind="streak")
    assert streak.any() and not (streak & ~binary_dilation(~streak, iterations=3)).any()  # no pixel 3 px deep
    with pytest.raises(ValueError, match="kind: expected None or one of"):
        simulate_lesion(image, "ct", np.random.default_rng(0), kind="cyst")


@pytest.mark.parametrize("kind", KINDS)
def test_pseudo_anomalies_are_hard_edged_and_exactly_masked(kind: str) -> None:
    image, other = _normal(0), _normal(1)[::-1].copy()
    out, mask = synthesize(image, np.random.default_rng(3), other=other, kind=kind)
    assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0} and mask.any()
    changed = np.abs(out - image).max(-1) > 0.02
    np.testing.assert_array_equal(changed, mask > 0)  # hard borders: changed pixels are exactly the mask
    out2, _ = synthesize(image, np.random.default_rng(3), other=other, kind=kind)
    np.testing.assert_array_equal(out, out2)
    with pytest.raises(ValueError, match="kind"):
        synthesize(image, np.random.default_rng(0), kind="lesion")


# ------------------------------------------------------------------------ BMAD layout
def _png(path: Path, value: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(value).save(path)


def _write_bmad(root: Path, *, ungood: str = "Ungood", val: str = "valid", mask_dir: str = "label",
                img_dir: bool = True, masks: bool = True) -> None:
    rng = np.random.default_rng(0)
    img = lambda: (rng.random((20, 24)) * 255).astype(np.uint8)  # noqa: E731
    for i in range(4):
        _png(root / "train" / "good" / f"{i:03d}.png", img())
    for split in (val, "test"):
        sub = "img/" if img_dir else ""
        for i in range(2):
            _png(root / split / "good" / f"{sub}g{i}.png", img())
            _png(root / split / ungood / f"{sub}u{i}.png", img())
            if masks:
                m = np.zeros((20, 24), dtype=np.uint8)
                m[5:10, 6:12] = 255
                _png(root / split / ungood / mask_dir / f"u{i}.png", m)


@pytest.mark.parametrize("variant", [dict(), dict(ungood="ungood", val="val", mask_dir="anomaly_mask")])
def test_bmad_reader_layouts(tmp_path: Path, variant: dict) -> None:
    _write_bmad(tmp_path, **variant)
    train = read_bmad(tmp_path, "train")
    assert len(train) == 4 and all(r.label == 0 and r.mask is None for r in train)
    for split in ("val", "test"):
        recs = read_bmad(tmp_path, split)
        assert sorted(r.label for r in recs) == [0, 0, 1, 1]
        assert all((r.mask is not None) == (r.label == 1) for r in recs)
        assert all(Path(r.mask).name == Path(r.image).name for r in recs if r.mask)


def test_bmad_reader_camelyon_variant_and_errors(tmp_path: Path) -> None:
    _write_bmad(tmp_path / "cam", img_dir=False, masks=False, ungood="UNGOOD")
    recs = read_bmad(tmp_path / "cam", "test")
    assert sorted(r.label for r in recs) == [0, 0, 1, 1] and all(r.mask is None for r in recs)
    _write_bmad(tmp_path / "bad")
    next((tmp_path / "bad" / "test" / "Ungood" / "label").iterdir()).unlink()
    with pytest.raises(ValueError, match="no mask"):
        read_bmad(tmp_path / "bad", "test")
    with pytest.raises(ValueError, match="root"):
        read_bmad(tmp_path / "missing", "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="train"):
        read_bmad(tmp_path / "empty", "train")
    with pytest.raises(ValueError, match="valid"):
        read_bmad(tmp_path / "empty", "val")


def test_bmad_refuses_ambiguous_masks_case_twins_and_links_out(tmp_path: Path) -> None:
    _write_bmad(tmp_path / "two_masks")
    mask = tmp_path / "two_masks" / "test" / "Ungood" / "label"
    Image.open(mask / "u0.png").save(mask / "u0.jpg")  # was: the first by sorted name won
    with pytest.raises(ValueError, match=r"root: image .*u0\.png.* has 2 masks of the same name"):
        read_bmad(tmp_path / "two_masks", "test")
    _write_bmad(tmp_path / "twins")
    (tmp_path / "twins" / "TEST" / "good").mkdir(parents=True)  # empty twin of test/: was picked
    with pytest.raises(ValueError, match=r"root: .*\['TEST', 'test'\].*letter case"):
        read_bmad(tmp_path / "twins", "test")
    _write_bmad(tmp_path / "links")
    _png(tmp_path / "outside" / "secret.png", np.zeros((20, 24), np.uint8))
    (tmp_path / "links" / "train" / "good" / "zz.png").symlink_to(tmp_path / "outside" / "secret.png")
    with pytest.raises(ValueError, match=r"root: .*zz\.png.* leads outside the dataset folder"):
        read_bmad(tmp_path / "links", "train")


def test_bmad_images_read_through_the_shared_reader(tmp_path: Path) -> None:
    import cv2

    from mmoe.datamodules.anomaly import bmad

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"root: cannot read .*bad\.png"):  # was: UnidentifiedImageError
        bmad.read_image(str(bad))
    rgb16 = (np.random.default_rng(0).random((10, 12, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])
    np.testing.assert_allclose(bmad.read_image(str(tmp_path / "c16.png")), rgb16 / 65535, atol=1e-6)
    neg = np.full((10, 12, 3), -3, np.int16)
    with pytest.raises(TypeError, match="expected dtype uint8, uint16 or float"):
        bmad.to_unit_rgb(neg, "root")


def test_datamodule_reads_bmad(tmp_path: Path) -> None:
    _write_bmad(tmp_path / "brain")
    _write_bmad(tmp_path / "cam", img_dir=False, masks=False)
    dm = AnomalyDataModule(dataset="bmad", root=str(tmp_path / "brain"), image_size=16, samples_per_epoch=4,
                           batch_size=4)
    assert dm.preprocess.modality_names == ["bmad"] and dm.preprocess.image_size == 16
    b = next(iter(dm.test_dataloader()))
    assert b["image"].shape == (4, 3, 16, 16) and b["mask"].shape == (4, 1, 16, 16)
    assert b["label"].tolist() == [0, 0, 1, 1] and bool(b["has_mask"].all())
    assert b["mask"][b["label"] == 1].sum() > 0 and b["mask"][b["label"] == 0].sum() == 0
    t = next(iter(dm.train_dataloader()))
    assert t["pseudo_image"].shape == (4, 3, 16, 16) and t["label"].sum() == 0
    cam = AnomalyDataModule(dataset="bmad", root=str(tmp_path / "cam"), image_size=16, batch_size=4)
    b = next(iter(cam.test_dataloader()))
    assert b["has_mask"].tolist() == [True, True, False, False]  # image labels only for the anomalies


# ------------------------------------------------------------------------ datamodule
def test_embedded_datamodule_splits_and_reproducibility() -> None:
    dm = AnomalyDataModule(modalities=["ct", "fundus"], image_size=32, samples_per_epoch=6, batch_size=4)
    dm.setup()
    a, b = dm.train_dataset[(1, 3)], dm.train_dataset[(1, 3)]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert not torch.equal(dm.train_dataset[(2, 3)]["image"], a["image"])
    assert a["image"].shape == (3, 32, 32) and 0 <= a["image"].min() and a["image"].max() <= 1
    test = [dm.test_dataset[i] for i in range(len(dm.test_dataset))]
    labels = torch.stack([s["label"] for s in test])
    assert labels.sum() * 2 == len(test)  # as many lesioned as normal images
    for s in test:
        assert bool(s["mask"].any()) == bool(s["label"])
    assert {int(s["modality"]) for s in test} == {0, 1}
    names = dm.test_names
    assert all(n.startswith(("pydicom_", "skimage_")) for n in names)
    assert len(set(names)) == len(names)


def test_datamodule_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modalities"):
        AnomalyDataModule(modalities=["brain", "ct"])
    with pytest.raises(ValueError, match="image_size"):
        AnomalyDataModule(image_size=60)
    with pytest.raises(ValueError, match="root"):
        AnomalyDataModule(root=str(tmp_path))
    with pytest.raises(ValueError, match="root"):
        AnomalyDataModule(dataset="bmad", root=str(tmp_path / "nope"))
