"""PDE task: metric against a numpy reference, resolution change, predict layouts, CLI run, load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mmoe
from mmoe.cli import cli_main
from mmoe.tasks import PDETask
from mmoe.tasks.metrics import RelativeL2

SMALL = dict(patch_size=4, dim=16, depth=2, num_heads=2, hidden_dim=16, num_groups=2, experts_per_group=3,
             top_k=1, modes=3)


def test_relative_l2_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    metric = RelativeL2(["a", "b"])
    preds, targets, classes = [], [], []
    for n in (5, 1, 7):  # several updates of odd sizes
        p, t = rng.normal(size=(n, 1, 6, 5)), rng.normal(size=(n, 1, 6, 5))
        c = rng.integers(-1, 2, size=n)
        metric.update(torch.tensor(p), torch.tensor(t), torch.tensor(c))
        preds.append(p), targets.append(t), classes.append(c)
    p, t, c = np.concatenate(preds), np.concatenate(targets), np.concatenate(classes)
    rel = np.array([np.linalg.norm(p[i] - t[i]) / np.linalg.norm(t[i]) for i in range(len(p))])
    out = metric.compute()
    assert out["rel_l2"].item() == pytest.approx(rel.mean(), rel=1e-10)  # mean, not sum
    for k, name in enumerate(["a", "b"]):
        if (c == k).any():
            assert out[f"rel_l2_{name}"].item() == pytest.approx(rel[c == k].mean(), rel=1e-10)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (3, 4, 32, 32)), (2, (2, 4, 64, 64)), (2, (1, 4, 30, 22)),
                                                (1, (3, 2, 128)), (1, (2, 2, 50))])
def test_operator_runs_at_any_resolution(spatial_dims: int, shape: tuple) -> None:
    torch.manual_seed(0)
    task = PDETask(in_channels=shape[1], spatial_dims=spatial_dims, **SMALL)
    y = task(dict(input=torch.randn(*shape)))
    assert y.shape == (shape[0], 1, *shape[2:])
    assert torch.isfinite(y).all()


def test_operator_trained_at_32_runs_its_32_grid_at_64() -> None:
    """At 64x64 the prediction is the 32x32 operator resampled (plus the pointwise skip path)."""
    torch.manual_seed(1)
    task = PDETask(in_channels=2, spatial_dims=2, train_resolution=32, **SMALL).eval()
    x32 = torch.randn(2, 2, 32, 32)
    x64 = x32.repeat_interleave(2, -1).repeat_interleave(2, -2)  # bilinear-downsamples back to x32 exactly
    y64 = task(dict(input=x64)) - task.model.skip(x64)
    expected = torch.nn.functional.interpolate(task.model._operator(x32), size=(64, 64), mode="bilinear")
    torch.testing.assert_close(y64, expected, rtol=1e-4, atol=1e-5)
    native = PDETask(in_channels=2, spatial_dims=2, **SMALL).eval()
    native.load_state_dict(task.state_dict())
    other = native(dict(input=x64)) - native.model.skip(x64)
    assert (other - expected).norm() / expected.norm() > 0.1  # without resampling the patches differ


def test_predict_layouts_and_bad_input() -> None:
    torch.manual_seed(2)
    task = PDETask(in_channels=4, spatial_dims=2, **SMALL)
    f = np.random.default_rng(0).normal(size=(20, 24)).astype(np.float32)
    y = task.predict(f)
    assert isinstance(y, np.ndarray) and y.shape == (20, 24)
    y3 = task.predict(np.stack([f, f]))
    assert y3.shape == (2, 20, 24)
    np.testing.assert_allclose(y3[0], y, rtol=1e-4, atol=1e-5)
    full = torch.zeros(2, 4, 20, 24)
    full[:, 0] = torch.from_numpy(f)
    y4 = task.predict(full)
    assert isinstance(y4, torch.Tensor) and y4.shape == (2, 1, 20, 24)
    np.testing.assert_allclose(y4[0, 0].numpy(), y, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"field: expected \[H, W\]"):
        task.predict(np.zeros(5))
    with pytest.raises(ValueError, match="field: expected 4 channels"):
        task.predict(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        task.predict(np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="non-empty"):
        task.predict(np.zeros((0, 8, 8)))
    with pytest.raises(TypeError, match="field"):
        task.predict([[1.0, 2.0]])


def tiny_config(tmp_path: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "run_name": "tiny",
        "run_dir": str(tmp_path / "runs"),
        "trainer": {"accelerator": "cpu", "max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 2,
                    "limit_test_batches": 2, "log_every_n_steps": 1, "enable_model_summary": False},
        "model": {"class_path": "PDETask", "init_args": {"in_channels": 5, "spatial_dims": 2,
                                                         "family_names": ["darcy", "heat", "advection", "allen_cahn"],
                                                         **SMALL, "num_groups": 4}},
        "data": {"class_path": "PDEDataModule", "init_args": {
            "spatial_dims": 2, "resolution": 16, "num_samples_per_family": 20, "batch_size": 8,
            "cache_dir": str(tmp_path / "cache")}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_fit_test_and_load_checkpoint(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    cli = cli_main(["fit", "--config", str(config), "--test_after_fit", "true"])
    assert "test/rel_l2" in cli.trainer.callback_metrics
    run = Path(cli.trainer.log_dir)
    assert run.is_relative_to(tmp_path / "runs" / "tiny")
    assert (run / "config.yaml").exists()
    assert (run / "metrics.csv").exists()
    assert list(run.glob("figures/routing_experts_x_layers_*.png"))
    assert list(run.glob("figures/routing_experts_x_class_*.png"))
    assert list(run.glob("figures/pde_samples_*.png"))
    ckpts = sorted(run.glob("checkpoints/*.ckpt"))
    assert ckpts
    header = (run / "metrics.csv").read_text().splitlines()[0]
    for column in ("val/rel_l2", "val/rel_l2_darcy", "val/family_routing_acc", "train/loss_step"):
        assert column in header
    assert "routing_val/model.backbone.blocks.0.ffn/dead_experts" in header

    test_cli = cli_main(["test", "--config", str(config), "--ckpt_path", str(ckpts[-1])])
    assert "test/rel_l2" in test_cli.trainer.callback_metrics

    pred_cli = cli_main(["predict", "--config", str(config), "--ckpt_path", str(ckpts[-1])])
    predictions = pred_cli.trainer.predict_loop.predictions
    assert predictions and predictions[0].shape[1:] == (1, 16, 16) and torch.isfinite(predictions[0]).all()

    model = mmoe.load(str(ckpts[-1]))
    state = torch.load(ckpts[-1], weights_only=True)["state_dict"]
    ref = PDETask(in_channels=5, spatial_dims=2, family_names=["darcy", "heat", "advection", "allen_cahn"],
                  **(SMALL | {"num_groups": 4}))
    ref.load_state_dict(state)
    field = torch.randn(2, 5, 16, 16)
    torch.testing.assert_close(model.predict(field), ref.eval().predict(field))


def test_print_config_resolves_short_names(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--model", "PDETask", "--data", "PDEDataModule", "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: mmoe.tasks.PDETask" in out
    assert "class_path: mmoe.datamodules.PDEDataModule" in out


def test_validation_figure_shows_every_family() -> None:
    torch.manual_seed(3)
    task = PDETask(in_channels=5, spatial_dims=2, family_names=["darcy", "heat", "advection", "allen_cahn"],
                   **(SMALL | {"num_groups": 4}))
    for fam in ([0, 0, 1], [1, 3, 3], [2]):  # families spread over several validation batches
        batch = {"input": torch.randn(len(fam), 5, 16, 16), "target": torch.randn(len(fam), 1, 16, 16),
                 "family": torch.tensor(fam)}
        task.update_metrics("val", task(batch), batch)
    fig = task.validation_figures()["pde_samples"]
    titles = [ax.get_title() for ax in fig.axes]
    for name in ("darcy", "heat", "advection", "allen_cahn"):
        assert f"{name}: prediction" in titles
    assert task.validation_figures() == {}  # collected samples are consumed
