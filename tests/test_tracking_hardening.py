"""Tracking inputs and readers under hostile or unusual input (issue 26: finding 9 and the
tracking low items): lazy frame reading with bounded memory, natural frame order, init_box
checks, boxes inside the frame, annotation files that must be refused, links out of the dataset
root, and X frames of another size than RGB."""

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
from PIL import Image, ImageFile

from mmoe.datamodules.tracking import readers
from mmoe.datamodules.tracking.datamodule import TrackingDataModule
from mmoe.inputs import video
from mmoe.inputs.video import FrameReader, natural_key
from mmoe.tasks.tracking import TrackingTask

PRE = {"template_size": 32, "search_size": 64}


def tiny(modality=None):
    torch.manual_seed(0)
    return TrackingTask(preprocess={**PRE, "modality": modality}, dim=16, depth=2, num_heads=2, hidden_dim=16,
                        moe={"num_experts": 2}, slots=1)


def write_video(path: Path, n: int, size: tuple[int, int] = (40, 52)) -> None:
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for k in range(n):
        frame = np.full((h, w, 3), 40, np.uint8)
        frame[h // 4:h // 4 + h // 5, (k * 3) % (w // 2):(k * 3) % (w // 2) + w // 5] = 220
        writer.write(frame)
    writer.release()


# ----------------------------------------------------------------------------- frame reading
def test_natural_sort_of_frame_folders(tmp_path):
    names = ["10.png", "2.png", "1.png", "img11.png", "img9.png"]
    for k, n in enumerate(names):
        Image.fromarray(np.full((4, 5, 3), k, np.uint8)).save(tmp_path / n)
    order = [p.name for p in video.list_images(tmp_path, "frames")]
    assert order == ["1.png", "2.png", "10.png", "img9.png", "img11.png"]
    # the reader yields them in that order, and the dataset readers list them alike
    assert [int(f[0, 0, 0]) for f in FrameReader(str(tmp_path), "frames")] == [2, 1, 0, 4, 3]
    assert [Path(p).name for p in readers.list_frames(tmp_path)] == order
    assert sorted(["a1", "1a", "a"], key=natural_key) == ["1a", "a", "a1"]  # mixed names compare


def test_video_read_frame_by_frame_and_counted(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 7)
    reader = FrameReader(str(path), "frames")
    assert len(reader) == 7
    frames = list(reader)
    assert len(frames) == 7 and frames[0].shape == (40, 52, 3) and frames[0].dtype == np.uint8


@pytest.mark.parametrize("make, match", [
    (lambda p: p.with_suffix(".avi").write_bytes(b"not a video at all" * 50), "frames: cannot open"),
    (lambda p: p.with_suffix(".mp4").write_bytes(b""), "frames: cannot open"),
])
def test_unreadable_video_named(tmp_path, make, match):
    make(tmp_path / "bad")
    path = next(tmp_path.iterdir())
    with pytest.raises(ValueError, match=match):
        FrameReader(str(path), "frames")


def test_unreadable_image_in_folder_named(tmp_path):
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "1.png")
    (tmp_path / "2.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"frames: cannot read .*2\.png"):
        list(FrameReader(str(tmp_path), "frames"))


def test_pixel_cap_before_decoding(tmp_path, monkeypatch):
    """A frame larger than the cap is refused from its header (image) or container (video)."""
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "1.png")
    write_video(tmp_path / "v.avi", 2)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    with pytest.raises(ValueError, match="frames: .*declares 2000 pixels, more than the limit of 1000"):
        list(FrameReader(str(tmp_path), "frames", max_pixels=1000))
    assert not decoded
    with pytest.raises(ValueError, match=r"frames: .*declares 2080 pixels per frame \(52x40\), more than the limit"):
        FrameReader(str(tmp_path / "v.avi"), "frames", max_pixels=1000)


def test_predict_reads_frames_lazily(tmp_path, monkeypatch):
    """Frame t is read only when the tracker reaches it: never more than one frame ahead."""
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(tmp_path / f"{k}.png")
    task = tiny()
    events = []
    read = video.read_image
    monkeypatch.setattr(video, "read_image", lambda *a, **k: events.append("read") or read(*a, **k))
    forward = task.model.forward
    task.model.forward = lambda *a: events.append("track") or forward(*a)
    out = task.predict(str(tmp_path), [10, 12, 14, 9])
    assert out["boxes"].shape == (6, 4)
    # the first frame (template) and then one read per tracked frame, interleaved
    assert events == ["read"] + ["read", "track"] * 5


RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from mmoe.tasks.tracking import TrackingTask
    torch.manual_seed(0)
    task = TrackingTask(preprocess={"template_size": 32, "search_size": 64, "modality": None}, dim=16, depth=2,
                        num_heads=2, hidden_dim=16, moe={"num_experts": 2}, slots=1)
    task.predict(np.zeros((2, 480, 640, 3), np.uint8), [300, 200, 60, 50])  # warm-up
    out = task.predict(sys.argv[1], [300, 200, 60, 50])
    assert len(out["boxes"]) == int(sys.argv[2])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_video_memory_does_not_grow_with_frames(tmp_path):
    """Finding 9: a fresh process tracks a 640x480 video of 20 and of 200 frames; its peak memory
    must not grow by the decoded frames (200 frames are 184 MB as uint8; the old path kept them
    and a stacked copy)."""
    peaks = {}
    for n in (20, 200):
        path = tmp_path / f"clip{n}.avi"
        write_video(path, n, (480, 640))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        run = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), str(n)], capture_output=True, text=True,
                             env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        peaks[n] = int(run.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    assert peaks[200] - peaks[20] < 40, peaks


# ----------------------------------------------------------------------------- predict's init_box and boxes
@pytest.mark.parametrize("box", [("a", 30, 20, 20), {"x": 1, "y": 2, "w": 3, "h": 4}, (True, 2, 14, 9),
                                 np.array([1, 1, 1, 1], bool), "10 12 14 9", [[10, 12], [14, 9]], None])
def test_init_box_errors_name_it(box):
    rgb = np.zeros((3, 40, 52, 3), np.uint8)
    with pytest.raises((ValueError, TypeError), match="init_box"):
        tiny().predict(rgb, box)


def test_first_box_is_init_box_exactly_and_boxes_inside_frame():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 40, 52, 3), dtype=np.uint8)
    init = [40.123456789, 30.987654321, 14.3, 9.7]  # not representable in float32; runs off the frame
    out = tiny().predict(rgb, init)
    assert out["boxes"].dtype == np.float64
    np.testing.assert_array_equal(out["boxes"][0], np.array(init))
    b = out["boxes"][1:]
    assert (b[:, :2] >= 0).all() and (b[:, 0] + b[:, 2] <= 52 + 1e-9).all() and (b[:, 1] + b[:, 3] <= 40 + 1e-9).all()
    assert (b[:, 2:] > 0).all()


def test_x_frames_reading_ends_early_is_refused(tmp_path):
    rgb = np.zeros((4, 40, 52, 3), np.uint8)
    write_video(tmp_path / "x.avi", 2)
    with pytest.raises(ValueError, match="x_frames: expected as many frames as frames \\(4\\), got 2"):
        tiny("thermal").predict(rgb, [10, 12, 14, 9], x_frames=str(tmp_path / "x.avi"))


# ----------------------------------------------------------------------------- dataset readers
def _got10k(root: Path, names=("seq",), n=3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "list.txt").write_text("\n".join(names) + "\n")
    for name in names:
        seq = root / name
        seq.mkdir(exist_ok=True)
        for k in range(1, n + 1):
            Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(seq / f"{k:08d}.jpg")
        (seq / "groundtruth.txt").write_text("\n".join("1,1,4,3" for _ in range(n)) + "\n")
    return root


@pytest.mark.parametrize("label", ["inf", "1e30", "-inf", "nan", "0.7", "1.5", "abc"])
def test_bad_flags_refused_naming_the_file(tmp_path, label):
    root = _got10k(tmp_path / "val")
    (root / "seq" / "absence.label").write_text(f"0\n{label}\n0\n")
    with pytest.raises(ValueError, match="absence.label"):
        readers.read_got10k(root)


def test_integer_flags_written_as_floats_still_read(tmp_path):
    root = _got10k(tmp_path / "val")
    (root / "seq" / "absence.label").write_text("0\n1.0\n0\n")
    assert readers.read_got10k(root)[0].present.tolist() == [True, False, True]


@pytest.mark.parametrize("line", ["5,,5,10,10", "5,5,10,", ",5,5,10", "5 5 10", "1,2,3,4,5"])
def test_malformed_box_lines_refused(tmp_path, line):
    root = _got10k(tmp_path / "val")
    (root / "seq" / "groundtruth.txt").write_text(f"1,1,4,3\n{line}\n1,1,4,3\n")
    with pytest.raises(ValueError, match="groundtruth.txt.* line 2"):
        readers.read_got10k(root)


def test_box_separators_still_read(tmp_path):
    root = _got10k(tmp_path / "val")
    (root / "seq" / "groundtruth.txt").write_text("1,1,4,3\n1\t1\t4\t3\n1 , 1 , 4 , 3\n")
    np.testing.assert_array_equal(readers.read_got10k(root)[0].boxes, [[1, 1, 4, 3]] * 3)


def test_non_utf8_annotation_refused_with_path(tmp_path):
    root = _got10k(tmp_path / "val")
    (root / "seq" / "groundtruth.txt").write_bytes(b"1,1,4,3\n\xff\xfe\x00\x81\n1,1,4,3\n")
    with pytest.raises(ValueError, match="groundtruth.txt"):
        readers.read_got10k(root)


def test_links_out_of_the_root_refused(tmp_path):
    outside = _got10k(tmp_path / "elsewhere", names=("private",))
    root = _got10k(tmp_path / "val", names=("seq",))
    (root / "list.txt").write_text("seq\nlinked\n")
    os.symlink(outside / "private", root / "linked")
    with pytest.raises(ValueError, match="linked.*outside"):
        readers.read_got10k(root)
    # a link inside the root is fine
    os.remove(root / "linked")
    os.symlink(root / "seq", root / "linked")
    assert [s.name for s in readers.read_got10k(root)] == ["seq", "linked"]


def test_annotation_linked_elsewhere_not_echoed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    root = _got10k(tmp_path / "val")
    os.remove(root / "seq" / "groundtruth.txt")
    os.symlink(secret, root / "seq" / "groundtruth.txt")
    with pytest.raises(ValueError) as err:
        readers.read_got10k(root)
    assert "hunter2" not in str(err.value) and "groundtruth.txt" in str(err.value)


def test_frame_linked_out_of_the_root_refused(tmp_path):
    root = _got10k(tmp_path / "val")
    outside = tmp_path / "outside.jpg"
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(outside)
    os.remove(root / "seq" / "00000002.jpg")
    os.symlink(outside, root / "seq" / "00000002.jpg")
    with pytest.raises(ValueError, match="00000002.jpg.*outside"):
        readers.read_got10k(root)


# ----------------------------------------------------------------------------- datamodule
def _depthtrack(root: Path, name: str, rgb_size=(40, 60), depth_size=(40, 60), n=4) -> None:
    seq = root / name
    (seq / "color").mkdir(parents=True)
    (seq / "depth").mkdir()
    for k in range(1, n + 1):
        Image.fromarray(np.zeros((*rgb_size, 3), np.uint8)).save(seq / "color" / f"{k:08d}.jpg")
        Image.fromarray(np.full(depth_size, 3000, np.uint16)).save(seq / "depth" / f"{k:08d}.png")
    (seq / "groundtruth.txt").write_text("\n".join("10,10,12,10" for _ in range(n)) + "\n")


def test_x_frames_of_another_size_refused_by_the_datamodule(tmp_path):
    for name in ("a", "b"):
        _depthtrack(tmp_path / "train", name)
    _depthtrack(tmp_path / "test", "c", depth_size=(20, 30))
    dm = TrackingDataModule(dataset="depthtrack", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"),
                            val_sequences=1, template_size=32, search_size=64, samples_per_epoch=4, batch_size=2)
    dm.setup("fit")  # the training sequences are aligned
    with pytest.raises(ValueError, match=r"root: sequence 'c'.*30x20.*60x40"):
        dm.setup("test")


def test_x_frame_of_another_size_later_in_a_sequence_refused(tmp_path):
    for name in ("a", "b"):
        _depthtrack(tmp_path / "train", name)
    bad = tmp_path / "train" / "a" / "depth" / "00000003.png"
    Image.fromarray(np.full((20, 30), 3000, np.uint16)).save(bad)
    dm = TrackingDataModule(dataset="depthtrack", root=str(tmp_path / "train"), test_root=str(tmp_path / "train"),
                            val_sequences=1, template_size=32, search_size=64, samples_per_epoch=4, batch_size=2)
    dm.setup("fit")
    seq = next(s for s in dm.train_dataset.sequences if s.name == "a")
    seq.x_frame(1)
    with pytest.raises(ValueError, match=r"00000003.png.*30x20.*60x40"):
        seq.x_frame(2)
