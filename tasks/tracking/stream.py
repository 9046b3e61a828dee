"""Streaming tracking: ``tracker = task.track(first_frame, init_box, x)``, then
``box, confidence = tracker.update(frame, x)`` once per frame (as OpenCV's and pytracking's
``init`` / ``update``).

A :class:`Tracker` holds a bounded state whatever the number of frames: the template crops (RGB
and X), the box of the last frame, the box the next search is centred on and two counters; no
frame or box history. ``TrackingTask.predict`` and the validation/test loops are this loop over
a sequence (:func:`track_sequence`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmoe.progress import predict_progress
from mmoe.datamodules.tracking.crops import crop_around
from mmoe.tasks.tracking.io import TrackingPreprocess, as_float_frame, check_box, clip_boxes, rgb_frame
from mmoe.tasks.tracking.model import X_KINDS, decode_boxes

if TYPE_CHECKING:
    from mmoe.tasks.tracking.task import TrackingTask

X_MODALITIES: tuple[str, ...] = tuple(k for k in X_KINDS if k is not None)


def resolve_modality(pre: TrackingPreprocess, prompt: bool, modality: Any) -> str | None:
    """The X kind a tracker reads its X frames as: ``modality``, or ``pre.modality`` when None.

    Args:
        pre: the model's preprocessing (``pre.modality``: the X it was trained with, None for RGB only).
        prompt: whether the model has the modality prompt (one model for every X).
        modality: the caller's ``"depth"``, ``"thermal"``, ``"event"`` or None.

    A model without the prompt knows one X: another one would be read as that one and fail
    silently, so it is refused here. An RGB-only model ignores X and its kind.
    """
    if modality is not None and modality not in X_MODALITIES:
        raise ValueError(f"modality: expected one of {X_MODALITIES} or None, got {modality!r}")
    if pre.modality is None:
        return None
    if modality is not None and not prompt and modality != pre.modality:
        raise ValueError(f"modality: this model was trained with X = {pre.modality!r} only (it would read "
                         f"{modality} frames as {pre.modality}); expected {pre.modality!r} or None, got {modality!r}")
    return modality or pre.modality


class Tracker:
    """One target followed frame by frame; made by :meth:`TrackingTask.track`.

    Args:
        task: the tracker's model (its weights, preprocessing and inference options).
        first_frame: the first RGB frame ``[H, W, 3]``, uint8 or float in [0, 1] (array or tensor).
        init_box: the target in it, ``(x, y, w, h)`` pixels.
        x: the first X frame ``[H, W]`` (uint8, uint16 depth in millimetres, or float in [0, 1]), or
            None to track from RGB alone; ignored by an RGB-only model.
        modality: the kind of X (``"depth"``, ``"thermal"``, ``"event"``); None: the model's own
            (``preprocess.modality``). A model without the modality prompt accepts only its own.

    Attributes: ``box`` (the last box, xywh float64, inside the frame), ``confidence`` (its
    score, 1.0 at the first frame), ``index`` (frames seen, minus one), ``size`` ``(H, W)``.
    """

    def __init__(self, task: TrackingTask, first_frame: Any, init_box: Any, x: Any = None,
                 modality: str | None = None) -> None:
        pre = task.pre
        self.task, self.pre = task, pre
        box = check_box(init_box)
        rgb = self._rgb(first_frame, "first_frame")
        H, W = rgb.shape[:2]
        if min(H, W) < 2:
            raise ValueError(f"first_frame: expected a frame of at least 2x2 pixels, got {(H, W)}")
        x0, y0, w, h = box
        if x0 >= W or y0 >= H or x0 + w <= 0 or y0 + h <= 0:
            raise ValueError(f"init_box: expected a box that overlaps the {W}x{H} frame, got {tuple(box)}")
        self.size = (H, W)
        self.kind = resolve_modality(pre, bool(task.hparams.get("modality_prompt", False)), modality)
        self.uses_x = x is not None and self.kind is not None  # an RGB-only model ignores X
        param = next(p for p in task.parameters() if p.is_floating_point())
        self._device, self._dtype = param.device, param.dtype
        self._x_id = X_KINDS.index(self.kind) if self.uses_x else 0
        self.template, self.template_x = self._templates(rgb, self._x(x, "x") if self.uses_x else None, box)
        self.box, self.confidence, self.index = box.copy(), 1.0, 0
        self._centre = box.copy()  # where the next search is centred (the last confident box)
        self._last_update = 0
        hp = task.hparams
        self._update = hp.get("template_update")  # files saved before these options: off
        self._every = int(hp.get("template_update_every", 10))
        self._window = float(hp.get("window", 0.0))

    # ------------------------------------------------------------------ frames
    def _rgb(self, frame: Any, arg: str) -> np.ndarray:
        """A checked RGB frame as float32 ``[H, W, 3]`` in [0, 1]."""
        f = rgb_frame(_array(frame, arg), arg, self.pre)
        return f.astype(np.float32) / 255 if f.dtype == np.uint8 else f

    def _x(self, frame: Any, arg: str) -> np.ndarray:
        f = as_float_frame(_array(frame, arg), arg, self.pre, (1,))
        if f.shape[:2] != self.size:
            raise ValueError(f"{arg}: expected the RGB frames' size {self.size}, got {f.shape[:2]}")
        return f

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        a = a[:, :, None] if a.ndim == 2 else a
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].to(self._device, self._dtype)

    def _templates(self, rgb: np.ndarray, x: np.ndarray | None, box: np.ndarray
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pre = self.pre
        template = self._tensor(crop_around(rgb, box, pre.template_factor, pre.template_size)[0])
        template_x = self._tensor(crop_around(x, box, pre.template_factor, pre.template_size)[0]) \
            if x is not None else None
        return template, template_x

    # ------------------------------------------------------------------ tracking
    def update(self, frame: Any, x: Any = None) -> tuple[np.ndarray, float]:
        """Track the target into the next frame.

        Args:
            frame: the next RGB frame, the first frame's size and forms.
            x: its X frame when the tracker was started with X; None tracks this frame from RGB
                alone (a dropped X frame). An RGB-only model ignores it.

        Returns ``(box, confidence)``: xywh pixels (float64 ``[4]``, inside the frame) and the
        score-map probability at the chosen cell, in [0, 1].
        """
        pre, task = self.pre, self.task
        rgb = self._rgb(frame, "frame")
        if rgb.shape[:2] != self.size:
            raise ValueError(f"frame: expected the first frame's size {self.size}, got {rgb.shape[:2]}")
        if x is not None and not self.uses_x and self.kind is not None:
            raise ValueError("x: the tracker was started without X (it has no X template); start it with an X "
                             "frame to track with X, or pass x=None")
        xs = self._x(x, "x") if (x is not None and self.uses_x) else None
        search, tf = crop_around(rgb, self._centre, pre.search_factor, pre.search_size)
        search_x = self._tensor(crop_around(xs, self._centre, pre.search_factor, pre.search_size)[0]) \
            if xs is not None else None
        was_training = task.training
        if was_training:  # inference as predict runs it (MoE capacity and dropout in eval mode)
            task.eval()
        try:
            with torch.no_grad():
                if xs is not None:
                    kind = torch.full((1,), self._x_id, dtype=torch.long, device=self._device)
                    maps = task.model(self.template, self._tensor(search), self.template_x, search_x, kind)
                else:
                    maps = task.model(self.template, self._tensor(search))
                crop_box, c = decode_boxes(maps, self._window)
        finally:
            if was_training:
                task.train(True)
        b = tf.box_to_frame(crop_box[0].double().cpu().numpy() * pre.search_size)
        if not np.isfinite(b).all():
            raise ValueError("update: the model produced NaN or inf; the frame is outside the range the model "
                             "can handle (check its scale and dtype)")
        H, W = self.size
        # the search follows a box inside the frame with at least one pixel of size
        w, h = np.clip(b[2], 1, W), np.clip(b[3], 1, H)
        cx, cy = np.clip(b[0] + b[2] / 2, 0, W), np.clip(b[1] + b[3] / 2, 0, H)
        b = np.array([cx - w / 2, cy - h / 2, w, h])
        self.index += 1
        self.confidence = float(c[0])
        if self.confidence >= task.hparams.lost_threshold:
            self._centre = b
        if (self._update is not None and self.confidence >= self._update
                and self.index - self._last_update >= self._every and (xs is not None or not self.uses_x)):
            self.template, self.template_x = self._templates(rgb, xs, b)
            self._last_update = self.index
        self.box = clip_boxes(b, self.size)
        return self.box.copy(), self.confidence


def _array(frame: Any, arg: str) -> np.ndarray:
    if isinstance(frame, torch.Tensor):
        return frame.detach().cpu().numpy()
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"{arg}: expected a numpy array or tensor, got {type(frame).__name__}")
    return frame


def track_sequence(task: TrackingTask, frames: Any, x: Any, init_box: Any, modality: str | None = None
                   ) -> dict[str, torch.Tensor]:
    """A :class:`Tracker` over ``frames`` (indexable in order: an array, a tensor or
    :class:`~mmoe.tasks.tracking.io.LazyFrames`) and ``x`` (the same, or None) from ``init_box``:
    ``{"boxes": [N, 4] float64 pixels, "confidence": [N] float64}``, frame 0 the initial box at
    confidence 1."""
    tracker = Tracker(task, frames[0], init_box, x[0] if x is not None else None, modality)
    boxes, conf = [check_box(init_box)], [1.0]
    bar = predict_progress(len(frames) - 1, "tracking frames")
    for t in range(1, len(frames)):
        box, c = tracker.update(frames[t], x[t] if x is not None and tracker.uses_x else None)
        boxes.append(box)
        conf.append(c)
        bar.update()
    bar.close()
    return {"boxes": torch.from_numpy(np.stack(boxes)), "confidence": torch.tensor(conf, dtype=torch.float64)}
