"""The FNO peer of benchmarks/pde.py: trains on the PDE datamodule and reports finite per-family numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("neuralop", reason="the FNO peer needs the benchmark-only dependency neuraloperator")
from benchmarks import pde_fno  # noqa: E402  after the skip: it imports neuralop
from mmoe.datamodules import PDEDataModule  # noqa: E402

TINY = dict(width=8, modes=4, layers=2)


def _datamodule(tmp_path: Path, resolution: int) -> PDEDataModule:
    return PDEDataModule(spatial_dims=2, resolution=resolution, num_samples_per_family=10, batch_size=8,
                         cache_dir=str(tmp_path))


def test_fno_peer_trains_and_reports_every_family(tmp_path: Path) -> None:
    dm = _datamodule(tmp_path, 16)
    model, info = pde_fno.train_fno(dm, budget_seconds=60.0, max_steps=4, seed=0, **TINY)
    assert info["steps"] == 4 and info["parameters"] == pde_fno.real_parameter_count(model) > 0
    names = dm.family_names
    test = pde_fno.evaluate(model, dm.test_dataloader(), names)
    assert set(test) == {"test/rel_l2"} | {f"test/rel_l2_{n}" for n in names}
    assert all(math.isfinite(v) and v > 0 for v in test.values())
    # the returned weights are the best-validation ones: re-measuring gives the recorded number
    val = pde_fno.evaluate(model, dm.val_dataloader(), names, "val")["val/rel_l2"]
    assert val == pytest.approx(info["best_val_rel_l2"], abs=1e-5)
    # the per-family numbers are the mean per-sample relative L2, computed here independently
    with torch.no_grad():
        batches = list(dm.test_dataloader())
        pred = torch.cat([model(b["input"]) for b in batches]).double().numpy()
    true = torch.cat([b["target"] for b in batches]).double().numpy()
    fam = torch.cat([b["family"] for b in batches]).numpy()
    rel = np.linalg.norm((pred - true).reshape(len(pred), -1), axis=1) / np.linalg.norm(true.reshape(len(true), -1), axis=1)
    for i, n in enumerate(names):
        assert test[f"test/rel_l2_{n}"] == pytest.approx(rel[fam == i].mean(), rel=1e-5)
    # resolution-independent: the 16x16 model takes 24x24 fields as they are
    dm24 = _datamodule(tmp_path, 24)
    dm24.setup("test")
    out24 = pde_fno.evaluate(model, dm24.test_dataloader(), names)
    assert all(math.isfinite(v) for v in out24.values())


def test_fno_peer_refuses_bad_settings(tmp_path: Path) -> None:
    dm = _datamodule(tmp_path, 16)
    with pytest.raises(ValueError, match="budget_seconds"):
        pde_fno.train_fno(dm, budget_seconds=None, max_steps=None)
    with pytest.raises(ValueError, match="max_steps"):
        pde_fno.train_fno(dm, budget_seconds=None, max_steps=0)
    with pytest.raises(ValueError, match="width"):
        pde_fno.build_fno(5, 1, 2, width=0)


def test_fno_with_conditioned_channels_trains_its_drift(tmp_path: Path) -> None:
    """The ablation peer: the MoE recipe's conditioned Fourier channels in front of the FNO; the
    drift and diffusion heads get gradients, and the model keeps its resolution independence."""
    dm = _datamodule(tmp_path, 16)
    plain = pde_fno.build_fno(dm.in_channels, dm.out_channels, 2, **TINY)
    model = pde_fno.build_fno(dm.in_channels, dm.out_channels, 2, conditioned_channels=3, **TINY)
    assert isinstance(model, pde_fno.ConditionedFNO) and model.condition.channels == 3
    assert pde_fno.real_parameter_count(model) > pde_fno.real_parameter_count(plain)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    pde_fno.relative_l2_loss(model(batch["input"]), batch["target"]).backward()
    grads = [p.grad for p in model.condition.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert model(torch.randn(2, dm.in_channels, 24, 20)).shape == (2, 1, 24, 20)
    trained, info = pde_fno.train_fno(dm, budget_seconds=60.0, max_steps=2, conditioned_channels=3, **TINY)
    assert info["conditioned_channels"] == 3 and isinstance(trained, pde_fno.ConditionedFNO)
    with pytest.raises(ValueError, match="conditioned_channels"):
        pde_fno.build_fno(5, 1, 2, conditioned_channels=-1)
