"""``mmoe predict``'s input files and writers, tried as a hostile user would: wrong endings, links
out of the folder, lying array headers, pickles, unknown keys, missing boxes, half-written files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmoe.datamodules.emotion.predict_files import read_conversation
from mmoe.datamodules.pde import predict_files as pde_files
from mmoe.datamodules.tracking.predict_files import read_sequence
from mmoe.prediction import PredictionWriter, list_inputs, save_image


def test_list_inputs_orders_names_and_refuses(tmp_path: Path) -> None:
    for name in ("b10.png", "b2.png", "a.PNG", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "b2.jpg").write_bytes(b"x")  # same stem as b2.png: both keep their full names
    got = list_inputs(tmp_path, (".png", ".jpg"))
    assert [n for n, _ in got] == ["a", "b2.jpg", "b2.png", "b10"]
    with pytest.raises(ValueError, match="predict_path: .*notes.txt.* not a file this task reads"):
        list_inputs(tmp_path / "notes.txt", (".png",))
    with pytest.raises(ValueError, match="no such file"):
        list_inputs(tmp_path / "missing", (".png",))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no input this task reads"):
        list_inputs(empty, (".png",))
    # a link out of the folder is refused, not followed
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    inner = tmp_path / "inner"
    inner.mkdir()
    os.symlink(outside, inner / "link.png")
    with pytest.raises(ValueError, match="leads outside"):
        list_inputs(inner, (".png",))
    assert [n for n, _ in list_inputs(tmp_path / "b2.png", (".png",))] == ["b2"]
    assert list_inputs(tmp_path, (".nii.gz",), folders=lambda p: p.name == "inner") == [("inner", inner)]


def test_pde_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "ok.npz", field=np.ones((8, 8), np.float32), family=np.array("heat"), nu=np.float64(0.01))
    got = pde_files.read_field_file(tmp_path / "ok.npz")
    assert got["family"] == "heat" and got["nu"] == pytest.approx(0.01) and got["field"].shape == (8, 8)
    np.save(tmp_path / "f.npy", np.zeros((4, 8, 8), np.float32))
    assert pde_files.read_field_file(tmp_path / "f.npy")["field"].shape == (4, 8, 8)

    np.savez(tmp_path / "nofield.npz", u=np.ones(3))
    with pytest.raises(ValueError, match="no 'field'"):
        pde_files.read_field_file(tmp_path / "nofield.npz")
    np.savez(tmp_path / "extra.npz", field=np.ones(3), run=np.ones(1))
    with pytest.raises(ValueError, match=r"unknown arrays \['run'\]"):
        pde_files.read_field_file(tmp_path / "extra.npz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="numeric array"):
        pde_files.read_field_file(tmp_path / "obj.npy")
    np.savez(tmp_path / "twofam.npz", field=np.ones(3), family=np.array(["heat", "darcy"]))
    with pytest.raises(ValueError, match="one name"):
        pde_files.read_field_file(tmp_path / "twofam.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        pde_files.read_field_file(tmp_path / "bad.npz")
    # a header that claims 2^40 values is refused before anything is allocated
    lying = tmp_path / "lying.npy"
    with open(lying, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**20)})
        f.write(b"\0" * 64)
    with pytest.raises(ValueError, match="more than"):
        pde_files.read_field_file(lying)


def test_emotion_files(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("hello there\n\n  I am furious  \n", encoding="utf-8")
    assert read_conversation(tmp_path / "c.txt") == {"conversation": ["hello there", "I am furious"]}
    (tmp_path / "c.json").write_text(json.dumps(["hi", {"text": "so sad", "audio": "a.wav"}]), encoding="utf-8")
    got = read_conversation(tmp_path / "c.json")["conversation"]
    assert got[0] == "hi" and got[1]["audio"] == str((tmp_path / "a.wav").resolve())
    (tmp_path / "escape.json").write_text(json.dumps([{"audio": "../../etc/passwd"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="leads outside"):
        read_conversation(tmp_path / "escape.json")
    (tmp_path / "keys.json").write_text(json.dumps([{"text": "x", "label": 3}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown keys \['label'\]"):
        read_conversation(tmp_path / "keys.json")
    (tmp_path / "obj.json").write_text(json.dumps({"text": "x"}), encoding="utf-8")
    with pytest.raises(ValueError, match="JSON list"):
        read_conversation(tmp_path / "obj.json")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no turn"):
        read_conversation(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_conversation(tmp_path / "latin.txt")


def test_tracking_sequences(tmp_path: Path) -> None:
    seq = tmp_path / "seq"
    (seq / "rgb").mkdir(parents=True)
    (seq / "depth").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(seq / "rgb" / "1.png")
    (seq / "groundtruth.txt").write_text("1\t2\t3\t4\n5,6,7,8\n")
    got = read_sequence(seq)
    assert got == {"init_box": [1.0, 2.0, 3.0, 4.0], "frames": str(seq / "rgb"), "x_frames": str(seq / "depth"),
                   "modality": "depth"}
    (seq / "thermal").mkdir()
    with pytest.raises(ValueError, match="several modalities"):
        read_sequence(seq)
    (tmp_path / "clip.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match="needs its first box"):
        read_sequence(tmp_path / "clip.mp4")
    (tmp_path / "clip.txt").write_text("10, 20, abc, 5")
    with pytest.raises(ValueError, match="x, y, w, h"):
        read_sequence(tmp_path / "clip.mp4")
    nobox = tmp_path / "nobox"
    nobox.mkdir()
    with pytest.raises(ValueError, match="init_box.txt or groundtruth.txt"):
        read_sequence(nobox)


class _Failing(PredictionWriter):
    def write(self, name: str, inputs: dict, result: object) -> None:
        with self.target(f"{name}.png") as tmp:
            save_image(tmp, np.zeros((4, 4), np.uint8))
            raise RuntimeError("interrupted while writing")


def test_writer_leaves_nothing_half_written(tmp_path: Path) -> None:
    writer = _Failing(tmp_path)
    with pytest.raises(RuntimeError):
        writer.write("a", {}, None)
    assert list(tmp_path.iterdir()) == []


def test_save_image_layouts(tmp_path: Path) -> None:
    import torch

    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    save_image(tmp_path / "a.png", rgb)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), rgb)  # RGB order kept
    save_image(tmp_path / "b.png", torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)  # torch: channels first
    assert np.abs(np.asarray(Image.open(tmp_path / "b.png")).astype(int) - rgb).max() <= 1
    deep = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    save_image(tmp_path / "c.png", deep)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), deep)  # 16-bit kept
    with pytest.raises(ValueError, match=r"expected \[H, W\]"):
        save_image(tmp_path / "d.png", np.zeros((2, 3, 4, 5)))
