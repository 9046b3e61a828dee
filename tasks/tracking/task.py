"""TrackingTask: single-object RGB+X tracking with the one-stream dual-MoE tracker (:mod:`.model`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import MetricCollection

from mmoe.settings import MoESettings, upgrade_legacy_moe
from mmoe.tasks.base import BaseMoETask
from mmoe.datamodules.tracking.preprocess import TrackingPreprocess
from mmoe.tasks.tracking.io import finish_sequence, prepare_sequence
from mmoe.tasks.tracking.metrics import NormalizedPrecision, PrecisionAt, RGBDFScore, SuccessAUC, box_iou
from mmoe.tasks.tracking.model import TRACKING_MOE, OneStreamMoETracker, tracking_loss
from mmoe.tasks.tracking.stream import Tracker, resolve_modality, track_sequence
from mmoe.tasks.tracking.writer import TrackingWriter
from mmoe.validation import check_number, check_positive_int

#: frames shown in the validation strip
STRIP_FRAMES = 6


class TrackingTask(BaseMoETask):
    """Single-object tracking: trained on template/search pairs, validated and tested by
    tracking whole sequences from the first frame's box.

    Training batches: ``template``, ``search`` (RGB crops), ``template_x``, ``search_x`` (X crops),
    ``has_x``, ``box`` (the target in the search crop, xywh / S); see the datamodule. The loss is
    the centre head's focal loss plus L1 and GIoU on the box (:func:`.model.tracking_loss`). X is
    dropped for a fraction ``x_dropout`` of training batches so the model also tracks without
    it. Validation/test batches are sequences; metrics: success AUC, precision at 20 px,
    normalised precision (:mod:`.metrics`) and, with depth, the VOT-RGBD F-score.

    Args:
        preprocess: crop sizes and factors, the X modality (linked from the datamodule).
        patch_size: patch side. dim: token width. depth: backbone blocks. num_heads: attention heads.
        hidden_dim: expert hidden width.
        moe: the MoE settings (:class:`mmoe.settings.MoESettings`): router, top-k and capacity of the
            matching blocks, experts and loss weights of every MoE block; ``moe.dense`` gives the dense
            baseline with the same active width.
        slots: slots per expert of the soft-MoE fusion blocks.
        x_dropout: probability of training a batch without X.
        lost_threshold: below this confidence the next search stays centred on the last
            confident box (the target may be hidden).
        template_update: None (off) or a confidence in (0, 1): a frame tracked at least this
            confidently, ``template_update_every`` or more frames after the last update, gives the
            new template (its crop around the predicted box); the first frame's template otherwise.
        template_update_every: fewest frames between two template updates.
        window: weight in [0, 1) of a Hann-window prior on the score map at inference (the cell
            nearest the previous position wins ties; 0: off), see :func:`.model.decode_boxes`.
        modality_prompt: one model for every X: a learned embedding of the X kind (none, depth,
            thermal, event; from the batch's ``x_kind``, or predict/track's ``modality``) is added to
            every token (:class:`.model.OneStreamMoETracker`). Off: the single-X model of older files.
        aux_loss_weight: weight of the MoE auxiliary losses. log_routing: log routing stats.
    """

    monitor = "val/success_auc"
    mode = "max"
    prediction_writer = TrackingWriter
    preprocess_class = TrackingPreprocess
    default_moe = TRACKING_MOE

    def __init__(self, preprocess: TrackingPreprocess | None = None, patch_size: int = 8, dim: int = 128,
                 depth: int = 4, num_heads: int = 4, hidden_dim: int = 256,
                 moe: MoESettings = TRACKING_MOE, slots: int = 4, x_dropout: float = 0.1, lost_threshold: float = 0.2,
                 template_update: float | None = None, template_update_every: int = 10, window: float = 0.0,
                 modality_prompt: bool = False, aux_loss_weight: float = 1.0, log_routing: bool = True) -> None:
        for name, value in (("patch_size", patch_size), ("dim", dim), ("depth", depth), ("num_heads", num_heads),
                            ("hidden_dim", hidden_dim), ("slots", slots)):
            check_positive_int(name, value)
        if not 0 <= check_number("x_dropout", x_dropout) <= 1:
            raise ValueError(f"x_dropout: expected a probability in [0, 1], got {x_dropout!r}")
        if not 0 <= check_number("lost_threshold", lost_threshold) < 1:
            raise ValueError(f"lost_threshold: expected a value in [0, 1), got {lost_threshold!r}")
        if template_update is not None and not 0 < check_number("template_update", template_update) < 1:
            raise ValueError(f"template_update: expected None or a confidence in (0, 1), got {template_update!r}")
        check_positive_int("template_update_every", template_update_every)
        if not 0 <= check_number("window", window) < 1:
            raise ValueError(f"window: expected a weight in [0, 1), got {window!r}")
        if not isinstance(modality_prompt, bool):
            raise TypeError(f"modality_prompt: expected a bool, got {modality_prompt!r}")
        super().__init__(aux_loss_weight=aux_loss_weight, log_routing=log_routing)

    @classmethod
    def upgrade_init_args(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        return upgrade_legacy_moe(init_args, cls.default_moe)

    def configure_models(self) -> None:
        hp = self.hparams
        self.model = OneStreamMoETracker(
            template_size=self.pre.template_size, search_size=self.pre.search_size, patch_size=hp.patch_size,
            dim=hp.dim, depth=hp.depth, num_heads=hp.num_heads, hidden_dim=hp.hidden_dim,
            moe=self.moe, slots=hp.slots, modality_prompt=bool(hp.get("modality_prompt", False)))

    def configure_metrics(self) -> None:
        def one_pass() -> MetricCollection:
            return MetricCollection({"success_auc": SuccessAUC(), "precision": PrecisionAt(20),
                                     "norm_precision": NormalizedPrecision()})

        self.train_metrics, self.val_metrics, self.test_metrics = None, one_pass(), one_pass()
        self.val_rgbd, self.test_rgbd = RGBDFScore(), RGBDFScore()

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict[str, Any]) -> Any:
        if "frames" in batch:  # a whole sequence (validation, test, predict): from its first box
            init = batch["init_box"] if "init_box" in batch else batch["boxes"][0]
            return self.track_sequence(batch["frames"], batch.get("x"), init, batch.get("modality"))
        use_x = bool(batch["has_x"].all()) and self.pre.modality is not None
        if use_x and self.training and self.hparams.x_dropout > 0:  # modality dropout: RGB alone must track
            use_x = bool(torch.rand(()) >= self.hparams.x_dropout)
        if use_x:
            return self.model(batch["template"], batch["search"], batch["template_x"], batch["search_x"],
                              batch.get("x_kind"))
        return self.model(batch["template"], batch["search"])

    def task_loss(self, output: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        return tracking_loss(output, batch["box"])["loss"]

    def update_metrics(self, split: str, output: Any, batch: dict[str, Any]) -> None:
        """Training has no tracking metrics (pairs are not sequences)."""

    # ------------------------------------------------------------------ tracking
    def track(self, first_frame: Any, init_box: Any, x: Any = None, modality: str | None = None) -> Tracker:
        """Start following a target: ``tracker = model.track(frame, box, x)``, then
        ``box, confidence = tracker.update(next_frame, next_x)`` for every next frame.

        Args:
            first_frame: the first RGB frame ``[H, W, 3]``, uint8 or float in [0, 1] (array or tensor).
            init_box: the target in it, ``(x, y, w, h)`` in pixels.
            x: its X frame ``[H, W]`` (uint8, uint16 depth in millimetres, or float in [0, 1]), or None.
            modality: what X is (``"depth"``, ``"thermal"``, ``"event"``); None: ``preprocess.modality``.
                A model trained without ``modality_prompt`` accepts only its own.

        Returns a :class:`~mmoe.tasks.tracking.stream.Tracker` (bounded state: templates and last box).
        Inference runs without gradients and in eval mode, whatever the model's mode.
        """
        return Tracker(self, first_frame, init_box, x, modality)

    def track_sequence(self, frames: Any, x: Any, init_box: Any, modality: str | None = None
                       ) -> dict[str, torch.Tensor]:
        """Track through ``frames [N, H, W, 3]`` (uint8, or float in [0, 1]) from ``init_box``
        (xywh pixels in frame 0) with :meth:`track`; ``x [N, H, W]`` in [0, 1] or None. Returns
        ``{"boxes": [N, 4] pixels inside the frame, "confidence": [N]}`` (frame 0: the initial box,
        confidence 1)."""
        return track_sequence(self, frames, x, init_box, modality)

    def _sequence_step(self, split: str, batch: dict[str, Any]) -> None:
        boxes = batch["boxes"]
        init = boxes[0]
        if not bool(batch["present"][0]):
            raise ValueError(f"{split} sequence {batch.get('name')!r}: the target is absent in the first frame")
        out = self.track_sequence(batch["frames"], batch.get("x"), init, batch.get("modality"))
        pred, gt, present = out["boxes"], boxes.double().cpu(), batch["present"].cpu()
        self.split_metrics(split).update(pred, gt, present=present)
        if self.pre.modality == "depth" and "x" in batch:
            getattr(self, f"{split}_rgbd").update(pred, gt, out["confidence"], present)
        if split == "val" and self.collect_figures:
            store = self.__dict__.setdefault("_val_tracks", [])
            store.append((pred, gt, present))
            if len(store) == 1:  # the first sequence's frames with boxes, for the strip figure
                idx = np.linspace(0, len(pred) - 1, min(STRIP_FRAMES, len(pred))).round().astype(int)
                self.__dict__["_val_strip"] = [(batch["frames"][i].cpu().numpy(), pred[i].numpy(), gt[i].numpy(),
                                                bool(present[i])) for i in idx]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._sequence_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._sequence_step("test", batch)

    def _log_metrics(self, split: str, log: bool = True) -> None:
        super()._log_metrics(split, log)
        rgbd = getattr(self, f"{split}_rgbd", None)
        if rgbd is not None and rgbd.update_called:
            values = rgbd.compute()
            rgbd.reset()
            if log:
                for key in ("f_score", "precision", "recall"):
                    self.log(f"{split}/rgbd_{key}", values[key].float())

    def validation_figures(self) -> dict[str, Any]:
        """Success and precision plots of the validation sequences, and a strip of frames with
        predicted (red) and true (green) boxes."""
        tracks = self.__dict__.pop("_val_tracks", [])
        strip = self.__dict__.pop("_val_strip", None)
        if not tracks:
            return {}
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        figures = {}
        success, precision = SuccessAUC(), PrecisionAt(20)
        for pred, gt, present in tracks:
            success.update(pred, gt, present)
            precision.update(pred, gt, present)
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        axes[0].plot(success.thresholds.numpy(), success.curve().numpy())
        axes[0].set(xlabel="IoU threshold", ylabel="success rate", title=f"success (AUC {float(success.compute()):.3f})")
        axes[1].plot(precision.thresholds.numpy(), precision.curve().numpy())
        axes[1].set(xlabel="centre error (px)", ylabel="precision", title=f"precision@20 {float(precision.compute()):.3f}")
        fig.tight_layout()
        figures["success_precision"] = fig
        if strip:
            fig, axes = plt.subplots(1, len(strip), figsize=(2.4 * len(strip), 2.2), squeeze=False)
            for ax, (frame, p, g, present) in zip(axes[0], strip):
                ax.imshow(frame)
                ax.add_patch(Rectangle(p[:2], p[2], p[3], fill=False, color="red", lw=1.2))
                if present:
                    ax.add_patch(Rectangle(g[:2], g[2], g[3], fill=False, color="lime", lw=1.0))
                ax.set_title(f"IoU {float(box_iou(torch.tensor(p)[None], torch.tensor(g)[None])[0]):.2f}"
                             if present else "absent", fontsize=8)
                ax.axis("off")
            fig.tight_layout()
            figures["tracking_strip"] = fig
        return figures

    # ------------------------------------------------------------------ inference
    def predict(self, frames: Any, init_box: Any, x_frames: Any = None, modality: str | None = None
                ) -> dict[str, np.ndarray]:
        """Track one target through a sequence: :meth:`track` on the first frame, then its
        ``update`` on each next one (frames are read one at a time: memory does not grow with their number).

        Args:
            frames: RGB frames: a list of ``[H, W, 3]`` uint8 (or float in [0, 1]) arrays, an
                array ``[N, H, W, 3]``, a folder of images (sorted by name) or a video file.
            init_box: the target in the first frame, ``(x, y, w, h)`` in pixels.
            x_frames: the X frames, the same forms and length (depth may be 16-bit single channel,
                in millimetres), or None; ignored by an RGB-only model.
            modality: what X is (``"depth"``, ``"thermal"``, ``"event"``); None: ``preprocess.modality``.

        Returns ``{"boxes": [N, 4] (x, y, w, h pixels; the first is init_box), "confidence": [N]}``.
        """
        return super().predict(frames, init_box, x_frames, modality)

    def prepare_inputs(self, frames: Any, init_box: Any, x_frames: Any = None, modality: str | None = None
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
        # the modality is checked before any frame is read
        modality = resolve_modality(self.pre, bool(self.hparams.get("modality_prompt", False)), modality)
        batch, context = prepare_sequence(self.pre, frames, init_box, x_frames)
        batch["modality"] = modality
        return batch, context

    def finish_outputs(self, output: dict[str, torch.Tensor], context: dict[str, Any]) -> dict[str, np.ndarray]:
        return finish_sequence(output, context)
