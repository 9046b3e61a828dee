"""Per task: write ``mmoe predict`` input files in the formats a user has, and check what the
task's prediction writer wrote against the Python ``predict`` on the same files (used by the task
harness and by tests/test_prediction_writers.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from PIL import Image


def make_inputs(task: str, folder: Path, rng: np.random.Generator) -> list[str]:
    """Write two inputs of ``task`` into ``folder``; returns their names (what the writer names outputs by)."""
    folder.mkdir(parents=True, exist_ok=True)
    if task in ("restoration", "anomaly"):
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(folder / "photo.png")
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / "scan.jpg", quality=95)
        return ["photo", "scan"]
    if task == "separation":
        soundfile.write(folder / "a.wav", (0.1 * rng.standard_normal(6000)).astype(np.float32), 8000, subtype="PCM_16")
        soundfile.write(folder / "b.flac", (0.1 * rng.standard_normal(9000)).astype(np.float32), 16000)
        return ["a", "b"]
    if task == "emotion":
        (folder / "chat.txt").write_text("I am so happy today\n\nthis is terrible news\n", encoding="utf-8")
        (folder / "one.json").write_text(json.dumps(["what a lovely surprise"]), encoding="utf-8")
        return ["chat", "one"]
    if task == "pde":
        np.savez(folder / "heat.npz", field=rng.random((32, 32)).astype(np.float32), family=np.array("heat"),
                 nu=np.float64(0.01))
        np.savez(folder / "flow.npz", field=rng.random((2, 32, 32)).astype(np.float32), family=np.array("advection"),
                 velocity=np.array([0.5, -0.25]))
        return ["flow", "heat"]
    if task == "tracking":
        names = []
        for name in ("seq1", "seq2"):
            seq = folder / name
            seq.mkdir()
            for k in range(4):
                frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                Image.fromarray(frame).save(seq / f"{k + 1:04d}.png")
            (seq / "init_box.txt").write_text("20,22,16,14\n")
            names.append(name)
        return names
    raise ValueError(f"no predict inputs for task {task!r}")


def check_written(task: str, written: Path, folder: Path, names: list[str], model: Any) -> None:
    """``written`` holds, for every input of ``folder``, what ``model.predict`` gives on it."""
    files = {p.name for p in written.iterdir()}
    assert not any(f.startswith(".partial-") for f in files), files  # nothing half-written
    inputs = {p.name.split(".")[0]: p for p in folder.iterdir() if not p.name.endswith(".txt") or task == "emotion"}
    if task == "restoration":
        rows = list(csv.DictReader((written / "degradations.csv").read_text().splitlines()))
        assert [r["name"] for r in rows] == sorted(names)
        for name in names:
            out = model.predict(str(inputs[name]))
            png = np.asarray(Image.open(written / f"{name}.png"))
            assert png.shape == out["image"].shape[:2] + ((3,) if out["image"].ndim == 3 else ())
            np.testing.assert_allclose(png.astype(float), np.asarray(out["image"], dtype=float), atol=1)
            row = next(r for r in rows if r["name"] == name)
            assert row["degradation"] == (out["degradation"] or "")
    elif task == "anomaly":
        rows = list(csv.DictReader((written / "scores.csv").read_text().splitlines()))
        assert sorted(r["name"] for r in rows) == sorted(names)
        for name in names:
            out = model.predict(str(inputs[name]))
            row = next(r for r in rows if r["name"] == name)
            np.testing.assert_allclose(float(row["score"]), out["score"], rtol=1e-4)
            png = np.asarray(Image.open(written / row["map"]))
            assert png.shape == out["map"].shape
            expected = np.clip(out["map"] / float(row["map_max"]), 0, 1) * 255
            np.testing.assert_allclose(png.astype(float), expected, atol=1.01)
            if out["mask"] is not None:
                assert (np.asarray(Image.open(written / row["mask"])) > 0).tolist() == out["mask"].tolist()
                assert row["is_anomalous"] == str(out["is_anomalous"]).lower()
    elif task == "separation":
        for name in names:
            out = model.predict(str(inputs[name]))
            info = soundfile.info(str(inputs[name]))
            for k in range(out.shape[0]):
                data, rate = soundfile.read(written / f"{name}_s{k + 1}.wav", dtype="float32")
                assert rate == info.samplerate
                np.testing.assert_allclose(data, out[k], atol=1e-6)
            assert f"{name}_s{out.shape[0] + 1}.wav" not in files
    elif task == "emotion":
        records = [json.loads(line) for line in (written / "predictions.jsonl").read_text().splitlines()]
        for name in names:
            from mmoe.datamodules.emotion.predict_files import read_conversation

            out = model.predict(**read_conversation(inputs[name]))
            mine = [r for r in records if r["name"] == name]
            assert [r["turn"] for r in mine] == list(range(len(out)))
            for r, o in zip(mine, out):
                assert r["label"] == o["label"]
                np.testing.assert_allclose(list(r["probabilities"].values()), list(o["probabilities"].values()),
                                           rtol=1e-5)
    elif task == "pde":
        from mmoe.datamodules.pde.predict_files import read_field_file

        for name in names:
            kwargs = read_field_file(inputs[name])
            out = model.predict(**kwargs)
            with np.load(written / f"{name}.npz") as data:
                np.testing.assert_allclose(data["solution"], out, rtol=1e-5, atol=1e-6)
                assert str(data["family"]) == kwargs["family"]
    elif task == "tracking":
        for name in names:
            out = model.predict(str(folder / name), [20, 22, 16, 14])
            rows = list(csv.DictReader((written / f"{name}.csv").read_text().splitlines()))
            assert [int(r["frame"]) for r in rows] == list(range(len(out["boxes"])))
            got = np.array([[float(r[k]) for k in "xywh"] for r in rows])
            np.testing.assert_allclose(got, out["boxes"], atol=0.006)
    else:
        raise ValueError(f"no check for task {task!r}")
