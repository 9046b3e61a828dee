"""Expert ecology E = T·H/(O+B) (issue 36): the router temperature T and the routing-entropy weight H
against hand computations, E as logged by a task, ``moe.ecology_target`` holding E as O and B change,
and the knobs from a task's CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from mmoe.datamodules import PDEDataModule
from mmoe.kernels import backend_ops
from mmoe.moe_layer import MoELayer
from mmoe.routing_monitor import RoutingMonitor
from mmoe.settings import MoESettings
from mmoe.tasks import PDETask
from mmoe.tasks.pde import PDEPreprocess
from test_moe_settings import _fit, _layers

DIM = 12


class OraclePDETask(PDETask):
    """PDE with its family loss declared as the oracle O (what the task itself is to declare)."""

    oracle_weight_hparam = "family_loss_weight"


def _np_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _np_entropy_bonus(p: np.ndarray, weight: float) -> float:
    """``-weight * mean_t(-sum_e p log p) / log E`` in float64."""
    ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(-1).mean()
    return -weight * ent / math.log(p.shape[-1])


def _route(layer: MoELayer, x: torch.Tensor, samples: int = 1):
    """The layer's router on ``x [T, dim]`` split into ``samples`` equal samples."""
    sample = torch.arange(samples).repeat_interleave(x.shape[0] // samples)
    with torch.no_grad():
        return layer.router(x, sample, samples, backend_ops("torch", x.device), None)


def _layer(**kw) -> MoELayer:
    kw = {"load_balance_weight": 0.0, "z_loss_weight": 0.0, "backend": "torch", **kw}
    return MoELayer(DIM, 8, kw.pop("num_experts", 6), kw.pop("top_k", 2), **kw)


@pytest.mark.parametrize("T", [0.3, 1.0, 2.5])
def test_temperature_divides_the_routing_logits_only(T: float) -> None:
    torch.manual_seed(int(T * 10))
    layer = _layer(router_temperature=T, z_loss_weight=1e-2)
    x = torch.randn(7, DIM)  # fresh inputs
    layer(x)
    logits = x.double().numpy() @ layer.router.weight.detach().double().numpy().T
    probs = _np_softmax(logits / T)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    r = _route(layer, x)
    np.testing.assert_allclose(r.token_probs.double().numpy(), probs, rtol=1e-5, atol=1e-6)
    assert (r.pair_expert.view(7, 2).numpy() == top).all()
    np.testing.assert_allclose(r.pair_weight.view(7, 2).double().numpy(), np.take_along_axis(probs, top, 1),
                               rtol=1e-5, atol=1e-6)
    # the z-loss sees the raw logits, not logits / T
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(float(layer.aux_loss), 1e-2 * (lse**2).mean(), rtol=1e-5)


def test_temperature_reaches_sigmoid_and_group_gates() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 5, DIM)
    sig = _layer(router="sigmoid", router_temperature=2.0, router_options={"bias_rate": 0.0})
    sig(x)
    logits = x.reshape(-1, DIM).double().numpy() @ sig.router.weight.detach().double().numpy().T
    scores = 1 / (1 + np.exp(-logits / 2.0))
    np.testing.assert_allclose(sig.stats.router_entropy.item(), float(
        (-(scores / scores.sum(-1, keepdims=True)) * np.log(scores / scores.sum(-1, keepdims=True))).sum(-1).mean()),
        rtol=1e-5)
    nested = _layer(router="nested", router_options={"groups": 2}, num_experts=6, top_k=1, router_temperature=0.5)
    r = _route(nested, x.reshape(-1, DIM), samples=2)
    pooled = x.double().mean(1).numpy()
    group_logits = pooled @ nested.router.group_weight.detach().double().numpy().T
    gate = _np_softmax(group_logits / 0.5).max(-1)
    # each token's last pair is its group's shared expert, weighted by the group gate g
    np.testing.assert_allclose(r.pair_weight.view(10, 2)[:, 1].double().numpy(), np.repeat(gate, 5), rtol=1e-5)
    # the sample logits a supervised (oracle) loss reads stay raw
    np.testing.assert_allclose(r.sample_logits.double().numpy(), group_logits, rtol=1e-5)


ENTROPY_ROUTERS = ["softmax", "sigmoid", "expert_choice", "sample", "beam", "soft"]


@pytest.mark.parametrize("router", ENTROPY_ROUTERS)
def test_entropy_term_matches_a_hand_computation(router: str) -> None:
    torch.manual_seed(ENTROPY_ROUTERS.index(router))
    T, H = 0.7, 0.37
    options = {"bias_rate": 0.0} if router == "sigmoid" else {"sparsity_weight": 0.0} if router == "beam" else {}
    layer = _layer(router=router, router_options=options, router_temperature=T, entropy_weight=H)
    x = torch.randn(3, 4, DIM)
    layer(x)
    W = layer.router.weight.detach().double().numpy()
    xs = x.double().numpy()
    if router in ("softmax", "beam", "expert_choice"):
        p = _np_softmax(xs.reshape(-1, DIM) @ W.T / T)
    elif router == "sigmoid":
        s = 1 / (1 + np.exp(-(xs.reshape(-1, DIM) @ W.T) / T))
        p = s / s.sum(-1, keepdims=True)
    elif router == "sample":
        p = np.repeat(_np_softmax(xs.mean(1) @ W.T / T), 4, axis=0)
    else:  # soft: per token, the combine weights over slots summed per expert
        p = _np_softmax(xs.reshape(-1, DIM) @ W.T / T)
    np.testing.assert_allclose(float(layer.aux_loss), _np_entropy_bonus(p, H), rtol=1e-5)
    assert layer.stats.entropy_weight == H


def test_entropy_term_rewards_spread_routing() -> None:
    """The sign: a gradient step on the aux loss raises the routing entropy."""
    torch.manual_seed(3)
    layer = _layer(entropy_weight=1.0)
    x = torch.randn(64, DIM)
    layer(x)
    before = layer.stats.router_entropy.item()
    layer.aux_loss.backward()
    with torch.no_grad():
        layer.router.weight -= 0.5 * layer.router.weight.grad
    layer(x)
    assert layer.stats.router_entropy.item() > before


def test_logged_ecology_equals_the_formula(tmp_path: Path) -> None:
    """A task run logs E = T·H/(O+B) per MoE layer (O: the task's oracle hparam) and draws it."""
    torch.manual_seed(0)
    T, H, O, B = 1.5, 0.02, 0.25, 0.04
    moe = MoESettings(router="nested", groups=2, num_experts=6, top_k=1, router_temperature=T, entropy_weight=H,
                      load_balance_weight=B)
    task = OraclePDETask(preprocess=PDEPreprocess(family_names=["darcy", "heat", "advection", "allen_cahn"],
                                                  resolution=16),
                         patch_size=4, dim=16, depth=2, num_heads=2, hidden_dim=16, moe=moe, mixer="spectral",
                         modes=4, family_loss_weight=O)
    dm = PDEDataModule(resolution=16, num_samples_per_family=20, batch_size=8, cache_dir=str(tmp_path))
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=1,
                      num_sanity_val_steps=0, logger=CSVLogger(tmp_path), enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, dm)
    logged = trainer.logged_metrics
    layers = [n for n, m in task.named_modules() if isinstance(m, MoELayer)]
    assert len(layers) == 2
    monitor = next(c for c in trainer.callbacks if isinstance(c, RoutingMonitor))  # added by the task
    for name in layers:
        for split in ("train", "val"):
            assert float(logged[f"routing_{split}/{name}/ecology"]) == pytest.approx(T * H / (O + B), rel=1e-6)
            assert float(logged[f"routing_{split}/{name}/entropy_weight"]) == pytest.approx(H)
            assert f"routing_{split}/{name}/router_entropy" in logged
        # one (step, E, dead) point per training step for the routing figure
        assert [p[0] for p in monitor.ecology_history[name]] == [0, 1, 2]
    assert list(Path(trainer.log_dir).glob("figures/routing_experts_x_layers_epoch000_step*.png"))


@pytest.mark.parametrize("router", ["softmax", "sigmoid", "nested"])
def test_target_holds_ecology_as_weights_change(router: str) -> None:
    """The H actually applied in the loss (measured from aux_loss) keeps E within 1% of the target."""
    rng = np.random.default_rng(7)
    target, T = 0.5, 0.8
    options = {"groups": 2} if router == "nested" else {"bias_rate": 0.0} if router == "sigmoid" else {}
    top_k = 1 if router == "nested" else 2
    layer = _layer(router=router, router_options=options, top_k=top_k, router_temperature=T, ecology_target=target)
    twin = _layer(router=router, router_options=options, top_k=top_k, router_temperature=T)  # H = 0
    twin.load_state_dict(layer.state_dict())
    for O, B in [(0.1, 0.0), (0.0, 0.01), (0.3, 0.05), *[tuple(rng.uniform(0.0, 0.5, 2)) for _ in range(4)]]:
        layer.oracle_weight, layer.load_balance_weight = float(O), float(B)
        twin.load_balance_weight = float(B)
        x = torch.randn(2, 6, DIM)
        layer.eval(), twin.eval()
        layer(x), twin(x)
        p = _route(layer, x.reshape(-1, DIM), samples=2).token_probs.double().numpy()
        ent = _np_entropy_bonus(p, 1.0)  # the loss of H = 1
        applied_H = (float(layer.aux_loss) - float(twin.aux_loss)) / ent
        measured = T * applied_H / (O + B)
        assert measured == pytest.approx(target, rel=1e-2), (O, B)
        assert layer.ecology == pytest.approx(target, rel=1e-9)


def test_target_in_a_task_follows_the_oracle_weight() -> None:
    moe = MoESettings(router="nested", groups=2, num_experts=6, top_k=1, ecology_target=0.5, load_balance_weight=0.0)
    task = OraclePDETask(patch_size=4, dim=16, depth=2, num_heads=2, hidden_dim=16, moe=moe, mixer="spectral",
                         modes=4, family_loss_weight=0.2, aux_loss_weight=2.0)
    layers = [m for m in task.modules() if isinstance(m, MoELayer)]
    # O in aux-loss units: O / aux_loss_weight
    assert all(m.oracle_weight == pytest.approx(0.1) and m.effective_entropy_weight == pytest.approx(0.05)
               for m in layers)
    task.hparams.family_loss_weight = 0.6  # e.g. a schedule: the next training step syncs it
    task.sync_oracle_weight()
    assert all(m.effective_entropy_weight == pytest.approx(0.5 * 0.3) and m.ecology == pytest.approx(0.5)
               for m in layers)
    with pytest.raises(ValueError, match=r"moe\.ecology_target: .*O \+ B = 0"):
        OraclePDETask(patch_size=4, dim=16, depth=2, num_heads=2, hidden_dim=16, moe=moe, mixer="spectral",
                      modes=4, family_loss_weight=0.0)
    with pytest.raises(ValueError, match=r"moe\.ecology_target: .*aux_loss_weight=0"):
        OraclePDETask(patch_size=4, dim=16, depth=2, num_heads=2, hidden_dim=16, moe=moe, mixer="spectral",
                      modes=4, family_loss_weight=0.2, aux_loss_weight=0.0)


def test_settings_check_the_ecology_fields() -> None:
    for bad, match in ((dict(router_temperature=0.0), "moe.router_temperature"),
                       (dict(entropy_weight=-0.1), "moe.entropy_weight"),
                       (dict(ecology_target=0.0), "moe.ecology_target"),
                       (dict(ecology_target=float("inf")), "moe.ecology_target"),
                       (dict(ecology_target=0.5, entropy_weight=0.1), "moe.entropy_weight: moe.ecology_target")):
        with pytest.raises((ValueError, TypeError), match=match):
            MoESettings(**bad)
    fields = MoESettings(router_temperature=2.0, entropy_weight=0.1).block_fields()
    assert (fields["router_temperature"], fields["entropy_weight"], fields["ecology_target"]) == (2.0, 0.1, None)
    assert MoESettings().block_fields()["ecology_target"] is None  # off by default
    with pytest.raises(ValueError, match="router_temperature"):
        _layer(router_temperature=-1.0)


def test_ecology_knobs_from_a_task_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))
    cli = _fit("pde", tmp_path, "--model.init_args.moe.router_temperature", "2.0",
               "--model.init_args.moe.ecology_target", "0.5", "--model.init_args.moe.load_balance_weight", "0.02")
    layers = _layers(cli)
    assert layers and cli.trainer.global_step == 1
    assert cli.model.moe.ecology_target == 0.5 and cli.model.moe.router_temperature == 2.0
    O = cli.model.oracle_weight
    for m in layers:
        assert m.router_temperature == 2.0 and m.ecology == pytest.approx(0.5)
        assert m.router.entropy_weight == pytest.approx(0.5 * (O + 0.02) / 2.0)
    logged = cli.trainer.logged_metrics
    names = [n for n, m in cli.model.named_modules() if isinstance(m, MoELayer)]
    assert all(float(logged[f"routing_train/{n}/ecology"]) == pytest.approx(0.5) for n in names)


def test_ecology_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/ecology.py runs end to end in a short mode and writes its numbers and plot."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "benchmarks/ecology.py", "--quick", "--steps", "30", "--json",
                          str(tmp_path / "eco.json"), "--plot", str(tmp_path / "eco.png")],
                         cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "eco.json").read_text())
    assert len(data["sweep"]) == 9 and len(data["resuscitation"]) == 1  # 2 x (H=0 + 3 E values) + sigmoid
    for row in data["sweep"]:
        assert 0 <= row["dead"][0] <= 8 and row["imbalance"][0] >= 1.0 and math.isfinite(row["rel_mse"][0])
        if row["E"]:  # the H the target chose holds E = T·H/(O+B)
            assert row["H"] == pytest.approx(row["E"] * (0.1 + row["B"]))
    assert (tmp_path / "eco.png").stat().st_size > 0
