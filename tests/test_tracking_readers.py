"""Tracking readers on tiny fixtures written in each dataset's exact layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmoe.datamodules.tracking.readers import (read_depthtrack, read_got10k, read_lasher, read_lasot,
                                               read_visevent)


def write_frames(folder: Path, names: list[str], mode: str = "RGB") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        if mode == "I;16":
            Image.fromarray(np.full((6, 8), 4000, dtype=np.uint16)).save(folder / n)
        else:
            Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(folder / n)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_lasher_sorts_what_is_there_and_zero_size_is_absent(tmp_path):
    seq = tmp_path / "10runone"
    write_frames(seq / "visible", ["v0002.jpg", "v0001.jpg", "v0003.jpg"])  # names differ per modality
    write_frames(seq / "infrared", ["i0001.jpg", "i0002.jpg", "i0003.jpg"])
    write_lines(seq / "visible.txt", ["10,20,30,40", "11,21,0,40", "12,22,30,41"])
    write_lines(seq / "infrared.txt", ["10,20,30,40", "11,21,0,40", "12,22,30,41"])
    (tmp_path / "not_a_sequence").mkdir()
    [s] = read_lasher(tmp_path)
    assert s.name == "10runone" and s.modality == "thermal"
    assert [Path(f).name for f in s.frames] == ["v0001.jpg", "v0002.jpg", "v0003.jpg"]
    assert [Path(f).name for f in s.x_frames] == ["i0001.jpg", "i0002.jpg", "i0003.jpg"]
    np.testing.assert_array_equal(s.boxes[2], [12, 22, 30, 41])
    assert s.present.tolist() == [True, False, True]
    write_lines(seq / "infrared.txt", ["10,20,30,40"])
    with pytest.raises(ValueError, match="root: sequence .*3 frames but 1 infrared.txt boxes"):
        read_lasher(tmp_path)


def test_depthtrack_nan_rows_and_16_bit_depth(tmp_path):
    seq = tmp_path / "adapter01_indoor"
    write_frames(seq / "color", [f"{i:08d}.jpg" for i in range(1, 4)])
    write_frames(seq / "depth", [f"{i:08d}.png" for i in range(1, 4)], mode="I;16")
    write_lines(seq / "groundtruth.txt", ["1,2,3,4", "nan,nan,nan,nan", "1.5,2.5,3.5,4.5"])
    [s] = read_depthtrack(tmp_path)
    assert s.modality == "depth" and s.present.tolist() == [True, False, True]
    assert np.asarray(Image.open(s.x_frames[0])).dtype == np.uint16
    write_lines(seq / "groundtruth.txt", ["1,2,3", "1,2,3,4", "1,2,3,4"])
    with pytest.raises(ValueError, match="line 1: expected 4 numbers"):
        read_depthtrack(tmp_path)


def test_visevent_lists_and_absent_labels(tmp_path):
    for name in ("dvSave-1", "dvSave-2"):
        seq = tmp_path / name
        write_frames(seq / "vis_imgs", ["frame0000.bmp", "frame0001.bmp"])
        write_frames(seq / "event_imgs", ["frame0000.bmp", "frame0001.bmp"])
        write_lines(seq / "groundtruth.txt", ["1,1,5,5", "2,2,5,5"])
        write_lines(seq / "absent_label.txt", ["1", "0"])
    write_lines(tmp_path / "trainlist.txt", ["dvSave-1"])
    write_lines(tmp_path / "testlist.txt", ["dvSave-2"])
    [s] = read_visevent(tmp_path, "test")
    assert s.name == "dvSave-2" and s.modality == "event" and s.present.tolist() == [True, False]
    assert [s.name for s in read_visevent(tmp_path, "train")] == ["dvSave-1"]
    write_lines(tmp_path / "testlist.txt", ["../escape"])
    with pytest.raises(ValueError, match="plain sequence folder name"):
        read_visevent(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        read_visevent(tmp_path, "val")


def test_lasot_occlusion_and_out_of_view(tmp_path):
    seq = tmp_path / "airplane" / "airplane-1"
    write_frames(seq / "img", [f"{i:08d}.jpg" for i in range(1, 5)])
    write_lines(seq / "groundtruth.txt", ["1,1,5,5"] * 4)
    write_lines(seq / "full_occlusion.txt", ["0,1,0,0"])
    write_lines(seq / "out_of_view.txt", ["0,0,1,0"])
    write_lines(seq / "nlp.txt", ["white airplane"])
    [s] = read_lasot(tmp_path)
    assert s.x_frames is None and s.modality is None
    assert s.present.tolist() == [True, False, False, True]
    write_lines(seq / "out_of_view.txt", ["0,0,1"])
    with pytest.raises(ValueError, match="4 frames but 3 out_of_view flags"):
        read_lasot(tmp_path)


def test_got10k_labels_and_test_split_with_one_box(tmp_path):
    seq = tmp_path / "GOT-10k_Train_000001"
    write_frames(seq, [f"{i:08d}.jpg" for i in range(1, 5)])
    write_lines(seq / "groundtruth.txt", ["1,1,5,5"] * 4)
    write_lines(seq / "absence.label", ["0", "1", "0", "0"])
    write_lines(seq / "cover.label", ["8", "0", "0", "3"])
    write_lines(tmp_path / "list.txt", ["GOT-10k_Train_000001"])
    [s] = read_got10k(tmp_path)
    assert s.present.tolist() == [True, False, False, True] and s.annotated == 4
    test_root = tmp_path / "test"
    tseq = test_root / "GOT-10k_Test_000001"
    write_frames(tseq, [f"{i:08d}.jpg" for i in range(1, 4)])
    write_lines(tseq / "groundtruth.txt", ["3,3,6,6"])
    write_lines(test_root / "list.txt", ["GOT-10k_Test_000001"])
    [t] = read_got10k(test_root)
    assert t.annotated == 1 and len(t.frames) == 3
    assert np.isnan(t.boxes[1:]).all() and t.present.tolist() == [True, False, False]


@pytest.mark.parametrize("reader", [read_lasher, read_depthtrack, read_lasot])
def test_missing_or_empty_root(tmp_path, reader):
    with pytest.raises(ValueError, match="root"):
        reader(tmp_path / "missing")
    with pytest.raises(ValueError, match="root"):
        reader(tmp_path)
