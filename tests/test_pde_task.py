"""PDE task: metric against a numpy reference, resolution change, predict layouts and units, short names."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from mmoe.settings import MoESettings
from mmoe.cli import cli_main
from mmoe.tasks import PDETask
from mmoe.tasks.pde import PDEPreprocess
from mmoe.tasks.pde.metrics import RelativeL2

SMALL = dict(patch_size=4, dim=16, depth=2, num_heads=2, hidden_dim=16, moe=MoESettings(router="nested", groups=2, num_experts=6, top_k=1),
             modes=3)


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
    task = PDETask(preprocess=PDEPreprocess(spatial_dims, shape[1], family_names=[], resolution=None), **SMALL)
    y = task(dict(input=torch.randn(*shape)))
    assert y.shape == (shape[0], 1, *shape[2:])
    assert torch.isfinite(y).all()


def test_operator_trained_at_32_runs_its_32_grid_at_64() -> None:
    """At 64x64 the prediction is the 32x32 operator resampled (plus the pointwise skip path)."""
    torch.manual_seed(1)
    task = PDETask(preprocess=PDEPreprocess(2, 2, family_names=[], resolution=32), **SMALL).eval()
    x32 = torch.randn(2, 2, 32, 32)
    x64 = x32.repeat_interleave(2, -1).repeat_interleave(2, -2)  # bilinear-downsamples back to x32 exactly
    y64 = task(dict(input=x64)) - task.model.skip(x64)
    expected = torch.nn.functional.interpolate(task.model._operator(x32), size=(64, 64), mode="bilinear")
    torch.testing.assert_close(y64, expected, rtol=1e-4, atol=1e-5)
    native = PDETask(preprocess=PDEPreprocess(2, 2, family_names=[], resolution=None), **SMALL).eval()
    native.load_state_dict(task.state_dict())
    other = native(dict(input=x64)) - native.model.skip(x64)
    assert (other - expected).norm() / expected.norm() > 0.1  # without resampling the patches differ


def test_predict_layouts_and_bad_input() -> None:
    torch.manual_seed(2)
    task = PDETask(preprocess=PDEPreprocess(2, 4, family_names=[], resolution=None), **SMALL)
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


def test_predict_returns_physical_units() -> None:
    """With a family whose training units differ, predict scales the input down and the output up."""
    torch.manual_seed(4)
    pre = PDEPreprocess(input_scale={"darcy": 12.0}, target_scale={"darcy": 0.01})
    task = PDETask(preprocess=pre, **SMALL)
    a = np.where(np.random.default_rng(1).random((16, 16)) > 0.5, 12.0, 3.0).astype(np.float32)
    x = torch.zeros(1, 5, 16, 16)
    x[0, 0] = torch.from_numpy(a) / 12.0
    raw = task.eval()(dict(input=x))[0, 0].detach().numpy()
    np.testing.assert_allclose(task.predict(a, family="darcy"), raw * 0.01, rtol=1e-4, atol=1e-7)
    x[0, 1] = 1.5  # heat's nu on its log scale: the middle of [3e-3, 3e-2]
    np.testing.assert_allclose(task.predict(a, family="heat", nu=np.sqrt(3e-3 * 3e-2)),
                               task.eval()(dict(input=x * torch.tensor([12.0, 1, 1, 1, 1]).view(5, 1, 1),
                                                          resample="spectral"))[0, 0]
                               .detach().numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="family: this model's families were trained in different units"):
        task.predict(a)
    with pytest.raises(ValueError, match="family: expected one of"):
        task.predict(a, family="burgers")
    with pytest.raises(ValueError, match="NaN or inf"):  # finite input, non-finite output: said at the boundary
        task.predict(np.full((16, 16), 3e38, dtype=np.float32), family="heat", nu=0.01)


def test_print_config_resolves_short_names(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--model", "PDETask", "--data", "PDEDataModule", "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: mmoe.tasks.PDETask" in out
    assert "class_path: mmoe.datamodules.PDEDataModule" in out


def test_validation_figure_shows_every_family() -> None:
    torch.manual_seed(3)
    task = PDETask(**(SMALL | {"moe": MoESettings(router="nested", groups=4, num_experts=12, top_k=1)}))
    for fam in ([0, 0, 1], [1, 3, 3], [2]):  # families spread over several validation batches
        batch = {"input": torch.randn(len(fam), 5, 16, 16), "target": torch.randn(len(fam), 1, 16, 16),
                 "family": torch.tensor(fam)}
        task.update_metrics("val", task(batch), batch)
    fig = task.validation_figures()["pde_samples"]
    titles = [ax.get_title() for ax in fig.axes]
    for name in ("darcy", "heat", "advection", "allen_cahn"):
        assert f"{name}: prediction" in titles
    assert task.validation_figures() == {}  # collected samples are consumed


def _band_limited(rng: np.random.Generator, n: int, size: tuple[int, ...]) -> np.ndarray:
    """Random real fields of Fourier modes |m| <= 3 on the cell centres of ``size`` (exact on any grid)."""
    from mmoe.datamodules.pde import solvers as S

    coeffs = S.grf_coefficients(rng, n, len(size), 3, 1.5, 3.0)
    return S.eval_fourier(coeffs, [np.arange(-3, 4)] * len(size), [S.cell_centres(s) for s in size])


@pytest.mark.parametrize("size", [(15, 18), (32, 32)])
def test_conditioned_channels_translate_and_diffuse_exactly(size: tuple[int, int]) -> None:
    """With drift = c t and log D = log(nu t) read off the parameter channels, the two channels are
    the exact advection and heat solutions (numpy solvers of the data generator as reference)."""
    from mmoe.datamodules.pde import solvers as S
    from mmoe.tasks.pde.model import ConditionedFourierChannels

    rng = np.random.default_rng(5)
    u0 = _band_limited(rng, 3, size)
    c = rng.uniform(-1, 1, size=(3, 2))
    s = rng.uniform(size=3)  # heat nu = 3e-3 * 10**s, its channel holds 1 + s
    lo, hi = 3e-3, 3e-2
    x = torch.zeros(3, 5, *size)
    x[:, 0] = torch.from_numpy(u0)
    x[:, 1] = torch.from_numpy(1 + s).view(3, 1, 1)
    x[:, 3:5] = torch.from_numpy(c).float().view(3, 2, 1, 1)
    layer = ConditionedFourierChannels(2, 4, 2)
    with torch.no_grad():
        w, b = layer.linear.weight.view(2, 3, 4), layer.linear.bias.view(2, 3)
        w.zero_(), b.zero_()
        w[0, 0, 2] = w[0, 1, 3] = 0.5  # channel 0: drift = c * (t = 0.5), D = e^-60
        b[0, 2] = -60.0
        w[1, 2, 0] = np.log(hi / lo)  # channel 1: log D = log(nu * (t = 1)), no drift
        b[1, 2] = np.log(lo) - np.log(hi / lo)
    out = layer(x).detach().double().numpy()
    np.testing.assert_allclose(out[:, 0], S.advect_periodic(u0, c, 0.5), atol=2e-5)
    np.testing.assert_allclose(out[:, 1], S.heat_periodic(u0, lo * (hi / lo) ** s, 1.0), atol=2e-5)


def test_conditioned_channels_start_as_the_field_and_learn() -> None:
    from mmoe.tasks.pde.model import ConditionedFourierChannels

    torch.manual_seed(6)
    u0 = torch.from_numpy(_band_limited(np.random.default_rng(7), 2, (17,))).float()
    x = torch.cat([u0[:, None], torch.rand(2, 1, 1).expand(2, 1, 17)], dim=1)  # 1D: field + one parameter map
    layer = ConditionedFourierChannels(1, 1, 3)
    out = layer(x)
    assert out.shape == (2, 3, 17)
    for j in range(3):  # no translation at start, and D = e^-9 barely damps |m| <= 3
        torch.testing.assert_close(out[:, j], u0, atol=2e-2, rtol=0)
    target = torch.roll(u0, 2, dims=-1)  # a shift by 2 of 17 cells: needs a parameter-dependent drift
    out.sub(target[:, None]).pow(2).sum().backward()
    assert layer.linear.weight.grad.abs().sum() > 0 and layer.mlp[0].weight.grad is not None


def test_conditioned_channels_option() -> None:
    with pytest.raises(ValueError, match="conditioned_channels: expected an integer >= 0"):
        PDETask(conditioned_channels=-1, **SMALL)
    plain = PDETask(**SMALL)  # the default: no extra weights, so earlier released files still load
    assert not any("condition" in k for k in plain.state_dict())
    torch.manual_seed(8)
    task = PDETask(preprocess=PDEPreprocess(2, 5, family_names=[], resolution=16), conditioned_channels=2, **SMALL)
    for shape in ((2, 5, 16, 16), (1, 5, 30, 22)):
        y = task(dict(input=torch.randn(*shape)))
        assert y.shape == (shape[0], 1, *shape[2:]) and torch.isfinite(y).all()


@pytest.mark.parametrize("family,name,columns", [("heat", "nu", [0]), ("allen_cahn", "eps2", [1]),
                                                 ("advection", "velocity", [2, 3])])
def test_predict_parameters_by_name_are_the_datamodule_channels(family: str, name: str, columns: list[int]) -> None:
    """Physical values by name give the same input channels (hence prediction) as the generated
    data's own channel maps; the values are the generator's physical draws, recovered through the
    inverse of the stored encoding."""
    from mmoe.datamodules.pde.datamodule import generate_family
    from mmoe.datamodules.pde.preprocess import FAMILY_PARAMETERS, decode_parameter

    torch.manual_seed(5)
    task = PDETask(preprocess=PDEPreprocess(resolution=16), **SMALL).eval()
    data = generate_family(family, 3, 16, seed=7, progress=False)
    spec = FAMILY_PARAMETERS[family][0]
    physical = decode_parameter(spec, data["params"][:, columns], task.pre.parameter_ranges[family][name])
    full = np.zeros((3, 5, 16, 16), dtype=np.float32)
    full[:, 0], full[:, 1:] = data["field"], data["params"][:, :, None, None]
    by_name = task.predict(data["field"], family=family, **{name: physical if len(columns) > 1 else physical[:, 0]})
    np.testing.assert_allclose(by_name, task.predict(full, family=family)[:, 0], rtol=1e-4, atol=1e-5)
    if family == "heat":  # the draws are log-uniform within the stated range
        assert ((physical >= 3e-3) & (physical <= 3e-2)).all()


def test_predict_refuses_missing_or_foreign_parameters() -> None:
    task = PDETask(preprocess=PDEPreprocess(resolution=16), **SMALL)
    f = np.random.default_rng(0).normal(size=(16, 16))
    with pytest.raises(ValueError, match=r"nu: family 'heat' needs its diffusivity.*\[0.003, 0.03\]"):
        task.predict(f, family="heat")
    with pytest.raises(ValueError, match=r"velocity: family 'advection' needs"):
        task.predict(f, family="advection")
    with pytest.raises(ValueError, match=r"velocity: family 'heat' takes \['nu'\]"):
        task.predict(f, family="heat", nu=0.01, velocity=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"nu: family 'darcy' takes no parameters"):
        task.predict(f, family="darcy", nu=0.01)
    with pytest.raises(ValueError, match=r"family: a field without a channel axis needs its family"):
        PDETask(preprocess=PDEPreprocess(resolution=16, input_scale={}, target_scale={}), **SMALL).predict(f)
    with pytest.raises(ValueError, match=r"nu: a field with a channel axis carries its parameters"):
        task.predict(np.zeros((1, 5, 16, 16)), family="heat", nu=0.01)
    with pytest.raises(ValueError, match=r"velocity: expected shape \(2,\) or \(2, 2\)"):
        task.predict(np.stack([f, f]), family="advection", velocity=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match=r"nu: expected finite values > 0"):
        task.predict(f, family="heat", nu=0.0)
    with pytest.raises(TypeError, match=r"nu: expected real numbers"):
        task.predict(f, family="heat", nu="0.01")
    with pytest.warns(UserWarning, match=r"nu: values in \[0.1, 0.1\] leave the range \[0.003, 0.03\]"):
        task.predict(f, family="heat", nu=0.1)
    per_sample = task.predict(np.stack([f, f]), family="advection", velocity=[(0.5, 0.0), (-0.5, 0.25)])
    assert per_sample.shape == (2, 16, 16) and not np.allclose(per_sample[0], per_sample[1])


@pytest.mark.parametrize("sizes", [(32, 64), (64, 32), (30, 45), (33, 64), (17, 16)])
def test_spectral_resample_is_exact_for_band_limited_fields(sizes: tuple[int, int]) -> None:
    """Between cell-centred grids, 1D and 2D, odd and even sizes, against the analytic function."""
    from mmoe.tasks.pde.model import spectral_resample

    n, m = sizes
    c = lambda k: (torch.arange(k, dtype=torch.float64) + 0.5) / k  # noqa: E731
    f = lambda X, Y: torch.sin(2 * np.pi * X + 0.3) * torch.cos(6 * np.pi * Y) + torch.cos(2 * np.pi * (5 * X - 2 * Y))  # noqa: E731
    X, Y = torch.meshgrid(c(n), c(n), indexing="ij")
    Xo, Yo = torch.meshgrid(c(m), c(m), indexing="ij")
    got = spectral_resample(f(X, Y)[None, None], [m, m])[0, 0]
    torch.testing.assert_close(got, f(Xo, Yo), rtol=0, atol=1e-10)
    g = lambda x: torch.sin(2 * np.pi * 3 * x) + 0.5 * torch.cos(2 * np.pi * 7 * x - 1.0)  # noqa: E731
    torch.testing.assert_close(spectral_resample(g(c(n))[None], [m])[0], g(c(m)), rtol=0, atol=1e-10)


def test_periodic_family_prediction_does_not_depend_on_the_grid() -> None:
    """A band-limited field of a periodic family at 64x64 gives the 32x32 prediction, resampled."""
    from mmoe.tasks.pde.model import spectral_resample

    torch.manual_seed(6)
    task = PDETask(preprocess=PDEPreprocess(resolution=32), **SMALL).eval()
    c = lambda k: (np.arange(k) + 0.5) / k  # noqa: E731
    u = lambda k: np.sin(2 * np.pi * c(k))[:, None] * np.cos(4 * np.pi * c(k))[None, :]  # noqa: E731
    y32 = task.predict(u(32), family="heat", nu=0.01)
    y64 = task.predict(u(64), family="heat", nu=0.01)
    # the pointwise skip path adds the (grid-exact) input's image on each grid: compare low modes
    low = spectral_resample(torch.from_numpy(y64)[None], [16, 16])[0]
    torch.testing.assert_close(low, spectral_resample(torch.from_numpy(y32)[None], [16, 16])[0], rtol=1e-3, atol=1e-3)
