"""The FNO peer of the PDE benchmark: neuraloperator's ``FNO`` trained on a ``PDEDataModule``.

Same inputs (all channels, including the family parameter maps), targets, splits and metric
(:class:`mmoe.tasks.pde.metrics.RelativeL2`, per family) as the nested-MoE operator; trained
with the relative L2 loss the MoE task trains on, for a wall-clock budget (validation included),
keeping the weights of the best validation rel L2. FNO is resolution-independent: a 64x64 field
is fed as it is.

Optimiser: AdamW, lr 8e-3, weight decay 1e-4 and cosine annealing, the settings of
neuraloperator's own Darcy examples (``examples/models/plot_FNO_darcy.py``); the cosine runs
over the time budget (or over ``max_steps`` when given), since the number of steps a budget
buys is not known in advance.

Needs the benchmark-only dependency ``neuraloperator`` (see the module :func:`require_neuralop`).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mmoe.tasks.pde.metrics import RelativeL2
from mmoe.tasks.pde.model import ConditionedFourierChannels

INSTALL = ("pip install --no-deps neuraloperator==2.0.0 && "
           "pip install tensorly==0.10.0 tensorly-torch==0.5.0 opt-einsum==3.4.0 requests")
# Widths (per spatial dimension) whose real parameter counts are near the MoE recipes': 2D 4.19M
# (nested_moe_2d 4.02M), 1D 1.21M (nested_moe_1d 1.19M); 4 Fourier layers and 16 modes, as in
# neuraloperator's Darcy examples.
DEFAULT_WIDTH: dict[int, int] = {2: 60, 1: 120}
DEFAULT_MODES, DEFAULT_LAYERS = 16, 4
DEFAULT_LR, DEFAULT_WEIGHT_DECAY = 8e-3, 1e-4


def require_neuralop() -> Any:
    """``neuralop.models.FNO``, or a clear error saying how to install it."""
    try:
        from neuralop.models import FNO
    except ImportError as e:
        raise ImportError(f"the FNO peer needs neuraloperator (a benchmark-only dependency): {INSTALL}  ({e})") from e
    return FNO


def real_parameter_count(model: nn.Module) -> int:
    """Parameters counted as real numbers (a complex weight counts twice, as the MoE's real views do)."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())


class ConditionedFNO(nn.Module):
    """An FNO fed the input plus the nested-MoE recipe's parameter-conditioned Fourier channels
    (:class:`mmoe.tasks.pde.model.ConditionedFourierChannels`): the ablation that tells the
    conditioning's share of the MoE recipe's lead from the rest."""

    def __init__(self, fno: nn.Module, condition: nn.Module) -> None:
        super().__init__()
        self.fno, self.condition = fno, condition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fno(torch.cat([x, self.condition(x)], dim=1))


def build_fno(in_channels: int, out_channels: int, spatial_dims: int, width: int | None = None,
              modes: int = DEFAULT_MODES, layers: int = DEFAULT_LAYERS, conditioned_channels: int = 0) -> nn.Module:
    """neuraloperator's FNO with ``modes`` Fourier modes per axis and its default lifting,
    projection, grid positional embedding and channel MLPs; ``width`` None: :data:`DEFAULT_WIDTH`;
    ``conditioned_channels`` > 0: a :class:`ConditionedFNO` with that many conditioned channels."""
    if spatial_dims not in (1, 2):
        raise ValueError(f"spatial_dims: expected 1 or 2, got {spatial_dims!r}")
    width = DEFAULT_WIDTH[spatial_dims] if width is None else width
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width),
                        ("modes", modes), ("layers", layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if isinstance(conditioned_channels, bool) or not isinstance(conditioned_channels, int) or conditioned_channels < 0:
        raise ValueError(f"conditioned_channels: expected an integer >= 0, got {conditioned_channels!r}")
    FNO = require_neuralop()
    fno = FNO(n_modes=(modes,) * spatial_dims, in_channels=in_channels + conditioned_channels,
              out_channels=out_channels, hidden_channels=width, n_layers=layers)
    if not conditioned_channels:
        return fno
    return ConditionedFNO(fno, ConditionedFourierChannels(spatial_dims, in_channels - 1, conditioned_channels))


def relative_l2_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``||output - target|| / ||target||`` (the MoE task's training loss)."""
    B = target.shape[0]
    diff = (output - target).reshape(B, -1).norm(dim=1)
    return (diff / target.reshape(B, -1).norm(dim=1).clamp_min(1e-8)).mean()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, family_names: list[str], prefix: str = "test") -> dict[str, float]:
    """``{f"{prefix}/rel_l2": ..., f"{prefix}/rel_l2_<family>": ...}`` of ``model`` on ``loader``."""
    metric = RelativeL2(family_names)
    was_training = model.training
    model.eval()
    for batch in loader:
        metric.update(model(batch["input"]), batch["target"], batch.get("family"))
    model.train(was_training)
    return {f"{prefix}/{k}": float(v) for k, v in metric.compute().items()}


def train_fno(datamodule: Any, budget_seconds: float | None, max_steps: int | None = None, seed: int = 0,
              width: int | None = None, modes: int = DEFAULT_MODES, layers: int = DEFAULT_LAYERS,
              lr: float = DEFAULT_LR, weight_decay: float = DEFAULT_WEIGHT_DECAY,
              val_every_epochs: int = 1, conditioned_channels: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Train an FNO on ``datamodule`` (set up here if needed) until ``budget_seconds`` of wall time
    (training and validation) or ``max_steps`` steps, whichever comes first; at least one is needed;
    ``conditioned_channels``: see :func:`build_fno`.

    Returns the model with the weights of the best validation rel L2 (validated every
    ``val_every_epochs`` epochs and at the end) and a description of the run.
    """
    if budget_seconds is None and max_steps is None:
        raise ValueError("budget_seconds: expected a time budget, max_steps or both, got neither")
    if budget_seconds is not None and not budget_seconds > 0:
        raise ValueError(f"budget_seconds: expected a positive number of seconds, got {budget_seconds!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps: expected an integer >= 1, got {max_steps!r}")
    torch.manual_seed(seed)
    datamodule.setup("fit")
    names = list(datamodule.family_names)
    model = build_fno(datamodule.in_channels, datamodule.out_channels, datamodule.dim, width, modes, layers,
                      conditioned_channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()

    def progress(step: int, elapsed: float) -> float:  # fraction of the budget used, for the cosine
        parts = [step / max_steps] if max_steps else []
        parts += [elapsed / budget_seconds] if budget_seconds else []
        return min(1.0, max(parts))

    best_val, best_model, best_step = math.inf, None, 0
    step, epoch, done = 0, 0, False
    start = time.perf_counter()
    model.train()
    while not done:
        for batch in train_loader:
            frac = progress(step, time.perf_counter() - start)
            if frac >= 1.0:
                done = True
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * frac))
            loss = relative_l2_loss(model(batch["input"]), batch["target"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"FNO training loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        else:
            epoch += 1
        if done or epoch % val_every_epochs == 0:
            val = evaluate(model, val_loader, names, "val")["val/rel_l2"]
            if val < best_val:
                # a copy of the module, not its state_dict: neuralop adds a "_metadata" entry that a
                # wrapping module's load_state_dict refuses
                best_val, best_model, best_step = val, copy.deepcopy(model), step
    train_seconds = time.perf_counter() - start
    model = best_model
    model.eval()
    info = {"model": "neuraloperator FNO", "width": width or DEFAULT_WIDTH[datamodule.dim], "modes": modes,
            "layers": layers, "conditioned_channels": conditioned_channels, "parameters": real_parameter_count(model),
            "optimizer": f"AdamW lr {lr} wd {weight_decay}, cosine",
            "seed": seed, "steps": step, "epochs": epoch, "train_seconds": round(train_seconds, 1),
            "budget_seconds": budget_seconds, "max_steps": max_steps, "best_val_rel_l2": round(best_val, 5),
            "best_step": best_step, "threads": torch.get_num_threads()}
    return model, info
