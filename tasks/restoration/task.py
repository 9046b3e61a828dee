"""RestorationTask: all-in-one image restoration with the wavelet MoE restorer (:mod:`.model`)."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Accuracy

from mmoe.settings import MoESettings, upgrade_legacy_moe
from mmoe.tasks.base import BaseMoETask
from mmoe.tasks.restoration.io import RestorationPreprocess, finish_image, prepare_image, reflect_pad
from mmoe.tasks.restoration.metrics import RestorationMetrics
from mmoe.tasks.restoration.model import RESTORATION_MOE, WaveletMoERestorer
from mmoe.tasks.restoration.writer import RestorationWriter
from mmoe.validation import check_choice, check_number, check_positive_int

#: side of the centre crops shown in the validation figure
FIGURE_CROP = 96
CHARBONNIER_EPS = 1e-3


class RestorationTask(BaseMoETask):
    """All-in-one restoration (denoise, derain, dehaze, ...) with one model and per-image expert groups.

    Batches (see the datamodule): ``{"input": [B, 3, H, W], "target": [B, 3, H, W]}`` in [0, 1]
    and ``"degradation": [B]`` (label into ``preprocess.degradation_names``, -1 unknown). The
    loss is L1 or Charbonnier on the restored image plus ``degradation_loss_weight`` times the
    cross-entropy between each MoE layer's per-image group logits and the degradation label
    (``label % num_groups``). Metrics: PSNR/SSIM on RGB and on Y, per degradation type
    (:class:`.metrics.RestorationMetrics`), and ``degradation_routing_acc`` (the per-image
    decision vs the label).

    Args:
        preprocess: the data's settings (degradation names, padding multiple, tiling); the CLI
            links it from the datamodule, a zoo file carries it. None: the 3-task defaults.
        channels: feature channels at full resolution. dim: backbone token width.
        depth: backbone blocks. hidden_dim: hidden width of each FFN expert.
        moe: the MoE settings (:class:`mmoe.settings.MoESettings`): the ``nested_image`` router picks one
            of ``moe.groups`` expert groups per image (one per degradation type in the recipes), each
            group's last expert shared by its tokens; ``moe.dense`` gives the dense baseline with equal
            active parameters per token.
        conv_blocks: ConvBlocks per stage.
        mixer: backbone token mixer, ``"band_dwconv"`` (local) or ``"attention"`` (global).
        num_heads: attention heads. drop_path: stochastic depth of the ConvBlocks.
        loss: ``"l1"`` or ``"charbonnier"`` (eps 1e-3).
        degradation_loss_weight: weight of the auxiliary degradation classification loss.
        crop_border: pixels cut off each side before PSNR/SSIM.
        aux_loss_weight: weight of the MoE auxiliary losses. log_routing: log routing stats and maps.
    """

    monitor = "val/psnr"
    mode = "max"
    prediction_writer = RestorationWriter
    preprocess_class = RestorationPreprocess
    default_moe = RESTORATION_MOE
    oracle_weight_hparam = "degradation_loss_weight"  # the supervised-routing weight O of the ecology E = T*H/(O+B)

    def __init__(
        self,
        preprocess: RestorationPreprocess | None = None,
        channels: int = 32,
        dim: int = 64,
        depth: int = 4,
        hidden_dim: int = 128,
        moe: MoESettings = RESTORATION_MOE,
        conv_blocks: int = 1,
        mixer: Literal["band_dwconv", "attention"] = "band_dwconv",
        num_heads: int = 4,
        drop_path: float = 0.0,
        loss: Literal["l1", "charbonnier"] = "l1",
        degradation_loss_weight: float = 0.1,
        crop_border: int = 0,
        aux_loss_weight: float = 1.0,
        log_routing: bool = True,
    ) -> None:
        for name, value in (("channels", channels), ("dim", dim), ("depth", depth), ("hidden_dim", hidden_dim),
                            ("conv_blocks", conv_blocks), ("num_heads", num_heads)):
            check_positive_int(name, value)
        check_choice("mixer", mixer, ("band_dwconv", "attention"))
        check_choice("loss", loss, ("l1", "charbonnier"))
        check_number("degradation_loss_weight", degradation_loss_weight)
        check_positive_int("crop_border", crop_border, minimum=0)
        if not 0 <= check_number("drop_path", drop_path) < 1:
            raise ValueError(f"drop_path: expected a rate in [0, 1), got {drop_path!r}")
        super().__init__(aux_loss_weight=aux_loss_weight, log_routing=log_routing)

    @classmethod
    def upgrade_init_args(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        args = dict(init_args)
        if "num_groups" in args and args["num_groups"] is None:  # then: one group per degradation type
            pre = args.get("preprocess")
            names = pre.get("degradation_names") if isinstance(pre, dict) else None
            args["num_groups"] = len(names) if isinstance(names, list) and names else cls.default_moe.groups
        return upgrade_legacy_moe(args, cls.default_moe, groups_key="num_groups", per_group_key="experts_per_group")

    @property
    def num_groups(self) -> int:
        return self.moe.groups

    def configure_models(self) -> None:
        hp, multiple = self.hparams, WaveletMoERestorer.multiple
        if self.pre.multiple % multiple:
            raise ValueError(f"preprocess.multiple: expected a multiple of {multiple} (two Haar levels), "
                             f"got {self.pre.multiple}")
        self.model = WaveletMoERestorer(
            moe=self.moe, channels=hp.channels, dim=hp.dim, depth=hp.depth, hidden_dim=hp.hidden_dim,
            conv_blocks=hp.conv_blocks, mixer=hp.mixer, num_heads=hp.num_heads, drop_path=hp.drop_path)

    def configure_metrics(self) -> None:
        names, border = list(self.pre.degradation_names), self.hparams.crop_border
        self.train_metrics, self.val_metrics, self.test_metrics = (RestorationMetrics(names, border) for _ in range(3))
        classes = max(2, self.num_groups)
        self.val_routing_acc, self.test_routing_acc = (
            Accuracy(task="multiclass", num_classes=classes, ignore_index=-1) for _ in range(2))

    def class_names(self) -> list[str] | None:
        return list(self.pre.degradation_names)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """``{"image": restored [B, 3, H, W] (not clamped), "logits": per-image decision [B, G] or None}``;
        sides are reflect-padded to ``preprocess.multiple`` (test images come at full size) and the
        result cropped back; ``batch["tiled"]`` (set by predict) restores in tiles of ``preprocess.tile``
        when larger."""
        x = batch["input"]
        if batch.get("tiled"):
            image, logits = self.model.restore_tiled(x, self.pre.tile, self.pre.overlap)
        else:
            H, W, m = x.shape[-2], x.shape[-1], self.pre.multiple
            image = self.model(reflect_pad(x, -(-H // m) * m, -(-W // m) * m))[..., :H, :W]
            logits = self.model.last_logits
        return {"image": image, "logits": logits}

    def _labels(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """Group label per image (``degradation % num_groups``, -1 unknown), or None."""
        deg = batch.get("degradation")
        return None if deg is None else torch.where(deg >= 0, deg % self.num_groups, -1)

    def task_loss(self, output: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        diff = output["image"] - batch["target"]
        if self.hparams.loss == "l1":
            loss = diff.abs().mean()
        else:
            loss = torch.sqrt(diff * diff + CHARBONNIER_EPS**2).mean()
        labels, layer_logits = self._labels(batch), self.model.group_logits()
        if self.hparams.degradation_loss_weight and labels is not None and layer_logits:
            # a sum over the labelled images / their count: no host sync, 0 when none is labelled
            known = (labels >= 0).sum().clamp_min(1)
            ce = torch.stack([F.cross_entropy(g, labels, ignore_index=-1, reduction="sum") / known
                              for g in layer_logits]).mean()
            loss = loss + self.hparams.degradation_loss_weight * ce
        return loss

    def update_metrics(self, split: str, output: dict[str, Any], batch: dict[str, Any]) -> None:
        pred = output["image"].detach().clamp(0, 1)  # what predict returns
        deg = batch.get("degradation")
        self.split_metrics(split).update(pred, batch["target"], deg, batch.get("sigma"))
        labels, logits = self._labels(batch), output["logits"]
        acc = getattr(self, f"{split}_routing_acc", None)
        if acc is not None and logits is not None and labels is not None:
            acc.update(logits.detach().argmax(-1), labels)
        if split == "val" and self.collect_figures and deg is not None:
            self._collect_figure_data(batch, pred, logits, deg)

    def _collect_figure_data(self, batch: dict[str, Any], pred: torch.Tensor, logits: torch.Tensor | None,
                             deg: torch.Tensor) -> None:
        samples = self.__dict__.setdefault("_val_samples", {})
        deg_cpu = deg.cpu()
        for i, d in enumerate(deg_cpu.tolist()):
            if d >= 0 and d not in samples:  # the first image of each degradation type: centre crops
                H, W = pred.shape[-2:]
                top, left = max(0, (H - FIGURE_CROP) // 2), max(0, (W - FIGURE_CROP) // 2)
                crop = (..., slice(top, top + FIGURE_CROP), slice(left, left + FIGURE_CROP))
                samples[d] = tuple(t[i][crop].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
                                   for t in (batch["input"], pred, batch["target"]))
        if logits is not None:
            D, G = len(self.pre.degradation_names), logits.shape[-1]
            table = self.__dict__.setdefault("_val_choice", torch.zeros(D, G))
            known = (deg_cpu >= 0) & (deg_cpu < D)
            choice = logits.detach().argmax(-1).cpu()
            table.index_put_((deg_cpu[known], choice[known]), torch.ones(int(known.sum())), accumulate=True)

    def _log_metrics(self, split: str, log: bool = True) -> None:
        super()._log_metrics(split, log)
        acc = getattr(self, f"{split}_routing_acc", None)
        if acc is not None and acc.update_called:
            if log:
                self.log(f"{split}/degradation_routing_acc", acc.compute())
            acc.reset()

    def routing_classes(self, batch: dict[str, Any]) -> torch.Tensor | None:
        deg = batch.get("degradation")
        return None if deg is None else deg.clamp_min(0)

    def validation_figures(self) -> dict[str, Any]:
        """Degraded / restored / clean crops per degradation type, and the router's group choice per type."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        samples = self.__dict__.pop("_val_samples", {})
        table = self.__dict__.pop("_val_choice", None)
        names, figures = list(self.pre.degradation_names), {}
        if samples:
            fig, axes = plt.subplots(len(samples), 3, figsize=(7, 2.4 * len(samples)), squeeze=False)
            for row, d in enumerate(sorted(samples)):
                for col, (title, img) in enumerate(zip(("degraded", "restored", "clean"), samples[d])):
                    axes[row, col].imshow(img)
                    axes[row, col].set_title(f"{names[d] if d < len(names) else d}: {title}", fontsize=8)
                    axes[row, col].axis("off")
            fig.tight_layout()
            figures["restoration_samples"] = fig
        if table is not None and table.sum() > 0:
            share = table / table.sum(1, keepdim=True).clamp_min(1)
            fig, ax = plt.subplots(figsize=(1.5 + 0.5 * table.shape[1], 1 + 0.4 * table.shape[0]))
            im = ax.imshow(share.numpy(), vmin=0, vmax=1, cmap="viridis")
            ax.set_xlabel("expert group chosen")
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_xticks(range(table.shape[1]))
            fig.colorbar(im, ax=ax, label="share of images")
            fig.tight_layout()
            figures["degradation_x_group"] = fig
        return figures

    # ------------------------------------------------------------------ inference
    def predict(self, image: np.ndarray | torch.Tensor | str | os.PathLike) -> dict[str, Any]:
        """Restore ``image`` and recognise its degradation.

        Args:
            image: a numpy array ``[H, W]``, ``[H, W, C]`` or ``[N, H, W, C]``; a torch tensor
                ``[H, W]``, ``[C, H, W]`` or ``[N, C, H, W]``; or a PNG/JPEG path. C is 1 (gray),
                3 (RGB) or 4 (RGBA, alpha returned unchanged); uint8, uint16 or float in [0, 1].
                Any size: sides are reflect-padded to ``preprocess.multiple``; images larger than
                ``preprocess.tile`` are restored in overlapping tiles, with one degradation
                decision per image.

        Returns ``{"image": restored (the input's type, layout, size, dtype and range; an array
        for a path), "degradation": name (a list for a batch; None for a dense model),
        "probability": its probability}``.
        """
        return super().predict(image)

    def prepare_inputs(self, image: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return prepare_image(self.pre, image)

    def finish_outputs(self, output: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        return finish_image(self.pre, output, context)
