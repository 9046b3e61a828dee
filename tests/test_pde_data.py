"""PDE data: solvers against independent references, the generation cache, PDEBench readers."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import mmoe.datamodules.pde.datamodule as pde
from mmoe.datamodules.pde import solvers as S
from mmoe.datamodules.pde.datamodule import PDEDataModule


# ------------------------------------------------------------------------------- solvers
def test_darcy_converges_to_manufactured_solution() -> None:
    # u = sin(pi x) sin(pi y), a = 1 + x y  =>  f = -div(a grad u), derived by hand.
    errors = []
    for n in (16, 32, 64):
        x, y = np.meshgrid(S.cell_centres(n), S.cell_centres(n), indexing="ij")
        u = np.sin(np.pi * x) * np.sin(np.pi * y)
        ux, uy = np.pi * np.cos(np.pi * x) * np.sin(np.pi * y), np.pi * np.sin(np.pi * x) * np.cos(np.pi * y)
        a = 1 + x * y
        f = -(y * ux + x * uy) + a * 2 * np.pi**2 * u
        errors.append(np.abs(S.solve_darcy(a, f) - u).max())
    assert errors[-1] < 5e-4
    assert all(3.5 < e0 / e1 < 4.5 for e0, e1 in zip(errors, errors[1:]))  # second order


def test_darcy_satisfies_discrete_equation() -> None:
    # Residual of the batched sparse solve, evaluated with a plain loop over cells.
    rng = np.random.default_rng(1)
    n, h = 10, 1 / 10
    a = np.where(rng.standard_normal((2, n, n)) > 0, 12.0, 3.0)
    u = S.solve_darcy(a, 1.0)
    for ab, ub in zip(a, u):
        for i in range(n):
            for j in range(n):
                flux = 0.0
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    p, q = i + di, j + dj
                    if 0 <= p < n and 0 <= q < n:
                        flux += 2 * ab[i, j] * ab[p, q] / (ab[i, j] + ab[p, q]) * (ub[i, j] - ub[p, q]) / h**2
                    else:  # wall half a cell away, u = 0 there
                        flux += ab[i, j] * ub[i, j] / (h * h / 2)
                assert flux == pytest.approx(1.0, abs=1e-8)
    assert (u > 0).all()  # maximum principle for f > 0


def test_heat_decays_single_mode_exactly() -> None:
    x, y = np.meshgrid(S.cell_centres(16), S.cell_centres(16), indexing="ij")
    mode = np.cos(2 * np.pi * (2 * x + 3 * y))
    nu = np.array([1e-3, 2e-2])
    out = S.heat_periodic(np.stack([mode, mode]), nu, 0.7)
    for o, v in zip(out, nu):
        np.testing.assert_allclose(o, np.exp(-v * 4 * np.pi**2 * 13 * 0.7) * mode, atol=1e-12)


def test_advection_shifts_field() -> None:
    rng = np.random.default_rng(2)
    u0 = rng.standard_normal((1, 16, 16))
    out = S.advect_periodic(u0, np.array([3 / 16, -5 / 16]) / 0.5, 0.5)  # whole-cell shift
    np.testing.assert_allclose(out[0], np.roll(u0[0], (3, -5), axis=(0, 1)), atol=1e-12)
    # Sub-cell shift of a band-limited field: compare with the function at shifted points.
    x, y = np.meshgrid(S.cell_centres(16), S.cell_centres(16), indexing="ij")
    g = lambda x, y: np.sin(2 * np.pi * (x + 2 * y)) + np.cos(2 * np.pi * 3 * x)  # noqa: E731
    c = np.array([0.37, -0.81])
    np.testing.assert_allclose(S.advect_periodic(g(x, y)[None], c, 0.3)[0], g(x - 0.3 * c[0], y - 0.3 * c[1]),
                               atol=1e-12)


def _cole_hopf(x: np.ndarray, t: float, nu: float, b: float = 0.95) -> np.ndarray:
    # u = -2 nu phi_x / phi with phi = 1 + b cos(2 pi x) exp(-4 pi^2 nu t) solving phi_t = nu phi_xx.
    e = b * np.exp(-4 * np.pi**2 * nu * t)
    return 4 * np.pi * nu * e * np.sin(2 * np.pi * x) / (1 + e * np.cos(2 * np.pi * x))


def test_burgers_matches_cole_hopf_with_fourth_order_time_convergence() -> None:
    nu, x = 0.01, S.cell_centres(256)
    u0, exact = _cole_hopf(x, 0.0, nu)[None], _cole_hopf(x, 0.5, nu)
    errors = [np.abs(S.burgers_periodic(u0, nu, 0.5, dt=dt)[0] - exact).max() for dt in (0.02, 0.01)]
    assert errors[1] < 1e-8
    assert 10 < errors[0] / errors[1] < 20  # ETDRK4: ~16
    assert np.abs(S.burgers_periodic(u0, nu, 0.5)[0] - exact).max() < 1e-8  # default CFL step


def test_burgers_conserves_mean_and_linearizes_to_heat() -> None:
    rng = np.random.default_rng(3)
    c = S.grf_coefficients(rng, 3, 1, 8, 2.0, 6.0)
    u0 = 0.3 + S.eval_fourier(c, [np.arange(-8, 9)], [S.cell_centres(128)])
    nu = np.array([0.005, 0.02, 0.05])
    u = S.burgers_periodic(u0, nu, 0.4)
    np.testing.assert_allclose(u.mean(-1), u0.mean(-1), atol=1e-12)
    assert np.abs(np.fft.rfft(u, axis=-1)[:, 128 // 3 + 1:]).max() < 1e-9  # 2/3-rule dealiasing
    assert not np.allclose(u, S.heat_periodic(u0, nu, 0.4), atol=1e-3)  # nonlinearity matters here
    eps = 1e-6  # tiny amplitude: u u_x is O(eps^2), so Burgers is heat to relative O(eps)
    lin = S.burgers_periodic(eps * (u0 - 0.3), nu, 0.4)
    np.testing.assert_allclose(lin, S.heat_periodic(eps * (u0 - 0.3), nu, 0.4), atol=1e-5 * eps)


def test_allen_cahn_uniform_state_follows_ode_and_converges_in_time() -> None:
    u0 = np.stack([np.full((16, 16), 0.3), np.full((16, 16), -0.7)])
    out = S.allen_cahn_periodic(u0, 2e-3, 2.0)
    for o, v in zip(out, (0.3, -0.7)):  # u' = u - u^3 has u(t) = v e^t / sqrt(1 + v^2 (e^{2t} - 1))
        np.testing.assert_allclose(o, v * np.exp(2) / np.sqrt(1 + v * v * (np.exp(4) - 1)), atol=1e-7)
    c = S.grf_coefficients(np.random.default_rng(4), 2, 2, 5, 1.5, 3.0)
    # Amplitude 0.5 keeps the reaction mild enough for the asymptotic fourth-order regime.
    field = 0.5 * S.eval_fourier(c, [np.arange(-5, 6)] * 2, [S.cell_centres(32)] * 2)
    ref = S.allen_cahn_periodic(field, 2e-3, 1.0, dt=0.005)
    e1, e2 = (np.abs(S.allen_cahn_periodic(field, 2e-3, 1.0, dt=dt) - ref).max() for dt in (0.1, 0.05))
    assert 12 < e1 / e2 < 22 and e2 < 1e-5


def test_random_fields_are_resolution_independent() -> None:
    c = S.grf_coefficients(np.random.default_rng(5), 2, 2, 7, 2.0, 3.0)
    modes = [np.arange(-7, 8)] * 2
    coarse = S.eval_fourier(c, modes, [S.cell_centres(16)] * 2)
    fine = S.eval_fourier(c, modes, [S.cell_centres(48)] * 2)
    np.testing.assert_allclose(S.periodic_interpolate(fine, [S.cell_centres(16)] * 2), coarse, atol=1e-12)
    many = S.grf_coefficients(np.random.default_rng(6), 64, 2, 7, 2.0, 3.0)
    big = S.eval_fourier(many, modes, [S.cell_centres(8)] * 2)
    assert 0.8 < big.std() < 1.2  # unit pointwise variance


# ------------------------------------------------------------------------ embedded data
def _dm(tmp_path: Path, **kw: object) -> PDEDataModule:
    kw = {"num_samples_per_family": 10, "resolution": 16, "batch_size": 64, "cache_dir": str(tmp_path)} | kw
    dm = PDEDataModule(**kw)  # type: ignore[arg-type]
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_embedded_2d_batches_channels_and_splits(tmp_path: Path) -> None:
    dm = _dm(tmp_path)
    assert dm.family_names == ["darcy", "heat", "advection", "allen_cahn"] and dm.in_channels == 5
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (28, 4, 8)  # 7/1/2 per family
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == (28, 5, 16, 16) and batch["target"].shape == (28, 1, 16, 16)
    assert batch["input"].dtype == batch["target"].dtype == torch.float32 and batch["family"].dtype == torch.long
    assert torch.bincount(batch["family"], minlength=4).tolist() == [7, 7, 7, 7]
    inp, fam = batch["input"], batch["family"]
    darcy, heat, adv, ac = (inp[fam == i] for i in range(4))
    assert set(darcy[:, 0].unique().tolist()) <= {0.25, 1.0} and (darcy[:, 1:] == 0).all()
    # every parameter has its own channel: heat nu (1), allen_cahn eps2 (2), velocity (3, 4)
    assert (heat[:, 2:] == 0).all() and (heat[:, 1] >= 1).all() and (heat[:, 1] <= 2).all()
    assert (adv[:, 1:3] == 0).all() and (adv[:, 3:].abs() <= 1).all() and adv[:, 3:].std() > 0
    assert (ac[:, 1] == 0).all() and (ac[:, 3:] == 0).all() and (ac[:, 2] >= 1).all() and (ac[:, 2] <= 2).all()
    assert (inp[:, 1:].amax(dim=(2, 3)) == inp[:, 1:].amin(dim=(2, 3))).all()  # constant maps
    # Darcy targets are normalized; to_physical maps them back to the O(1e-2) pressure.
    t = batch["target"][fam == 0]
    assert 0.3 < t.pow(2).mean().sqrt() < 3
    phys = dm.to_physical(batch["target"], fam)
    assert phys[fam == 0].abs().max() < 0.1 and torch.equal(phys[fam == 1], batch["target"][fam == 1])
    # Deterministic: same seed -> same data and split; another seed -> other data.
    again = _dm(tmp_path)
    assert torch.equal(next(iter(again.val_dataloader()))["target"], next(iter(dm.val_dataloader()))["target"])
    other = _dm(tmp_path, seed=1, families=["heat"])
    assert other.family_names == dm.family_names and len(other.train_dataset) == 7
    assert set(next(iter(other.train_dataloader()))["family"].tolist()) == {1}
    assert not torch.equal(other.train_dataset[0]["target"], again.train_dataset[7]["target"])


def test_generation_cache_reused_and_keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dm(tmp_path, families=["heat", "darcy"])
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert len(files) == 2 and all(n.endswith(".npz") and not n.startswith(".") for n in files)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated although cached")

    with monkeypatch.context() as m:
        m.setattr(pde, "generate_family", fail)
        dm = _dm(tmp_path, families=["darcy", "heat"])
    assert len(dm.train_dataset) == 14
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files
    _dm(tmp_path, families=["heat"], num_samples_per_family=11)  # a changed parameter: new file
    params = {**pde.FAMILY_PARAMS["heat"], "t_final": 0.5}
    monkeypatch.setitem(pde.FAMILY_PARAMS, "heat", params)  # a changed physics parameter: new file
    _dm(tmp_path, families=["heat"])
    assert len(list(tmp_path.glob("heat_*.npz"))) == 3 and len(list(tmp_path.iterdir())) == 4


def test_mmoe_home_and_other_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))
    dm = PDEDataModule(families=["advection", "darcy"], num_samples_per_family=5, resolution=32, test_fraction=0.2,
                       val_fraction=0.0)
    dm.setup()
    assert len(list((tmp_path / "home" / "data" / "pde").glob("*.npz"))) == 2
    coarse = _dm(tmp_path, families=["advection", "darcy"], num_samples_per_family=5, val_fraction=0.0)
    assert dm.normalization == coarse.normalization  # constants, so a model can change resolution
    fine, small = dm.test_dataset[0], coarse.test_dataset[0]  # same advection sample at 32^2 and 16^2
    assert fine["input"].shape == (5, 32, 32) and small["input"].shape == (5, 16, 16)
    for key in ("input", "target"):
        resampled = S.periodic_interpolate(fine[key][:1].double().numpy(), [S.cell_centres(16)] * 2)
        np.testing.assert_allclose(resampled, small[key][:1].numpy(), atol=1e-5)


def test_embedded_1d_burgers(tmp_path: Path) -> None:
    dm = _dm(tmp_path, spatial_dims=1, num_samples_per_family=6, resolution=32, test_fraction=0.34, val_fraction=0.0)
    assert dm.family_names == ["burgers"] and dm.in_channels == 2
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (4, 0, 2)
    batch = next(iter(dm.test_dataloader()))
    assert batch["input"].shape == (2, 2, 32) and batch["target"].shape == (2, 1, 32)
    assert (batch["family"] == 0).all() and 1 <= batch["input"][:, 1].min() <= batch["input"][:, 1].max() <= 2
    # Mean is conserved (sampled at 32 points of a smooth field, so up to sampling error).
    np.testing.assert_allclose(batch["target"].mean(-1), batch["input"][:, :1].mean(-1), atol=1e-4)


# ------------------------------------------------------------------------------ PDEBench
def _write_1d(path: Path, n: int = 10, t: int = 5, x: int = 16) -> np.ndarray:
    data = np.random.default_rng(7).standard_normal((n, t, x)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["tensor"] = data
        f["x-coordinate"] = (np.arange(x) + 0.5) / x
        f["t-coordinate"] = np.linspace(0, 2, t + 1)
    return data


def _write_darcy(path: Path, n: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    nu, out = rng.uniform(0.1, 1, (n, h, h)).astype(np.float32), rng.standard_normal((n, 1, h, h)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["nu"], f["tensor"] = nu, out
        f["x-coordinate"] = f["y-coordinate"] = (np.arange(h) + 0.5) / h
    return nu, out


@pytest.mark.parametrize("lazy", [False, True])
def test_pdebench_1d_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lazy: bool) -> None:
    if lazy:
        monkeypatch.setattr(pde, "IN_MEMORY_BYTES", 0)
    path = tmp_path / "1D_Burgers_Sols_Nu0.01.hdf5"
    data = _write_1d(path)
    dm = PDEDataModule(path=str(path), spatial_dims=1, batch_size=4, target_time_index=2, num_workers=1 if lazy else 0)
    dm.setup()
    assert dm.family_names == [] and dm.in_channels == 1
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (7, 1, 2)
    assert (dm.train_dataset._arrays is None) == lazy
    test = next(iter(dm.test_dataloader()))  # the last 20% of the file
    np.testing.assert_array_equal(test["input"][:, 0].numpy(), data[8:, 0])
    np.testing.assert_array_equal(test["target"][:, 0].numpy(), data[8:, 2])
    assert test["input"].shape == (2, 1, 16) and (test["family"] == -1).all()
    seen = sorted(int(np.flatnonzero((data[:, 0] == b["input"][0].numpy()).all(-1))[0])
                  for b in (*dm.train_dataset, *dm.val_dataset))
    assert seen == list(range(8))  # train + val cover the rest exactly once


def test_pdebench_darcy_with_test_file(tmp_path: Path) -> None:
    nu, out = _write_darcy(tmp_path / "train.h5", 8, 12)
    nu_t, out_t = _write_darcy(tmp_path / "test.h5", 3, 20)
    dm = PDEDataModule(path=str(tmp_path / "train.h5"), test_path=str(tmp_path / "test.h5"), val_fraction=0.25,
                       batch_size=8, seed=3)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (6, 2, 3)
    test = next(iter(dm.test_dataloader()))
    np.testing.assert_array_equal(test["input"].numpy(), nu_t[:, None])
    np.testing.assert_array_equal(test["target"].numpy(), out_t)
    train = next(iter(dm.train_dataloader()))
    assert train["input"].shape == (6, 1, 12, 12) and train["target"].shape == (6, 1, 12, 12)
    idx = [int(np.flatnonzero((nu == x[0].numpy()).all((1, 2)))[0]) for x in train["input"]]
    np.testing.assert_array_equal(train["target"].numpy(), out[idx])


# --------------------------------------------------------------------------- bad inputs
def test_bad_arguments_raise_value_error_naming_them(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["u"] = np.zeros((4, 8))
    with h5py.File(tmp_path / "rank.h5", "w") as f:
        f["tensor"] = np.zeros((4, 8))
    _write_1d(tmp_path / "ok1d.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    cases = [
        ({"path": str(tmp_path / "missing.h5")}, r"path: file not found"),
        ({"path": str(tmp_path / "junk.h5")}, r"path: cannot read"),
        ({"path": str(tmp_path / "other.h5")}, r"path: .*lacks dataset\(s\) \['nu', 'tensor'\].*found \['u'\]"),
        ({"path": str(tmp_path / "rank.h5"), "spatial_dims": 1}, r"path: dataset 'tensor' .*\[N, T, X\].*\(4, 8\)"),
        ({"path": str(tmp_path / "ok1d.h5"), "spatial_dims": 2}, r"path: .*lacks dataset\(s\) \['nu'\]"),
        ({"path": str(tmp_path / "ok1d.h5"), "spatial_dims": 1, "test_path": str(tmp_path / "x.h5")}, r"test_path: file not"),
        ({"path": str(tmp_path / "ok1d.h5"), "spatial_dims": 1, "target_time_index": 5}, r"target_time_index"),
        ({"test_path": str(tmp_path / "ok1d.h5")}, r"test_path: given without path"),
        ({"spatial_dims": 3}, r"spatial_dims: expected 1 or 2"),
        ({"families": ["darcy", "burgers"]}, r"families: .*'burgers'"),
        ({"families": []}, r"families"),
        ({"resolution": 8}, r"resolution: expected an integer >= 16"),
        ({"test_fraction": 1.0}, r"test_fraction"),
        ({"val_fraction": -0.1}, r"val_fraction"),
        ({"batch_size": 0}, r"batch_size"),
        ({"num_samples_per_family": 2}, r"num_samples_per_family: 2 samples"),
        ({"seed": -1}, r"seed"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            PDEDataModule(cache_dir=str(tmp_path), **kwargs)  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*.npz"))  # nothing generated by failed constructions
    assert os.path.isfile(tmp_path / "ok1d.h5")


def test_shipped_config_trains_on_a_one_channel_pdebench_file(tmp_path: Path) -> None:
    """The data decides the model's channels, families and grid: the shipped 2D recipe (5 embedded
    channels) trains on a 1-channel PDEBench Darcy file with no model edits."""
    from mmoe.cli import cli_main

    _write_darcy(tmp_path / "darcy.hdf5", 12, 24)
    cli = cli_main(["fit", "--config", "pde/nested_moe_2d", "--data.init_args.path", str(tmp_path / "darcy.hdf5"),
                    "--data.init_args.batch_size", "4", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
                    "--trainer.check_val_every_n_epoch", "1", "--trainer.accelerator", "cpu",
                    "--run_dir", str(tmp_path / "runs")])
    pre = cli.model.pre
    assert (pre.in_channels, pre.family_names, pre.resolution) == (1, [], 24)
    # the file's one channel plus the recipe's parameter-conditioned Fourier copies of the field
    conditioned = cli.model.hparams.conditioned_channels
    assert conditioned == 4 and cli.model.model.embed.in_channels == 1 + conditioned
    assert cli.trainer.global_step == 2
