"""AnomalyTask: medical image anomaly detection with proxy tasks routed to experts (:mod:`.model`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from mmoe.tasks.anomaly.io import AnomalyPreprocess, finish_maps, prepare_images
from mmoe.tasks.anomaly.metrics import AnomalyMetrics
from mmoe.tasks.anomaly.model import ANOMALY_MOE, PROXY_TASKS, ProxyTaskMoE
from mmoe.settings import MoESettings, upgrade_legacy_moe
from mmoe.tasks.base import BaseMoETask
from mmoe.validation import check_number, check_positive_int


class AnomalyTask(BaseMoETask):
    """Anomaly detection trained on normal images only, after MTL-MAD.

    Batches (see :class:`mmoe.datamodules.anomaly.AnomalyDataModule`): ``image [B, 3, S, S]``,
    ``mask [B, 1, S, S]``, ``label``, ``has_mask``, ``modality`` and, in training,
    ``pseudo_image``/``pseudo_mask``. Training: sample ``i`` of a batch does proxy task
    ``tasks[i % len(tasks)]``; the loss is the sum of the proxy-task losses plus
    ``modality_loss_weight`` times the modality head's cross-entropy. Validation and test:
    the same losses on a fixed draw (the evaluation image and its mask stand in for the
    pseudo-anomaly), and the anomaly maps scored by :class:`.metrics.AnomalyMetrics` (validation
    holds training-style pseudo-anomalies, the test set simulated lesions). At the end of every
    validation epoch the per-task maps of the normal validation images calibrate the anomaly map
    (per modality and task: mean and standard deviation), stored in the model's buffers.

    Args:
        preprocess: the data's settings (image size, modality names); the CLI links it from the
            datamodule, a zoo file carries it. None: the embedded defaults.
        tasks: proxy tasks (names from inpaint, denoise, pseudo_seg, rotation); None: all four.
        patch: patch side in pixels. dim: token width. depth: transformer blocks.
        num_heads: attention heads. hidden_dim: hidden width of each expert.
        moe: the MoE settings (:class:`mmoe.settings.MoESettings`): by default the task-conditioned
            ``"proxy_task"`` router (one group per proxy task: ``moe.groups == len(tasks)``); any other
            registered router routes over all experts (``softmax``: learned routing); ``moe.dense``
            gives the dense baseline with the same active parameters.
        mask_ratio: share of masked tokens for inpainting. noise_std: denoising noise level.
        smooth_sigma: Gaussian smoothing of the per-task maps (pixels).
        top_fraction: the image score is the mean of this share of the map's highest pixels.
        map_tasks: proxy tasks whose standardised maps are averaged into the anomaly map (None: all of ``tasks``).
        modality_loss_weight: weight of the modality head's loss.
        aux_loss_weight: weight of the MoE auxiliary losses. log_routing: log routing stats and maps.
    """

    monitor = "val/loss"
    mode = "min"
    preprocess_class = AnomalyPreprocess
    default_moe = ANOMALY_MOE
    router_context = ("task_ids",)

    def __init__(
        self,
        preprocess: AnomalyPreprocess | None = None,
        tasks: list[str] | None = None,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        hidden_dim: int = 128,
        moe: MoESettings = ANOMALY_MOE,
        mask_ratio: float = 0.5,
        noise_std: float = 0.1,
        smooth_sigma: float = 2.0,
        top_fraction: float = 0.01,
        map_tasks: list[str] | None = None,
        modality_loss_weight: float = 0.1,
        aux_loss_weight: float = 1.0,
        log_routing: bool = True,
    ) -> None:
        if tasks is not None:
            if (not isinstance(tasks, (list, tuple)) or not tasks or len(set(tasks)) != len(tasks)
                    or any(t not in PROXY_TASKS for t in tasks)):
                raise ValueError(f"tasks: expected distinct names from {list(PROXY_TASKS)}, got {tasks!r}")
        for name, value in (("patch", patch), ("dim", dim), ("depth", depth), ("num_heads", num_heads),
                            ("hidden_dim", hidden_dim)):
            check_positive_int(name, value)
        if dim % num_heads:
            raise ValueError(f"num_heads: expected a divisor of dim={dim}, got {num_heads}")
        if not 0 < check_number("mask_ratio", mask_ratio) < 1:
            raise ValueError(f"mask_ratio: expected a value in (0, 1), got {mask_ratio!r}")
        check_number("noise_std", noise_std, inclusive=False)
        check_number("smooth_sigma", smooth_sigma)
        if not 0 < check_number("top_fraction", top_fraction) <= 1:
            raise ValueError(f"top_fraction: expected a value in (0, 1], got {top_fraction!r}")
        check_number("modality_loss_weight", modality_loss_weight)
        if map_tasks is not None and (not isinstance(map_tasks, (list, tuple)) or not map_tasks
                                      or any(t not in (tasks or PROXY_TASKS) for t in map_tasks)):
            raise ValueError(f"map_tasks: expected a non-empty subset of tasks={list(tasks or PROXY_TASKS)}, "
                             f"got {map_tasks!r}")
        super().__init__(aux_loss_weight=aux_loss_weight, log_routing=log_routing)
        self._calib: dict[str, torch.Tensor] | None = None

    @classmethod
    def upgrade_init_args(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        args = dict(init_args)
        if not any(k in args for k in ("experts_per_task", "routing", "top_k", "capacity_factor")):
            return args
        tasks = args.get("tasks") or list(PROXY_TASKS)
        routing = args.pop("routing", "task")
        top_k = args.pop("top_k", cls.default_moe.top_k)
        args["num_groups"] = len(tasks)
        args["experts_per_group"] = args.pop("experts_per_task", cls.default_moe.num_experts // cls.default_moe.groups)
        args["top_k"] = top_k + 1 if routing == "learned" else top_k  # "learned" was softmax top-(k+1)
        args = upgrade_legacy_moe(args, cls.default_moe, groups_key="num_groups", per_group_key="experts_per_group")
        args["moe"].update(router="softmax" if routing == "learned" else "proxy_task", dense=routing == "dense")
        return args

    @property
    def proxy_tasks(self) -> list[str]:
        return list(self.hparams.tasks or PROXY_TASKS)

    def configure_models(self) -> None:
        hp, pre = self.hparams, self.pre
        if pre.image_size % (4 * hp.patch):
            raise ValueError(f"preprocess.image_size: expected a multiple of 4 * patch = {4 * hp.patch}, "
                             f"got {pre.image_size}")
        self.model = ProxyTaskMoE(
            tasks=self.proxy_tasks, image_size=pre.image_size, num_modalities=len(pre.modality_names),
            patch=hp.patch, dim=hp.dim, depth=hp.depth, num_heads=hp.num_heads, hidden_dim=hp.hidden_dim,
            moe=self.moe, mask_ratio=hp.mask_ratio, noise_std=hp.noise_std,
            smooth_sigma=hp.smooth_sigma, top_fraction=hp.top_fraction, map_tasks=hp.map_tasks)

    def configure_metrics(self) -> None:
        self.val_metrics = AnomalyMetrics(self.pre.modality_names)
        self.test_metrics = AnomalyMetrics(self.pre.modality_names)

    def class_names(self) -> list[str] | None:
        return self.proxy_tasks

    def routing_classes(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The proxy task of every sample of the last backbone call (experts x proxy-task load map)."""
        return self.model.last_task_ids

    # ------------------------------------------------------------------ steps
    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Training: the proxy-task predictions. Evaluation: the anomaly maps (``map``, ``score``,
        ``task_maps``, ``modality``) and, when the batch has masks, the proxy-task predictions on a
        fixed draw for the losses."""
        if self.training:
            return self.model.training_outputs(batch)
        out: dict[str, Any] = {}
        if "mask" in batch:
            eval_batch = {**batch, "pseudo_image": batch["image"], "pseudo_mask": batch["mask"]}
            out.update(self.model.training_outputs(eval_batch, torch.Generator().manual_seed(0)))
        out.update(self.model.anomaly_maps(batch["image"], batch.get("modality")))
        return out

    def task_loss(self, output: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        eval_batch = batch if self.training else {**batch, "pseudo_image": batch["image"], "pseudo_mask": batch["mask"]}
        losses = self.model.losses(output, eval_batch)
        trainer = self._trainer
        split = "train" if self.training else "test" if trainer is not None and trainer.testing else "val"
        bs = batch["image"].shape[0]
        total = 0
        for name, value in losses.items():
            if trainer is not None and not trainer.predicting:
                self.log(f"{split}/loss_{name}", value, batch_size=bs, on_epoch=True, on_step=False)
            total = total + (self.hparams.modality_loss_weight * value if name == "modality" else value)
        return total

    def update_metrics(self, split: str, output: dict[str, Any], batch: dict[str, Any]) -> None:
        metric = self.split_metrics(split)
        if metric is None or "map" not in output:
            return
        metric.update(output["map"], output["score"], batch["mask"][:, 0], batch["label"], batch["modality"],
                      batch["has_mask"])
        if split == "val":
            self._accumulate_calibration(output["task_maps"], batch)
            if self.collect_figures:
                self._collect_figure_data(batch, output)

    # ------------------------------------------------------------------ calibration
    def _accumulate_calibration(self, task_maps: torch.Tensor, batch: dict[str, Any]) -> None:
        normal = batch["label"] == 0
        if not bool(normal.any()):
            return
        M, T = self.model.calib_mean.shape
        maps = task_maps[normal].detach().double().flatten(2)  # [b, T, P]
        mods = batch["modality"][normal]
        if self._calib is None:
            self._calib = {k: torch.zeros(M, T, dtype=torch.float64, device=maps.device) for k in ("n", "s", "ss")}
        c = self._calib
        c["n"].index_add_(0, mods, torch.full((len(mods), T), float(maps.shape[-1]), dtype=torch.float64,
                                              device=maps.device))
        c["s"].index_add_(0, mods, maps.sum(-1))
        c["ss"].index_add_(0, mods, maps.pow(2).sum(-1))

    def _apply_calibration(self) -> None:
        c, self._calib = self._calib, None
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            # every rank calibrates on the normal images of all ranks: the buffers stay identical
            M, T = self.model.calib_mean.shape
            if c is None:
                c = {k: torch.zeros(M, T, dtype=torch.float64, device=self.model.calib_mean.device)
                     for k in ("n", "s", "ss")}
            c = {k: trainer.strategy.reduce(v, reduce_op="sum") for k, v in c.items()}
        if c is None:
            return
        seen = c["n"][:, 0] > 0
        mean = c["s"] / c["n"].clamp_min(1)
        std = (c["ss"] / c["n"].clamp_min(1) - mean.pow(2)).clamp_min(0).sqrt()
        self.model.calib_mean[seen] = mean[seen].to(self.model.calib_mean.dtype)
        self.model.calib_std[seen] = std[seen].clamp_min(1e-6).to(self.model.calib_std.dtype)

    @torch.no_grad()
    def calibrate(self, loader: Any) -> None:
        """Calibrate the anomaly map on the normal images (``label == 0``) of ``loader`` (batches as the
        datamodule's), outside a Trainer."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            for batch in loader:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                raw, _ = self.model.raw_maps(batch["image"])
                self._accumulate_calibration(raw, batch)
            self._apply_calibration()
        finally:
            self.train(was)

    def on_validation_epoch_end(self) -> None:
        self._apply_calibration()  # before the checkpoint of this validation is written
        super().on_validation_epoch_end()

    # ------------------------------------------------------------------ figures
    def _collect_figure_data(self, batch: dict[str, Any], output: dict[str, Any]) -> None:
        samples = self.__dict__.setdefault("_val_samples", {})
        for i in range(batch["image"].shape[0]):
            m = int(batch["modality"][i])
            if int(batch["label"][i]) == 1 and m not in samples:
                samples[m] = (batch["image"][i].permute(1, 2, 0).float().cpu().numpy(),
                              batch["mask"][i, 0].float().cpu().numpy(), output["map"][i].float().cpu().numpy())

    def validation_figures(self) -> dict[str, Any]:
        """Image, true mask and predicted anomaly map per modality (validation pseudo-anomalies)."""
        samples = self.__dict__.pop("_val_samples", {})
        if not samples:
            return {}
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = self.pre.modality_names
        fig, axes = plt.subplots(len(samples), 3, figsize=(6.5, 2.2 * len(samples)), squeeze=False)
        for row, m in enumerate(sorted(samples)):
            for col, (title, img) in enumerate(zip(("image", "true mask", "anomaly map"), samples[m])):
                axes[row, col].imshow(img, cmap=None if img.ndim == 3 else ("gray" if col == 1 else "inferno"))
                axes[row, col].set_title(f"{names[m] if m < len(names) else m}: {title}", fontsize=8)
                axes[row, col].axis("off")
        fig.tight_layout()
        return {"anomaly_samples": fig}

    # ------------------------------------------------------------------ inference
    def predict(self, images: np.ndarray | torch.Tensor | str | os.PathLike | list,
                modality: str | list[str] | None = None) -> dict[str, Any]:
        """Anomaly score and map per image.

        Args:
            images: a numpy array ``[H, W]`` (greyscale), ``[H, W, 3]`` (colour), ``[N, H, W]`` or
                ``[N, H, W, C]``; a torch tensor ``[H, W]``, ``[C, H, W]``, ``[N, H, W]`` or
                ``[N, C, H, W]``; a PNG/JPEG or DICOM path; or a list of these (any sizes).
                Greyscale of any integer or float dtype is mapped to [0, 1] by its percentiles (as
                in training); colour is uint8/uint16 or float in [0, 1].
            modality: the images' modality (a name from ``preprocess.modality_names``, one per image,
                or None: predicted by the model's modality head).

        Returns ``{"score": float, "map": float32 [H, W] at the input's size, "modality": name}``
        (for a batch or list: lists of each). Higher is more anomalous; the map is in units of
        standard deviations of normal validation images.
        """
        return super().predict(images, modality)

    def prepare_inputs(self, images: Any, modality: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        return prepare_images(self.pre, images, modality)

    def finish_outputs(self, output: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        return finish_maps(self.pre, output, context)
