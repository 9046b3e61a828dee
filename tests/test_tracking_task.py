"""TrackingTask.predict: the input forms (arrays, folders, videos, 16-bit depth), the contract
(first box is init_box, boxes inside the frame) and clear errors on bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mmoe.tasks.tracking import TrackingPreprocess, TrackingTask

PRE = {"template_size": 32, "search_size": 64}


def tiny(modality="depth"):
    torch.manual_seed(0)
    return TrackingTask(preprocess={**PRE, "modality": modality}, dim=16, depth=2, num_heads=2, hidden_dim=16,
                        moe={"num_experts": 2}, slots=1)


def frames(n=4, h=40, w=52):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), rng.integers(0, 5000, (n, h, w), dtype=np.uint16)


def test_contract_and_forms(tmp_path):
    task = tiny()
    rgb, depth = frames()
    out = task.predict(list(rgb), [10, 12, 14, 9], x_frames=list(depth))
    assert out["boxes"].shape == (4, 4) and out["confidence"].shape == (4,)
    np.testing.assert_allclose(out["boxes"][0], [10, 12, 14, 9])
    assert out["confidence"][0] == 1.0 and ((out["confidence"] >= 0) & (out["confidence"] <= 1)).all()
    b = out["boxes"]
    assert (b[:, 2] >= 1).all() and (b[:, 0] + b[:, 2] / 2 <= 52).all() and (b[:, 1] + b[:, 3] / 2 <= 40).all()
    # the same frames from a folder of PNGs (16-bit depth) and from an array give the same boxes
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    for i in range(4):
        Image.fromarray(rgb[i]).save(tmp_path / "rgb" / f"{i:04d}.png")
        Image.fromarray(depth[i]).save(tmp_path / "depth" / f"{i:04d}.png")
    again = task.predict(str(tmp_path / "rgb"), np.array([10, 12, 14, 9.0]), x_frames=str(tmp_path / "depth"))
    np.testing.assert_allclose(again["boxes"], out["boxes"], atol=1e-6)
    assert not np.allclose(task.predict(rgb, [10, 12, 14, 9])["boxes"][1:], out["boxes"][1:]), "X is used"


def test_video_file(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (52, 40))
    rgb, _ = frames(3)
    for f in rgb:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    task = tiny(modality=None)
    out = task.predict(str(path), [10, 12, 14, 9])
    assert out["boxes"].shape == (3, 4)


def test_rgb_only_model_ignores_x():
    task = tiny(modality=None)
    rgb, depth = frames()
    np.testing.assert_allclose(task.predict(rgb, [10, 12, 14, 9], x_frames=depth)["boxes"],
                               task.predict(rgb, [10, 12, 14, 9])["boxes"])


@pytest.mark.parametrize("kwargs, match", [
    ({"init_box": [10, 12, 0, 9]}, "init_box: expected a positive width"),
    ({"init_box": [100, 12, 5, 9]}, "init_box: expected a box that overlaps"),
    ({"init_box": [1, 2, 3]}, "init_box: expected 4 finite"),
    ({"init_box": [1, 2, float("nan"), 3]}, "init_box: expected 4 finite"),
    ({"x_frames": "short"}, "x_frames: expected as many frames"),
    ({"frames": "gray"}, "frames: expected frames \\[H, W, 3\\]"),
    ({"frames": "nan"}, "frames.*NaN"),
    ({"frames": "big"}, "frames.*\\[0, 1\\]"),
    ({"frames": "sizes"}, "frames\\[1\\]: expected the first frame's size"),
    ({"frames": 3}, "frames: expected a list"),
    ({"frames": "/nonexistent/folder"}, "frames: expected a folder of images or a video"),
])
def test_bad_input(kwargs, match):
    task = tiny()
    rgb, depth = frames()
    special = {
        "short": list(depth[:2]), "gray": rgb[..., 0], "nan": np.full((2, 8, 8, 3), np.nan, np.float32),
        "big": np.full((2, 8, 8, 3), 2.0, np.float32), "sizes": [rgb[0], rgb[1][:20]],
    }
    args = {"frames": rgb, "init_box": [10, 12, 14, 9], "x_frames": depth}
    for key, value in kwargs.items():
        args[key] = special.get(value, value) if isinstance(value, str) else value
    with pytest.raises(ValueError, match=match):
        task.predict(**args)


def test_preprocess_checks():
    with pytest.raises(ValueError, match="preprocess.modality"):
        TrackingPreprocess(modality="lidar")
    with pytest.raises(ValueError, match="preprocess.search_size"):
        TrackingPreprocess(search_size=8)


def test_uint8_and_float_frames_track_alike():
    """uint8 frames are kept as uint8 and converted one at a time; the boxes equal the float path's."""
    task = tiny(modality=None)
    rgb, _ = frames(5, 37, 53)  # odd sizes
    a = task.predict(rgb, [9.5, 11, 13, 8])
    b = task.predict(rgb.astype(np.float32) / 255, [9.5, 11, 13, 8])
    mixed = task.predict([rgb[0], *(rgb[1:].astype(np.float32) / 255)], [9.5, 11, 13, 8])
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-4)
    np.testing.assert_allclose(mixed["boxes"], b["boxes"], atol=1e-4)


@pytest.mark.parametrize("update, every, distinct", [(None, 10, 1), (0.999, 1, 1), (1e-6, 2, 3), (1e-6, 1, 5)])
def test_template_update(update, every, distinct):
    """Confident frames replace the template at most every ``template_update_every`` frames; a
    threshold no frame reaches (a random model's confidence is about 0.01) keeps the first one."""
    task = TrackingTask(preprocess={**PRE, "modality": None}, dim=16, depth=2, num_heads=2, hidden_dim=16,
                        moe={"num_experts": 2}, slots=1, template_update=update, template_update_every=every)
    seen = []
    forward = task.model.forward

    def spy(template, search, *rest):
        seen.append(template.clone())
        return forward(template, search, *rest)

    task.model.forward = spy
    rgb, _ = frames(6)
    task.predict(rgb, [10, 12, 14, 9])
    assert len(seen) == 5
    assert len({t.numpy().tobytes() for t in seen}) == distinct


@pytest.mark.parametrize("kwargs", [{"template_update": 1.0}, {"template_update": 0.0}, {"template_update_every": 0},
                                    {"window": 1.0}, {"window": -0.1}])
def test_template_update_checks(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TrackingTask(preprocess={**PRE, "modality": None}, **kwargs)
