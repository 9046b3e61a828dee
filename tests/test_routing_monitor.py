"""Routing statistics and figures as a Lightning callback (issue 25 item 6): one monitor per
trainer whichever way it was built (plain Trainer, the CLI, a user's own), switched off by
``--routing.enabled false`` or the task's ``log_routing=False``; its numbers are those of the
layers' stats (tests/test_base_task.py recomputes the loads from the batches)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from mmoe.cli import cli_main
from mmoe.datamodules import PDEDataModule
from mmoe.moe_layer import MoELayer
from mmoe.routing_monitor import RoutingMonitor
from mmoe.settings import MoESettings
from mmoe.tasks import PDETask
from mmoe.tasks.pde import PDEPreprocess

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(patch_size=4, dim=16, depth=2, num_heads=2, hidden_dim=16, mixer="spectral", modes=4,
             moe=MoESettings(router="nested", groups=2, num_experts=6, top_k=1))
FAMILIES = ["darcy", "heat", "advection", "allen_cahn"]


def _fit(tmp_path: Path, callbacks: list, log_routing: bool = True) -> tuple[Trainer, PDETask]:
    torch.manual_seed(0)
    task = PDETask(preprocess=PDEPreprocess(family_names=FAMILIES, resolution=16), log_routing=log_routing, **SMALL)
    dm = PDEDataModule(resolution=16, num_samples_per_family=12, batch_size=8, cache_dir=str(tmp_path / "data"))
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                      num_sanity_val_steps=1, logger=CSVLogger(tmp_path), enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(task, dm)
    return trainer, task


def _monitors(trainer: Trainer) -> list[RoutingMonitor]:
    return [c for c in trainer.callbacks if isinstance(c, RoutingMonitor)]


def test_a_plain_trainer_gets_one_monitor_with_logs_and_figures(tmp_path: Path) -> None:
    trainer, task = _fit(tmp_path, [])
    (monitor,) = _monitors(trainer)
    layers = [n for n, m in task.named_modules() if isinstance(m, MoELayer)]
    logged = trainer.logged_metrics
    for split in ("train", "val"):
        shares = torch.tensor([float(logged[f"routing_{split}/{layers[0]}/load_e{e}"]) for e in range(6)])
        assert shares.sum().item() == pytest.approx(1.0, abs=1e-5)
    # one point per training step (the sanity-check batch is not one); per-class maps for PDE families
    assert [p[0] for p in monitor.ecology_history[layers[0]]] == [0, 1]
    figures = {p.name for p in Path(trainer.log_dir).glob("figures/*.png")}
    assert any(f.startswith("routing_experts_x_layers_epoch000_step") for f in figures)
    assert any(f.startswith("routing_experts_x_class_") for f in figures)
    assert monitor.routing == {"train": {}, "val": {}, "test": {}}  # logged and cleared


def test_a_users_monitor_is_kept_and_obeyed(tmp_path: Path) -> None:
    mine = RoutingMonitor(figures=False, ecology_history_size=2)
    trainer, _ = _fit(tmp_path, [mine])
    assert _monitors(trainer) == [mine]  # the task's default did not replace it
    assert any(k.startswith("routing_val/") for k in trainer.logged_metrics)
    assert not list(Path(trainer.log_dir).glob("figures/routing_*.png"))
    assert all(len(h) <= 2 for h in mine.ecology_history.values())


def test_log_routing_false_adds_no_monitor(tmp_path: Path) -> None:
    trainer, _ = _fit(tmp_path, [], log_routing=False)
    assert not _monitors(trainer)
    assert not [k for k in trainer.logged_metrics if k.startswith("routing_")]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_cli_adds_the_monitor_and_its_switch_works(enabled: bool, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))
    raw = yaml.safe_load((ROOT / "tests" / "conf" / "pde.yaml").read_text())
    raw.pop("harness")
    raw["trainer"].update(fast_dev_run=1, enable_progress_bar=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cli = cli_main(["fit", "--config", str(config), "--run_dir", str(tmp_path / "runs"),
                    "--routing.enabled", str(enabled).lower()])
    (monitor,) = _monitors(cli.trainer)
    assert monitor.enabled is enabled
    assert bool([k for k in cli.trainer.logged_metrics if k.startswith("routing_train/")]) is enabled


def test_bad_history_size_is_refused_by_name() -> None:
    for bad in (1, 0, True, 2.5):
        with pytest.raises(ValueError, match="ecology_history_size"):
            RoutingMonitor(ecology_history_size=bad)


def test_routing_stays_out_of_the_printed_test_table(tmp_path: Path) -> None:
    trainer, task = _fit(tmp_path, [])
    dm = PDEDataModule(resolution=16, num_samples_per_family=12, batch_size=8, cache_dir=str(tmp_path / "data"))
    (results,) = trainer.test(task, dm, verbose=False)
    assert results and not [k for k in results if k.startswith("routing_")]  # what the table prints
    trainer.loggers[0].save()
    header = (Path(trainer.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert any(k.startswith("routing_test/") and k.endswith("/load_e0") for k in header)  # still logged
