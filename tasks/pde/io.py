"""What PDE predict needs: the preprocessing config and the input/output functions.

``PDEPreprocess`` travels with the weights (zoo metadata, checkpoint hyper-parameters), so a
loaded model maps inputs and outputs between physical units and its training units exactly as
its datamodule did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

DEFAULT_FAMILIES = ["darcy", "heat", "advection", "allen_cahn"]


@dataclass
class PDEPreprocess:
    """Data settings of a PDE model (provided by ``PDEDataModule.preprocess``).

    Args:
        spatial_dims: 1 or 2.
        in_channels: input channels (channel 0 is the field, the others parameter maps).
        out_channels: output channels.
        family_names: PDE families in label order (empty for unlabelled data such as PDEBench files).
        resolution: grid points per axis of the training data; the operator computes on it
            (None: on whatever grid comes in).
        input_scale: family -> the factor channel 0 was divided by in training (missing: 1;
            the defaults are the embedded data's; families not in ``family_names`` are dropped).
        target_scale: family -> the factor the target was divided by in training (missing: 1).
    """

    spatial_dims: int = 2
    in_channels: int = 5
    out_channels: int = 1
    family_names: list[str] = field(default_factory=lambda: list(DEFAULT_FAMILIES))
    resolution: int | None = 32
    input_scale: dict[str, float] = field(default_factory=lambda: {"darcy": 12.0})
    target_scale: dict[str, float] = field(default_factory=lambda: {"darcy": 0.01})

    def __post_init__(self) -> None:
        if self.spatial_dims not in (1, 2) or isinstance(self.spatial_dims, bool):
            raise ValueError(f"preprocess.spatial_dims: expected 1 or 2, got {self.spatial_dims!r}")
        for name in ("in_channels", "out_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"preprocess.{name}: expected an int >= 1, got {v!r}")
        if self.resolution is not None and (isinstance(self.resolution, bool) or not isinstance(self.resolution, int)
                                            or self.resolution < 1):
            raise ValueError(f"preprocess.resolution: expected None or an int >= 1, got {self.resolution!r}")
        names = self.family_names
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ValueError(f"preprocess.family_names: expected a list of distinct names, got {names!r}")
        for kind in ("input_scale", "target_scale"):
            scales = getattr(self, kind)
            if not isinstance(scales, dict) or not all(
                    isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) and v > 0 for k, v in scales.items()):
                raise ValueError(f"preprocess.{kind}: expected family name -> finite scale > 0, got {scales!r}")
            # scales of families this model does not know are dropped (e.g. a subset of families)
            setattr(self, kind, {k: float(v) for k, v in scales.items() if k in names})

    def scales(self, family: str | None) -> tuple[float, float]:
        """``(input_scale, target_scale)`` of ``family`` (1, 1 for None)."""
        if family is None:
            return 1.0, 1.0
        return float(self.input_scale.get(family, 1.0)), float(self.target_scale.get(family, 1.0))

    @property
    def units_differ(self) -> bool:
        """Whether some family was trained in other units than its physical ones."""
        return any(v != 1.0 for v in (*self.input_scale.values(), *self.target_scale.values()))


def prepare_field(pre: PDEPreprocess, patch_size: int, field_: Any, family: str | None
                  ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Check a predict input and bring it to the model's layout and units.

    Returns the batch ``{"input": [N, C, *grid]}`` and the context ``finish_field`` needs.
    """
    is_numpy = isinstance(field_, np.ndarray)
    if not is_numpy and not isinstance(field_, torch.Tensor):
        raise TypeError(f"field: expected a numpy array or torch.Tensor, got {type(field_).__name__}")
    x = torch.as_tensor(field_)
    if not (x.is_floating_point() or x.dtype in (torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"field: expected real numbers, got dtype {x.dtype}")
    d, C = pre.spatial_dims, pre.in_channels
    if x.ndim not in (d, d + 1, d + 2):
        shapes = {1: "[X], [N, X] or [N, C, X]", 2: "[H, W], [N, H, W] or [N, C, H, W]"}[d]
        raise ValueError(f"field: expected {shapes}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"field: expected a non-empty array, got shape {tuple(x.shape)}")
    if x.ndim == d + 2 and x.shape[1] != C:
        raise ValueError(f"field: expected {C} channels (dim 1), got shape {tuple(x.shape)}")
    if min(x.shape[-d:]) < patch_size:
        raise ValueError(f"field: expected spatial size >= {patch_size}, got shape {tuple(x.shape)}")
    x64 = x.double()
    if not bool(torch.isfinite(x64).all()):
        raise ValueError(f"field: contains NaN or inf (shape {tuple(x.shape)})")
    if family is not None and family not in pre.family_names:
        raise ValueError(f"family: expected one of {pre.family_names} or None, got {family!r}")
    if family is None and pre.units_differ:
        raise ValueError(
            f"family: this model's families were trained in different units (input scales {pre.input_scale}, "
            f"target scales {pre.target_scale}); pass family= one of {pre.family_names} so that the field is "
            "read and the solution returned in physical units")
    in_scale, target_scale = pre.scales(family)
    layout = x.ndim
    x = x64.float()
    if layout == d:
        x = x.unsqueeze(0)
    if layout <= d + 1:
        x = torch.cat([x.unsqueeze(1), x.new_zeros(x.shape[0], C - 1, *x.shape[1:])], dim=1)
    x = x.clone()
    x[:, 0] /= in_scale
    context = {"layout": layout, "numpy": is_numpy, "device": None if is_numpy else field_.device,
               "target_scale": target_scale}
    return {"input": x}, context


def finish_field(pre: PDEPreprocess, y: torch.Tensor, context: dict[str, Any]) -> np.ndarray | torch.Tensor:
    """Model output ``[N, C_out, *grid]`` -> the input's layout, physical units and array type."""
    d, layout = pre.spatial_dims, context["layout"]
    y = y.float() * context["target_scale"]
    if layout <= d + 1:
        y = y[:, 0]
    if layout == d:
        y = y[0]
    return y.cpu().numpy() if context["numpy"] else y.to(context["device"])
