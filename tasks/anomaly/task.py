"""AnomalyTask: medical image anomaly detection with proxy tasks routed to experts (:mod:`.model`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from mmoe.datamodules.anomaly.preprocess import AnomalyPreprocess
from mmoe.tasks.anomaly.io import check_decision, finish_maps, prepare_images
from mmoe.tasks.anomaly.metrics import AnomalyMetrics
from mmoe.tasks.anomaly.model import ANOMALY_MOE, DEFAULT_FPR, DEFAULT_PIXEL_FPR, PROXY_TASKS, ProxyTaskMoE
from mmoe.tasks.anomaly.writer import AnomalyWriter
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
    (per modality and task: mean and standard deviation), and their image scores and map pixels give
    the decision thresholds at each false-positive rate, all stored in the model's buffers. At the
    start of every validation the feature bank is filled from the datamodule's normal training
    images (``reference_dataloader``), before the validation images are scored.

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
        bank_size: tokens per modality in the feature memory bank (0: no feature-distance map).
        bank_tasks: proxy-task passes whose token features the bank holds (None: pseudo_seg and denoise).
        knn_share: share of the feature-distance map in the anomaly map, in [0, 1].
        modality_loss_weight: weight of the modality head's loss.
        aux_loss_weight: weight of the MoE auxiliary losses. log_routing: log routing stats and maps.
    """

    monitor = "val/loss"
    mode = "min"
    prediction_writer = AnomalyWriter
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
        bank_size: int = 2048,
        bank_tasks: list[str] | None = None,
        knn_share: float = 0.5,
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
        check_positive_int("bank_size", bank_size, minimum=0)
        unmasked = [t for t in (tasks or PROXY_TASKS) if t != "inpaint"]
        if bank_tasks is not None and (not isinstance(bank_tasks, (list, tuple)) or not bank_tasks
                                       or any(t not in unmasked for t in bank_tasks)):
            raise ValueError(f"bank_tasks: expected a non-empty subset of {unmasked} (unmasked passes), got {bank_tasks!r}")
        if bank_size and bank_tasks is None and not {"pseudo_seg", "denoise"} & set(unmasked):
            raise ValueError(f"bank_tasks: the default (pseudo_seg, denoise) is not among tasks={tasks}; name the passes")
        if not 0 <= check_number("knn_share", knn_share) <= 1:
            raise ValueError(f"knn_share: expected a value in [0, 1], got {knn_share!r}")
        super().__init__(aux_loss_weight=aux_loss_weight, log_routing=log_routing)
        self._calib: dict[str, torch.Tensor] | None = None
        self._normal_maps: list[tuple[torch.Tensor, torch.Tensor]] = []

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
            smooth_sigma=hp.smooth_sigma, top_fraction=hp.top_fraction, map_tasks=hp.map_tasks,
            bank_size=hp.bank_size, bank_tasks=hp.bank_tasks, knn_share=hp.knn_share)

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
    #: normal validation images per modality kept for the thresholds (their raw maps, on the CPU)
    MAX_THRESHOLD_IMAGES = 512

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
        kept = sum(len(m) for m, _ in self._normal_maps)
        if kept < self.MAX_THRESHOLD_IMAGES * M:
            self._normal_maps.append((mods.cpu(), task_maps[normal].detach().float().cpu()))

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (a no-op in one process): buffers a validation sets from
        rank-local work stay identical across ranks."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.world_size <= 1:
            return tensor
        return trainer.strategy.broadcast(tensor, src=0).to(tensor.device)

    def _apply_calibration(self) -> None:
        c, self._calib = self._calib, None
        normal_maps, self._normal_maps = self._normal_maps, []
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
        self._set_thresholds(normal_maps)

    def _set_thresholds(self, normal_maps: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per modality, the thresholds from the normal validation images' calibrated maps (this rank's
        images; rank 0's tables are then shared, so every rank holds the same)."""
        if normal_maps:
            mods = torch.cat([m for m, _ in normal_maps])
            raw = torch.cat([r for _, r in normal_maps])
            dev = self.model.calib_mean.device
            for m in mods.unique().tolist():
                sel = raw[mods == m].to(dev, self.model.calib_mean.dtype)
                mod = torch.full((len(sel),), m, dtype=torch.long, device=dev)
                amap = self.model.combine(sel, mod)
                self.model.set_thresholds(self.model.image_score(amap), amap.flatten(), m)
        for name in ("score_table", "pixel_table", "table_ready"):
            getattr(self.model, name).copy_(self._broadcast(getattr(self.model, name)))

    @torch.no_grad()
    def fill_bank(self, loader: Any) -> None:
        """Fill the feature bank from the normal images of ``loader`` (batches with ``image`` and
        ``modality``; in a Trainer, the datamodule's ``reference_dataloader``)."""
        if not self.model.bank_tasks:
            return
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        feats: dict[int, list[torch.Tensor]] = {}
        try:
            for batch in loader:
                f = self.model.bank_features(batch["image"].to(device, self.model.bank.dtype))
                for i, m in enumerate(batch["modality"].tolist()):
                    feats.setdefault(int(m), []).append(f[i])
            for m, fs in sorted(feats.items()):
                self.model.fill_bank(torch.cat(fs), m)
        finally:
            self.train(was)
        for name in ("bank", "bank_ready"):
            getattr(self.model, name).copy_(self._broadcast(getattr(self.model, name)))

    @torch.no_grad()
    def calibrate(self, loader: Any, reference: Any = None) -> None:
        """Outside a Trainer: fill the feature bank from the normal images of ``reference`` (when
        given), then calibrate the anomaly map and the thresholds on the normal images
        (``label == 0``) of ``loader`` (batches as the datamodule's)."""
        if reference is not None:
            self.fill_bank(reference)
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            for batch in loader:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                raw, _, _ = self.model.raw_maps(batch["image"], batch["modality"])
                self._accumulate_calibration(raw, batch)
            self._apply_calibration()
        finally:
            self.train(was)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._calib, self._normal_maps = None, []
        dm = getattr(self.trainer, "datamodule", None)
        if self.model.bank_tasks and hasattr(dm, "reference_dataloader"):
            self.fill_bank(dm.reference_dataloader())

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
                modality: str | list[str] | None = None, *, fpr: float | None = None,
                pixel_fpr: float | None = None, threshold: float | None = None,
                pixel_threshold: float | None = None,
                window: tuple[float, float] | str | None = None) -> dict[str, Any]:
        """Anomaly score, map and decisions per image, slice or volume.

        Args:
            images: one image, a batch, a volume or a list of images. Layout rule
                (:mod:`mmoe.inputs.image`): numpy is channels-last (``[H, W]`` greyscale, ``[H, W, C]``,
                ``[N, H, W, C]``), torch is channels-first (``[H, W]``, ``[C, H, W]``, ``[N, C, H, W]``),
                C in 1, 3, 4; a stack of greyscale slices is numpy ``[N, H, W, 1]`` or torch ``[N, 1, H, W]``.
                Or a path: PNG/JPEG/TIFF image, DICOM file (single- or multi-frame), NIfTI ``.nii``/``.nii.gz``
                (a slice or a volume) or a folder holding one DICOM series (sorted by slice position).
                Files are refused above 8192 x 8192 pixels over all frames/slices, read from the header
                before decoding. Greyscale of any integer or float dtype is mapped to [0, 1] by its
                0.5/99.5 percentiles per image or slice (as in training); colour is uint8/uint16 or float
                in [0, 1].
            modality: a name from ``preprocess.modality_names`` (one for all, or one per image), or None:
                the modality head's prediction per image or slice.
            fpr: image-level false-positive rate of ``is_anomalous`` on normal validation images (default
                0.01); the threshold is interpolated from the model's stored table. Not with ``threshold``.
            pixel_fpr: pixel-level false-positive rate of ``mask`` (default 0.01). Not with ``pixel_threshold``.
            threshold: an explicit image-score threshold instead of ``fpr``.
            pixel_threshold: an explicit map threshold for ``mask`` instead of ``pixel_fpr``.
            window: greyscale only: map values by a fixed ``(low, high)`` to [0, 1] instead of the
                percentiles; DICOM is then read in Hounsfield units (RescaleSlope/Intercept) and a name from
                :data:`mmoe.tasks.anomaly.io.CT_WINDOWS` (brain (0, 80), subdural, soft_tissue (-160, 240),
                liver, lung (-1350, 150), bone) may be given. The model was trained on percentile-mapped
                images: a window changes what it sees; use it when the percentiles of a slice mislead
                (e.g. a slice that is mostly air).

        Returns, for one image: ``score`` (float; the mean of the map's top 1% pixels), ``map`` (float32
        ``[H, W]`` at the input's size, in standard deviations of normal validation maps), ``is_anomalous``
        (bool: ``score > threshold``), ``mask`` (bool ``[H, W]``: ``map > pixel_threshold``),
        ``modality`` (name), ``threshold`` and ``pixel_threshold`` (the values used). A batch or list
        gives lists of each. A volume (a NIfTI volume, multi-frame DICOM or series folder) gives per
        slice ``score`` (float32 ``[N]``), ``is_anomalous`` (bool ``[N]``), ``modality`` and the
        thresholds, ``map``/``mask`` in the file's own array axes (NIfTI ``[X, Y, Z]``, DICOM ``[N, H, W]``
        in position order), and ``volume_score`` (the highest slice score) and ``volume_is_anomalous``.
        A model without thresholds for the modality (not calibrated) gives None for ``is_anomalous`` and
        ``mask`` unless ``threshold``/``pixel_threshold`` are given.
        """
        return super().predict(images, modality, fpr=fpr, pixel_fpr=pixel_fpr, threshold=threshold,
                               pixel_threshold=pixel_threshold, window=window)

    def prepare_inputs(self, images: Any, modality: Any = None, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        decision = check_decision(options.get("fpr"), options.get("pixel_fpr"), options.get("threshold"),
                                  options.get("pixel_threshold"))
        batch, context = prepare_images(self.pre, images, modality, options.get("window"))
        context["decision"] = decision
        return batch, context

    def finish_outputs(self, output: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        d = context["decision"]
        mod = output["modality"]
        thr, pix = self.model.thresholds(mod, d["fpr"] or DEFAULT_FPR, d["pixel_fpr"] or DEFAULT_PIXEL_FPR)
        if d["threshold"] is not None:
            thr = torch.full_like(thr, d["threshold"])
        if d["pixel_threshold"] is not None:
            pix = torch.full_like(pix, d["pixel_threshold"])
        return finish_maps(self.pre, output, context, (thr, pix))
