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
    np.testing.assert_allclose(task.predict(a, family="heat"), task.eval()(dict(input=x * 12))[0, 0].detach().numpy(),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="family: this model's families were trained in different units"):
        task.predict(a)
    with pytest.raises(ValueError, match="family: expected one of"):
        task.predict(a, family="burgers")
    with pytest.raises(ValueError, match="NaN or inf"):  # finite input, non-finite output: said at the boundary
        task.predict(np.full((16, 16), 3e38, dtype=np.float32), family="heat")


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
