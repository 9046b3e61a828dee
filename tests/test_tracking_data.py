"""TrackingDataModule: training pairs put the target where the box says, are reproducible,
drop X on request; sequences come whole; real layouts load through the same datamodule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmoe.datamodules.tracking.datamodule import TrackingDataModule
from mmoe.sampling import EpochSampler

SMALL = dict(train_sequences=3, val_sequences=2, test_sequences=2, sequence_length=12, frame_size=(96, 128),
             template_size=32, search_size=64, samples_per_epoch=8, batch_size=4)


def test_pairs_shapes_reproducible_and_box_inside():
    dm = TrackingDataModule(modality="thermal", **SMALL)
    dm.setup()
    a, b = dm.train_dataset[(0, 3)], dm.train_dataset[(0, 3)]
    assert a["template"].shape == (3, 32, 32) and a["search"].shape == (3, 64, 64)
    assert a["template_x"].shape == (1, 32, 32) and a["search_x"].shape == (1, 64, 64)
    assert bool(a["has_x"]) and a["template"].dtype == torch.float32
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["search"], dm.train_dataset[(1, 3)]["search"])
    boxes = torch.stack([dm.train_dataset[(0, i)]["box"] for i in range(8)])
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    assert ((centres > 0) & (centres < 1)).all(), "jitter keeps the target's centre in the search crop"
    batch = next(iter(dm.train_dataloader()))
    assert batch["search"].shape == (4, 3, 64, 64)


def test_thermal_target_is_warm_inside_its_box():
    dm = TrackingDataModule(modality="thermal", **{**SMALL, "samples_per_epoch": 12})
    dm.setup()
    hotter = 0
    for i in range(12):
        s = dm.train_dataset[(0, i)]
        x, y, w, h = (s["box"] * 64).tolist()
        inner = s["search_x"][0, int(y + h * 0.35):int(y + h * 0.65), int(x + w * 0.35):int(x + w * 0.65)]
        hotter += bool(inner.numel()) and float(inner.mean()) > float(s["search_x"].mean()) + 0.1
    assert hotter >= 9, hotter  # a few samples have the occluder over the target


def test_rgb_only_drops_x():
    dm = TrackingDataModule(modality="depth", use_x=False, **SMALL)
    dm.setup()
    s = dm.train_dataset[(0, 0)]
    assert not bool(s["has_x"]) and not s["search_x"].any()
    seq = dm.val_dataset[0]
    assert "x" not in seq


def test_sequences_come_whole():
    dm = TrackingDataModule(modality="event", **SMALL)
    dm.setup()
    seq = next(iter(dm.test_dataloader()))
    assert seq["frames"].shape == (12, 96, 128, 3) and seq["frames"].dtype == torch.uint8
    assert seq["x"].shape == (12, 96, 128) and np.allclose(sorted(set(seq["x"].unique().tolist()) | {0.0, 1.0}), [0.0, 128 / 255, 1.0])
    assert seq["boxes"].shape == (12, 4) and seq["present"][0]
    assert "attr/occlusion" in seq
    assert dm.test_dataset.sequences[0].name.startswith("test-")


def test_epoch_sampler_counts_epochs():
    s = EpochSampler(2)
    assert list(s) == [(0, 0), (0, 1)] and list(s) == [(1, 0), (1, 1)]
    s.set_epoch(7)
    assert list(s)[0] == (7, 0)


def _write_lasher(root, names, n=6):
    for name in names:
        seq = root / name
        (seq / "visible").mkdir(parents=True)
        (seq / "infrared").mkdir()
        for k in range(n):
            frame = np.zeros((48, 64, 3), np.uint8)
            frame[10 + k:26 + k, 20:36] = 200
            Image.fromarray(frame).save(seq / "visible" / f"v{k:04d}.jpg")
            Image.fromarray(frame).save(seq / "infrared" / f"i{k:04d}.jpg")
        lines = "\n".join(f"20,{10 + k},16,16" for k in range(n))
        (seq / "visible.txt").write_text(lines)
        (seq / "infrared.txt").write_text(lines)


def test_real_layout_through_the_datamodule(tmp_path):
    _write_lasher(tmp_path / "train", ["a", "b", "c"])
    _write_lasher(tmp_path / "test", ["d"])
    dm = TrackingDataModule(dataset="lasher", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"),
                            val_sequences=1, template_size=32, search_size=64, samples_per_epoch=4, batch_size=2)
    dm.setup()
    assert [s.name for s in dm.val_dataset.sequences] == ["c"]
    s = dm.train_dataset[(0, 1)]
    assert bool(s["has_x"]) and s["search"].shape == (3, 64, 64)
    seq = dm.test_dataset[0]
    assert seq["frames"].shape == (6, 48, 64, 3) and seq["x"].shape == (6, 48, 64)


@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "otb"}, "dataset"), ({"modality": "rgb"}, "modality"), ({"root": "/nonexistent"}, "root"),
    ({"dataset": "lasher", "root": "/nonexistent"}, "root"), ({"search_size": 8}, "search_size"),
    ({"use_x": "no"}, "use_x"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrackingDataModule(**kwargs)


def test_setup_builds_only_what_the_stage_needs():
    dm = TrackingDataModule(**SMALL)
    dm.setup("test")
    assert dm.train_dataset is None and dm.val_dataset is None and len(dm.test_dataset) == 2
    first = dm.test_dataset[0]["frames"]
    dm.setup("fit")
    assert len(dm.val_dataset) == 2 and len(dm.train_dataset) == 8
    assert torch.equal(dm.test_dataset[0]["frames"], first)  # not rebuilt
    whole = TrackingDataModule(**SMALL)
    whole.setup()
    assert torch.equal(whole.test_dataset[0]["frames"], first)
    assert torch.equal(whole.train_dataset[(0, 1)]["search"], dm.train_dataset[(0, 1)]["search"])
