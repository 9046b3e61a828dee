"""One lifecycle for every task: fit -> test -> predict -> export to a zoo entry -> mmoe.load ->
predict, driven by ``tests/conf/<task>.yaml``. A new task joins by adding its config (with a
``harness:`` section: the recipe it stands for, its test metric and a sample predict input)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import mmoe
from mmoe.cli import cli_main
from mmoe.tasks import TASKS
from mmoe.zoo_cli import export_checkpoint
from predict_files import check_written, make_inputs

CONF = Path(__file__).parent / "conf"
CONFIGS = sorted(CONF.glob("*.yaml"))


def materialise(spec: Any, rng: np.random.Generator) -> Any:
    """``{"random": shape}`` -> float32 noise (std 0.1), ``{"uniform": shape}`` -> float32 in [0, 1);
    lists and dicts recursively."""
    if isinstance(spec, dict):
        if set(spec) == {"random"}:
            return (0.1 * rng.standard_normal(spec["random"])).astype(np.float32)
        if set(spec) == {"uniform"}:
            return rng.random(spec["uniform"]).astype(np.float32)
        return {k: materialise(v, rng) for k, v in spec.items()}
    if isinstance(spec, list):
        return [materialise(v, rng) for v in spec]
    return spec


def assert_same(a: Any, b: Any, path: str = "output") -> None:
    """Equal structure, equal strings, numbers within float32 round-off."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, (np.ndarray, torch.Tensor, float)):
        assert np.all(np.isfinite(np.asarray(a))), f"{path}: not finite"
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=path)
    else:
        assert a == b, path


def test_every_task_has_a_harness_config() -> None:
    covered = {yaml.safe_load(p.read_text())["model"]["class_path"] for p in CONFIGS}
    assert covered == set(TASKS), f"tasks without tests/conf/<task>.yaml: {set(TASKS) - covered}"


@pytest.mark.parametrize("conf", CONFIGS, ids=lambda p: p.stem)
def test_task_lifecycle(conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load(conf.read_text())
    harness = raw.pop("harness")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))  # data caches and zoo cache

    cli = cli_main(["fit", "--config", str(config), "--run_dir", str(tmp_path / "runs"), "--test_after_fit", "true"])
    task = cli.model
    assert harness["test_metric"] in cli.trainer.callback_metrics
    # the checkpoint follows the task's own metric, which the run logs
    checkpoint = cli.trainer.checkpoint_callback
    assert (checkpoint.monitor, checkpoint.mode) == (type(task).monitor, type(task).mode)
    run = Path(cli.trainer.log_dir)
    assert task.monitor in (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert not (run / "INCOMPLETE.json").exists()  # the planned steps all ran
    best = Path(checkpoint.best_model_path)
    assert best.is_file()
    # the data decided the preprocess config, and the model was built from it
    assert task.pre == cli.datamodule.preprocess
    # the CLI's own test and predict read the checkpoint back
    tested = cli_main(["test", "--config", str(config), "--run_dir", str(tmp_path / "runs"), "--ckpt_path", str(best)])
    assert harness["test_metric"] in tested.trainer.callback_metrics
    # mmoe predict writes what a user opens: on two test-split items, then on the user's own files
    predicted = cli_main(["predict", "--config", str(config), "--run_dir", str(tmp_path / "runs"),
                          "--ckpt_path", "best", "--trainer.limit_predict_batches", "2"])
    written = Path(predicted.trainer.log_dir) / "predictions"
    assert written.is_dir() and any(written.iterdir()), "predict on the test split wrote nothing"
    inputs = tmp_path / "inputs"
    names = make_inputs(conf.stem, inputs, np.random.default_rng(1))
    predicted = cli_main(["predict", "--config", str(config), "--run_dir", str(tmp_path / "runs"),
                          "--ckpt_path", str(best), "--data.init_args.predict_path", str(inputs)])
    from_ckpt = mmoe.load(str(best))
    check_written(conf.stem, Path(predicted.trainer.log_dir) / "predictions", inputs, names, from_ckpt)

    args = materialise(harness["predict"], np.random.default_rng(0))
    expected = from_ckpt.predict(**args)

    zoo_dir = tmp_path / "zoo"
    name = f"harness-{conf.stem}"
    row = export_checkpoint(best, name=name, config=harness["config"], task=conf.stem, training_data="harness run",
                            metrics={"score": 1.0}, out_dir=zoo_dir, dtype="float32")
    assert row["preprocess"] == dataclasses.asdict(task.pre)  # the zoo entry says how inputs are treated
    monkeypatch.setenv("MMOE_ZOO_MANIFEST", str(zoo_dir / "manifest.json"))
    monkeypatch.setenv("MMOE_ZOO_URL", str(zoo_dir))
    loaded = mmoe.load(name)
    assert not loaded.training
    assert loaded.pre == task.pre
    assert_same(loaded.predict(**args), expected)

    # predict restores the training mode it found, and runs without gradients
    loaded.train()
    out = loaded.predict(**args)
    assert loaded.training
    assert_same(out, expected)
