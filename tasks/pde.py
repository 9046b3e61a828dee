"""PDE neural operators: a nested-MoE operator on the shared backbone (after NESTOR).

Fields are cut into patches; patch tokens carry Fourier features of their physical position
in [0, 1]^d; the backbone alternates a spectral
(Fourier) or attention token mixer with a nested MoE: per sample, a group of experts is chosen
(trained to match the PDE family when family labels are known); per token, the top-k experts
of that group plus the group's shared expert. A linear head maps tokens back to patches.

Resolution: the operator computes on its training grid (``resolution``). A field on another
grid is resampled to it (bilinear / linear, cell-centred), and the prediction is resampled
back; the pointwise skip path runs on the native grid. So a model trained at 32x32 predicts at
64x64 (or 30x22) with the accuracy of its 32x32 grid plus the interpolation error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Accuracy

from mmoe.backbone import MultimodalMoEBackbone
from mmoe.moe_layer import MoELayer
from mmoe.tasks.base import BaseMoETask
from mmoe.tasks.metrics import RelativeL2
from mmoe.validation import check_choice, check_positive_int


def fourier_positions(grid: tuple[int, ...], patch: int, resolution: tuple[int, ...], num_freqs: int,
                      device: torch.device) -> torch.Tensor:
    """sin/cos features of patch-centre coordinates in [0, 1]^d: ``[prod(grid), 2 * d * num_freqs]``."""
    axes = [(torch.arange(g, device=device) * patch + patch / 2) / r for g, r in zip(grid, resolution)]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))
    freqs = 2 * math.pi * torch.arange(1, num_freqs + 1, device=device)
    angles = coords.unsqueeze(-1) * freqs  # [N, d, F]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(coords.shape[0], -1)


class NestedMoEOperator(nn.Module):
    """``[B, C_in, *grid] -> [B, C_out, *grid]`` neural operator; see the module docstring.

    ``moe=False`` gives the dense baseline: the same network with every MoE FFN replaced by a
    dense FFN of hidden width ``(top_k + 1) * hidden_dim`` (the active width of a token).
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, patch_size: int, dim: int,
                 depth: int, num_heads: int, hidden_dim: int, num_groups: int, experts_per_group: int,
                 top_k: int, mixer: str, modes: int, moe: bool, resolution: int | None = None,
                 num_freqs: int = 8) -> None:
        super().__init__()
        self.spatial_dims, self.patch, self.num_freqs = spatial_dims, patch_size, num_freqs
        self.resolution = resolution
        self.in_channels, self.out_channels = in_channels, out_channels
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        self.embed = conv(in_channels, dim, patch_size, stride=patch_size)
        self.pos = nn.Linear(2 * spatial_dims * num_freqs, dim)
        self.backbone = MultimodalMoEBackbone(
            ["field"], dim=dim, depth=depth, num_heads=num_heads, hidden_dim=hidden_dim,
            num_experts=num_groups * experts_per_group, top_k=top_k, router="nested", groups=num_groups,
            moe_blocks=None if moe else [], mixer=mixer, spectral_modes=modes, spatial_dims=spatial_dims,
            positions=False, dense_hidden_dim=(top_k + 1) * hidden_dim,
        )
        self.head = nn.Linear(dim, out_channels * patch_size**spatial_dims)
        self.skip = conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = list(x.shape[2:])
        work = [self.resolution] * self.spatial_dims if self.resolution else size
        if work != size:
            mode = "linear" if self.spatial_dims == 1 else "bilinear"
            y = self._operator(F.interpolate(x, size=work, mode=mode, align_corners=False))
            y = F.interpolate(y, size=size, mode=mode, align_corners=False)
        else:
            y = self._operator(x)
        return y + self.skip(x)

    def _operator(self, x: torch.Tensor) -> torch.Tensor:
        B, _, *size = x.shape
        p, d = self.patch, self.spatial_dims
        pad = [(-s) % p for s in size]
        if any(pad):  # pad to whole patches; the padding is cropped off the output
            x_in = F.pad(x, [v for s in reversed(pad) for v in (0, s)], mode="replicate")
        else:
            x_in = x
        tokens = self.embed(x_in)  # [B, dim, *grid]
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        pos = self.pos(fourier_positions(grid, p, tuple(size), self.num_freqs, x.device)).unsqueeze(0)
        out = self.backbone({"field": tokens}, positions={"field": pos}, grid=grid)["field"]
        patches = self.head(out)  # [B, N, C_out * p^d]
        if d == 1:
            y = patches.view(B, grid[0], self.out_channels, p).permute(0, 2, 1, 3).reshape(B, self.out_channels, -1)
        else:
            y = patches.view(B, grid[0], grid[1], self.out_channels, p, p).permute(0, 3, 1, 4, 2, 5)
            y = y.reshape(B, self.out_channels, grid[0] * p, grid[1] * p)
        return y[(...,) + tuple(slice(0, s) for s in size)]


class PDETask(BaseMoETask):
    """Operator learning on PDE fields with a nested MoE operator.

    Args:
        in_channels, out_channels: field channels (the datamodule's ``in_channels``).
        spatial_dims: 1 or 2. family_names: PDE families in label order (for per-family
            metrics, the family-routing loss and the experts x family maps).
        patch_size, dim, depth, num_heads, hidden_dim: operator size.
        num_groups, experts_per_group, top_k: nested MoE (groups chosen per sample; inside a
            group, top-k of ``experts_per_group - 1`` routed experts plus one shared expert).
        mixer: ``"spectral"``, ``"attention"`` or ``"hybrid"`` (both). modes: Fourier modes of the spectral mixer.
        moe: False gives the dense baseline with equal active parameters.
        train_resolution: the training grid size per axis; fields on other grids are resampled to
            it and back (None: compute on whatever grid comes in).
        family_loss_weight: weight of the cross-entropy between the sample-level group logits
            and the family label (samples with family -1 are ignored).
        lr, weight_decay, scheduler, warmup_steps, aux_loss_weight, log_routing: see BaseMoETask.
    """

    def __init__(
        self,
        in_channels: int = 5,
        out_channels: int = 1,
        spatial_dims: int = 2,
        family_names: list[str] | None = None,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        hidden_dim: int = 128,
        num_groups: int = 4,
        experts_per_group: int = 4,
        top_k: int = 1,
        mixer: str = "spectral",
        modes: int = 8,
        moe: bool = True,
        train_resolution: int | None = None,
        family_loss_weight: float = 0.1,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "cosine",
        warmup_steps: int = 50,
        aux_loss_weight: float = 1.0,
        log_routing: bool = True,
    ) -> None:
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("patch_size", patch_size)
        if spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims: expected 1 or 2, got {spatial_dims!r}")
        check_choice("mixer", mixer, ("spectral", "attention", "hybrid"))
        super().__init__(lr=lr, weight_decay=weight_decay, scheduler=scheduler, warmup_steps=warmup_steps,
                         aux_loss_weight=aux_loss_weight, log_routing=log_routing)

    def configure_models(self) -> None:
        hp = self.hparams
        self.model = NestedMoEOperator(
            hp.in_channels, hp.out_channels, hp.spatial_dims, hp.patch_size, hp.dim, hp.depth, hp.num_heads,
            hp.hidden_dim, hp.num_groups, hp.experts_per_group, hp.top_k, hp.mixer, hp.modes, hp.moe,
            hp.train_resolution,
        )

    def configure_metrics(self) -> None:
        names = list(self.hparams.family_names or [])
        self.train_metrics, self.val_metrics, self.test_metrics = (RelativeL2(names) for _ in range(3))
        groups = max(2, self.hparams.num_groups)
        self.val_routing_acc, self.test_routing_acc = (Accuracy(task="multiclass", num_classes=groups) for _ in range(2))

    def class_names(self) -> list[str] | None:
        return list(self.hparams.family_names or []) or None

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(batch["input"])

    def _group_logits(self) -> list[torch.Tensor]:
        return [m.last_sample_logits for m in self.modules()
                if isinstance(m, MoELayer) and m.last_sample_logits is not None]

    def task_loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        target = batch["target"]
        B = target.shape[0]
        diff = (output - target).reshape(B, -1).norm(dim=1)
        loss = (diff / target.reshape(B, -1).norm(dim=1).clamp_min(1e-8)).mean()  # relative L2, as measured
        family = batch.get("family")
        logits = self._group_logits()
        if self.hparams.family_loss_weight and family is not None and logits and self.hparams.num_groups > 1:
            known = family >= 0
            if bool(known.any()):
                ce = torch.stack([F.cross_entropy(g[known], family[known] % g.shape[1]) for g in logits]).mean()
                loss = loss + self.hparams.family_loss_weight * ce
        return loss

    def update_metrics(self, split: str, output: torch.Tensor, batch: dict[str, Any]) -> None:
        family = batch.get("family")
        self.split_metrics(split).update(output, batch["target"], family)
        if split == "val":  # keep the first sample of each family for the validation figure
            samples = self.__dict__.setdefault("_val_samples", {})
            for i in range(output.shape[0]):
                key = int(family[i]) if family is not None else -1
                if key not in samples:
                    samples[key] = tuple(t[i, 0].detach().float().cpu()
                                         for t in (batch["input"], output, batch["target"]))
        logits = self._group_logits()
        acc = getattr(self, f"{split}_routing_acc", None)
        if acc is not None and logits and self.hparams.num_groups > 1 and family is not None and bool((family >= 0).any()):
            known = family >= 0
            acc.update(logits[0][known].argmax(-1), family[known] % logits[0].shape[1])

    def _log_metrics(self, split: str) -> None:
        super()._log_metrics(split)
        acc = getattr(self, f"{split}_routing_acc", None)
        if acc is not None and acc.update_called:
            self.log(f"{split}/family_routing_acc", acc.compute())
            acc.reset()

    def routing_classes(self, batch: dict[str, Any]) -> torch.Tensor | None:
        family = batch.get("family")
        return family.clamp_min(0) if family is not None and self.hparams.family_names else None

    def validation_figures(self) -> dict[str, Any]:
        """Input, prediction, truth and |error| of the first validation sample of each family."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        samples = self.__dict__.pop("_val_samples", {})
        if not samples:
            return {}
        names = self.class_names() or []
        fig, axes = plt.subplots(len(samples), 4, figsize=(10, 2.4 * len(samples)), squeeze=False)
        for row, key in enumerate(sorted(samples)):
            inp, pred, true = samples[key]
            name = names[key] if 0 <= key < len(names) else "sample"
            panels = [inp, pred, true, (pred - true).abs()]
            for col, (title, img) in enumerate(zip(["input", "prediction", "truth", "|error|"], panels)):
                ax = axes[row, col]
                if img.ndim == 1:
                    ax.plot(img.numpy())
                else:
                    ax.imshow(img.numpy(), cmap="viridis")
                    ax.axis("off")
                ax.set_title(f"{name}: {title}", fontsize=8)
        fig.tight_layout()
        return {"pde_samples": fig}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, field: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Solution operator on ``field``, in the layout and array type it came in.

        2D: ``[H, W]``, ``[N, H, W]`` or ``[N, C, H, W]``; 1D: ``[X]``, ``[N, X]`` or ``[N, C, X]``;
        any resolution that is at least one patch. A field without a channel axis is the first
        input channel, the other (parameter) channels zero. Values are in the units of the
        training data (see the datamodule's normalization).
        """
        is_numpy = isinstance(field, np.ndarray)
        if not is_numpy and not isinstance(field, torch.Tensor):
            raise TypeError(f"field: expected a numpy array or torch.Tensor, got {type(field).__name__}")
        x = torch.as_tensor(field)
        if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"field: expected real numbers, got dtype {x.dtype}")
        d, C = self.hparams.spatial_dims, self.hparams.in_channels
        if x.ndim not in (d, d + 1, d + 2):
            shapes = {1: "[X], [N, X] or [N, C, X]", 2: "[H, W], [N, H, W] or [N, C, H, W]"}[d]
            raise ValueError(f"field: expected {shapes}, got shape {tuple(x.shape)}")
        if x.numel() == 0 or (x.ndim >= d + 1 and x.shape[0] == 0):
            raise ValueError(f"field: expected a non-empty batch, got shape {tuple(x.shape)}")
        if x.ndim == d + 2 and x.shape[1] != C:
            raise ValueError(f"field: expected {C} channels (dim 1), got shape {tuple(x.shape)}")
        if min(x.shape[-d:]) < self.hparams.patch_size:
            raise ValueError(f"field: expected spatial size >= {self.hparams.patch_size}, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x.float()).all()):
            raise ValueError(f"field: contains NaN or inf (shape {tuple(x.shape)})")
        layout = x.ndim
        x = x.float().to(self.device)
        if layout == d:
            x = x.unsqueeze(0)
        if layout <= d + 1:
            x = torch.cat([x.unsqueeze(1), x.new_zeros(x.shape[0], C - 1, *x.shape[1:])], dim=1)
        was_training = self.training
        self.eval()
        y = self.model(x)
        self.train(was_training)
        if layout <= d + 1:
            y = y[:, 0]
        if layout == d:
            y = y[0]
        return y.cpu().numpy() if is_numpy else y.to(torch.as_tensor(field).device)
