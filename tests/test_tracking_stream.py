"""The streaming tracker (issue 29, item 4): ``model.track(first_frame, init_box, x)`` then
``tracker.update(frame, x)``. Its boxes equal a whole-sequence reference loop (the batch path
predict had before streaming) for the released model and for tiny models with every inference
option; predict is that loop; the state does not grow; a long video streams in bounded memory;
bad frames, boxes and modalities are refused by name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import mmoe
from mmoe.datamodules.tracking.crops import crop_around
from mmoe.datamodules.tracking.synthetic import render_sequence
from mmoe.inputs.video import FrameReader
from mmoe.tasks.tracking import TrackingTask
from mmoe.tasks.tracking.model import decode_boxes
from mmoe.tasks.tracking.stream import Tracker

PRE = {"template_size": 32, "search_size": 64}


def tiny(modality="depth", **kwargs):
    torch.manual_seed(0)
    return TrackingTask(preprocess={**PRE, "modality": modality}, dim=16, depth=2, num_heads=2, hidden_dim=16,
                        moe={"num_experts": 2}, slots=1, **kwargs).eval()


@torch.no_grad()
def reference_boxes(task: TrackingTask, frames: np.ndarray, x: np.ndarray | None, init_box: np.ndarray) -> np.ndarray:
    """The whole-sequence loop predict ran before the streaming API (all frames in memory as one
    float array), written out independently; boxes clipped to the frame as predict returns them."""
    pre, hp = task.pre, task.hparams
    rgb = frames.astype(np.float32) / 255
    H, W = rgb.shape[1:3]

    def t(a):
        a = a[:, :, None] if a.ndim == 2 else a
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].float()

    def templates(k, b):
        z = t(crop_around(rgb[k], b, pre.template_factor, pre.template_size)[0])
        zx = t(crop_around(x[k], b, pre.template_factor, pre.template_size)[0]) if x is not None else None
        return z, zx

    box = np.asarray(init_box, np.float64)
    z, zx = templates(0, box)
    out, centre, last = [box], box, 0
    for k in range(1, len(rgb)):
        s, tf = crop_around(rgb[k], centre, pre.search_factor, pre.search_size)
        sx = t(crop_around(x[k], centre, pre.search_factor, pre.search_size)[0]) if x is not None else None
        cb, c = decode_boxes(task.model(z, t(s), zx, sx), float(hp.get("window", 0.0)))
        b = tf.box_to_frame(cb[0].double().numpy() * pre.search_size)
        w, h = np.clip(b[2], 1, W), np.clip(b[3], 1, H)
        cx, cy = np.clip(b[0] + b[2] / 2, 0, W), np.clip(b[1] + b[3] / 2, 0, H)
        b = np.array([cx - w / 2, cy - h / 2, w, h])
        out.append(b)
        if float(c[0]) >= hp.lost_threshold:
            centre = b
        upd = hp.get("template_update")
        if upd is not None and float(c[0]) >= upd and k - last >= hp.template_update_every:
            z, zx = templates(k, b)
            last = k
    boxes = np.stack(out)
    x0, y0 = np.clip(boxes[1:, 0], 0, W), np.clip(boxes[1:, 1], 0, H)
    x1, y1 = np.clip(boxes[1:, 0] + boxes[1:, 2], 0, W), np.clip(boxes[1:, 1] + boxes[1:, 3], 0, H)
    boxes[1:] = np.stack([x0, y0, x1 - x0, y1 - y0], 1)
    return boxes


def stream(task, frames, x, init_box, modality=None):
    tracker = task.track(frames[0], init_box, x[0] if x is not None else None, modality)
    boxes, conf = [np.asarray(init_box, np.float64)], [1.0]
    for k in range(1, len(frames)):
        b, c = tracker.update(frames[k], x[k] if x is not None else None)
        boxes.append(b)
        conf.append(c)
    return np.stack(boxes), np.array(conf)


@pytest.fixture
def zoo_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path))
    monkeypatch.delenv("MMOE_ZOO_URL", raising=False)
    monkeypatch.delenv("MMOE_OFFLINE", raising=False)
    return tmp_path


def test_released_model_streams_the_batch_path_boxes(zoo_env):
    model = mmoe.load("tracking-rgbd-moe")
    s = render_sequence(9_100, "test", "depth", length=30)
    ref = reference_boxes(model, s.frames, s.x, s.boxes[0])
    streamed, conf = stream(model, s.frames, s.x, s.boxes[0])
    np.testing.assert_allclose(streamed, ref, rtol=0, atol=1e-6)
    out = model.predict(list(s.frames), s.boxes[0], x_frames=list(s.x))
    np.testing.assert_allclose(out["boxes"], ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["confidence"], conf, rtol=0, atol=1e-7)
    assert np.abs(np.diff(ref[:, 0])).max() > 1, "the boxes move: the comparison is not trivial"


@pytest.mark.parametrize("kwargs", [{}, {"window": 0.3}, {"template_update": 1e-6, "template_update_every": 2},
                                    {"lost_threshold": 0.0}])
@pytest.mark.parametrize("modality", ["depth", None])
def test_tiny_models_stream_the_batch_path_boxes(kwargs, modality):
    task = tiny(modality, **kwargs)
    s = render_sequence(3, "val", "depth", length=12, size=(80, 96))
    x = s.x if modality else None
    ref = reference_boxes(task, s.frames, x, s.boxes[0])
    np.testing.assert_allclose(stream(task, s.frames, x, s.boxes[0])[0], ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(task.predict(s.frames, s.boxes[0], s.x)["boxes"], ref, rtol=0, atol=1e-6)


def test_state_is_bounded():
    """The tracker keeps the same objects of the same sizes after 3 and after 40 frames."""
    task = tiny()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (41, 48, 60, 3), dtype=np.uint8)
    xs = rng.random((41, 48, 60), dtype=np.float32)
    tracker = task.track(frames[0], [20, 15, 12, 10], xs[0])

    def footprint():
        sizes = {}
        for k, v in vars(tracker).items():
            if isinstance(v, (torch.Tensor, np.ndarray)):
                sizes[k] = tuple(v.shape)
            elif isinstance(v, (list, dict, tuple, set)):
                sizes[k] = len(v)
        return sizes

    for k in range(1, 4):
        tracker.update(frames[k], xs[k])
    early = footprint()
    for k in range(4, 41):
        box, conf = tracker.update(frames[k], xs[k])
    assert footprint() == early and tracker.index == 40
    assert box.shape == (4,) and box.dtype == np.float64 and 0 <= conf <= 1
    assert 0 <= box[0] and box[0] + box[2] <= 60 + 1e-9 and box[2] > 0


def test_a_frame_without_x_tracks_from_rgb():
    """A dropped X frame is tracked from RGB alone: the RGB-only forward's box for that frame."""
    task = tiny()
    s = render_sequence(5, "val", "depth", length=3, size=(80, 96))
    with_x = task.track(s.frames[0], s.boxes[0], s.x[0])
    rgb_only = task.track(s.frames[0], s.boxes[0])
    b1, _ = with_x.update(s.frames[1])
    b2, _ = rgb_only.update(s.frames[1])
    np.testing.assert_allclose(b1, b2)
    b3, _ = task.track(s.frames[0], s.boxes[0], s.x[0]).update(s.frames[1], s.x[1])
    assert not np.allclose(b1, b3), "X is used when given"


def test_training_mode_is_restored():
    task = tiny()
    task.train()
    rng = np.random.default_rng(1)
    f = rng.integers(0, 256, (2, 40, 52, 3), dtype=np.uint8)
    tracker = task.track(f[0], [10, 12, 14, 9])
    tracker.update(f[1])
    assert task.training


def test_video_streamed_from_the_reader(tmp_path):
    """Frames of a video through mmoe.inputs.video.FrameReader into update: predict's boxes."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for k in range(8):
        f = np.full((48, 64, 3), 30, np.uint8)
        f[10:22, 5 + 3 * k:17 + 3 * k] = (220, 180, 40)
        writer.write(f)
    writer.release()
    task = tiny(None)
    frames = iter(FrameReader(str(path), "frames"))
    tracker = task.track(next(frames), [5, 10, 12, 12])
    boxes = [tracker.box] + [tracker.update(f)[0] for f in frames]
    np.testing.assert_allclose(np.stack(boxes), task.predict(str(path), [5, 10, 12, 12])["boxes"], atol=1e-6)


STREAM_RSS = textwrap.dedent("""
    import resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from mmoe.inputs.video import FrameReader
    from mmoe.tasks.tracking import TrackingTask
    torch.manual_seed(0)
    task = TrackingTask(preprocess={"template_size": 32, "search_size": 64, "modality": None}, dim=16, depth=2,
                        num_heads=2, hidden_dim=16, moe={"num_experts": 2}, slots=1).eval()
    warm = task.track(np.zeros((480, 640, 3), np.uint8), [300, 200, 60, 50])
    warm.update(np.zeros((480, 640, 3), np.uint8))
    frames = iter(FrameReader(sys.argv[1], "frames"))
    tracker = task.track(next(frames), [300, 200, 60, 50])
    n = 1
    for f in frames:
        tracker.update(f)
        n += 1
    assert n == int(sys.argv[2]), n
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_long_video_streams_in_bounded_memory(tmp_path):
    """A fresh process streams a synthetic 640x480 video of 20 and of 400 frames (400 decoded
    frames are 369 MB as uint8): its peak memory must not grow with the length."""
    peaks = {}
    for n in (20, 400):
        path = tmp_path / f"clip{n}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
        for k in range(n):
            f = np.full((480, 640, 3), 60, np.uint8)
            f[180:240, 250 + k % 100:310 + k % 100] = 230
            writer.write(f)
        writer.release()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        run = subprocess.run([sys.executable, "-c", STREAM_RSS, str(path), str(n)], capture_output=True, text=True,
                             env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        peaks[n] = int(run.stdout.split()[-1]) / 1024  # ru_maxrss: KiB on Linux
    assert peaks[400] - peaks[20] < 30, peaks


@pytest.mark.parametrize("call, error, match", [
    (lambda t, f, x: t.track(f[0], [10, 12, 0, 9]), ValueError, "init_box: expected a positive width"),
    (lambda t, f, x: t.track(f[0], [500, 12, 4, 9]), ValueError, "init_box: expected a box that overlaps"),
    (lambda t, f, x: t.track(f[0], "10 12 4 9"), TypeError, "init_box: expected 4 numbers"),
    (lambda t, f, x: t.track([[1, 2]], [1, 1, 2, 2]), TypeError, "first_frame: expected a numpy array"),
    (lambda t, f, x: t.track(f[0][..., 0], [1, 1, 2, 2]), ValueError, r"first_frame: expected frames \[H, W, 3\]"),
    (lambda t, f, x: t.track(f[0].astype(np.float32), [1, 1, 2, 2]), ValueError, r"first_frame: .*\[0, 1\]"),
    (lambda t, f, x: t.track(f[0], [10, 12, 14, 9], x[0][:20]), ValueError, "x: expected the RGB frames' size"),
    (lambda t, f, x: t.track(f[0], [10, 12, 14, 9], x[0], "lidar"), ValueError, "modality: expected one of"),
    (lambda t, f, x: t.track(f[0], [10, 12, 14, 9], x[0], "thermal"), ValueError,
     "modality: this model was trained with X = 'depth' only"),
    (lambda t, f, x: t.track(f[0], [10, 12, 14, 9]).update(f[1][:30]), ValueError,
     r"frame: expected the first frame's size \(40, 52\), got \(30, 52\)"),
    (lambda t, f, x: t.track(f[0], [10, 12, 14, 9]).update(f[1], x[1]), ValueError,
     "x: the tracker was started without X"),
    (lambda t, f, x: t.track(f[0], [10, 12, 14, 9], x[0]).update(f[1], x[1].astype(np.int64)), ValueError,
     "x: expected dtype uint8, uint16"),
    (lambda t, f, x: t.track(f[0], [10, 12, 14, 9], x[0]).update(None), TypeError, "frame: expected a numpy array"),
    (lambda t, f, x: t.predict(f, [10, 12, 14, 9], x, modality="event"), ValueError,
     "modality: this model was trained with X = 'depth' only"),
])
def test_bad_input_named(call, error, match):
    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, (3, 40, 52, 3), dtype=np.uint8)
    x = rng.integers(0, 5000, (3, 40, 52), dtype=np.uint16)
    with pytest.raises(error, match=match):
        call(tiny(), f, x)


def test_rgb_only_model_ignores_x_and_modality():
    task = tiny(None)
    rng = np.random.default_rng(2)
    f = rng.integers(0, 256, (3, 40, 52, 3), dtype=np.uint8)
    x = rng.random((3, 40, 52), dtype=np.float32)
    a = stream(task, f, x, [10, 12, 14, 9], "thermal")[0]
    b = stream(task, f, None, [10, 12, 14, 9])[0]
    np.testing.assert_allclose(a, b)
    assert isinstance(task.track(f[0], [10, 12, 14, 9]), Tracker)
