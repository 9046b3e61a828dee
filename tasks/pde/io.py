"""What PDE predict needs: input checks, physical parameters by name, units in and out.

The preprocessing config (``PDEPreprocess``) and the parameter encoding are the data's
(:mod:`mmoe.datamodules.pde.preprocess`): predict encodes ``nu=``, ``velocity=``... with the
code that generated the training data.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from mmoe.datamodules.pde.preprocess import PERIODIC_FAMILIES, PDEPreprocess, encode_parameter

__all__ = ["PDEPreprocess", "finish_field", "parameter_maps", "prepare_field"]

def parameter_maps(pre: PDEPreprocess, family: str, num_samples: int, given: dict[str, Any]) -> torch.Tensor:
    """The parameter channels ``[N, C-1]`` of ``family`` from physical values by name.

    ``given`` maps a parameter name to a scalar (or a ``velocity`` pair) for every sample, or to
    one value per sample; missing parameters raise, values outside the training range warn.
    """
    specs = pre.parameters(family)
    names = [s.name for s in specs]
    extra = [k for k, v in given.items() if v is not None and k not in names]
    if extra:
        raise ValueError(f"{extra[0]}: family {family!r} takes {names or 'no parameters'}, got {extra[0]}=...")
    maps = np.zeros((num_samples, pre.in_channels - 1))
    for spec in specs:
        lo, hi = pre.parameter_ranges[family][spec.name]
        width = len(spec.channels)
        value = given.get(spec.name)
        if value is None:
            example = "(0.6, -0.3)" if width == 2 else f"{np.sqrt(lo * hi) if spec.scale == 'log' else (lo + hi) / 2:.3g}"
            raise ValueError(f"{spec.name}: family {family!r} needs its {spec.meaning}, trained on [{lo:g}, {hi:g}] "
                             f"(e.g. {spec.name}={example}), got none")
        v = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        if v.dtype.kind not in "fiu":
            raise TypeError(f"{spec.name}: expected real numbers, got {v.dtype} ({value!r:.60})")
        per_sample = (num_samples, width) if width > 1 else (num_samples,)
        one = (width,) if width > 1 else ()
        if v.shape not in (one, per_sample):
            raise ValueError(f"{spec.name}: expected shape {one or 'scalar'} or {per_sample} (one per sample), "
                             f"got {v.shape}")
        v = np.broadcast_to(v.astype(np.float64), per_sample).reshape(num_samples, width)
        if not np.isfinite(v).all() or (spec.scale == "log" and (v <= 0).any()):
            raise ValueError(f"{spec.name}: expected finite values{' > 0' if spec.scale == 'log' else ''}, "
                             f"got {value!r:.80}")
        if ((v < lo) | (v > hi)).any():
            warnings.warn(f"{spec.name}: values in [{v.min():g}, {v.max():g}] leave the range [{lo:g}, {hi:g}] "
                          f"the model was trained on (family {family!r}); it extrapolates there", stacklevel=4)
        maps[:, [c - 1 for c in spec.channels]] = encode_parameter(spec, v, [lo, hi])
    return torch.from_numpy(maps).float()


def prepare_field(pre: PDEPreprocess, patch_size: int, field_: Any, family: str | None,
                  parameters: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Check a predict input and bring it to the model's layout and units.

    ``parameters`` (name -> physical value, e.g. ``{"nu": 0.01}``) fill the parameter channels of
    a field without a channel axis. Returns the batch ``{"input": [N, C, *grid]}`` and the
    context ``finish_field`` needs.
    """
    parameters = {k: v for k, v in (parameters or {}).items() if v is not None}
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
    layout = x.ndim
    if layout == d + 2 and parameters:
        raise ValueError(f"{next(iter(parameters))}: a field with a channel axis carries its parameters as "
                         f"channels 1..{C - 1}; pass a field without one ({'[H, W]' if d == 2 else '[X]'} or "
                         "[N, ...]) to give them by name")
    if family is None:
        if pre.units_differ:
            raise ValueError(
                f"family: this model's families were trained in different units (input scales {pre.input_scale}, "
                f"target scales {pre.target_scale}); pass family= one of {pre.family_names} so that the field is "
                "read and the solution returned in physical units")
        if parameters:
            raise ValueError(f"family: {next(iter(parameters))}= was given, so the family must be named: "
                             f"one of {pre.family_names}, got None")
        if layout <= d + 1 and any(pre.parameters(f) for f in pre.family_names):
            raise ValueError(f"family: a field without a channel axis needs its family (one of "
                             f"{pre.family_names}) and that family's parameters by name, got None")
    in_scale, target_scale = pre.scales(family)
    x = x64.float()
    if layout == d:
        x = x.unsqueeze(0)
    if layout <= d + 1:
        maps = (parameter_maps(pre, family, x.shape[0], parameters) if family is not None
                else x.new_zeros(x.shape[0], C - 1))
        maps = maps.view(*maps.shape, *([1] * d)).expand(-1, -1, *x.shape[1:])
        x = torch.cat([x.unsqueeze(1), maps], dim=1)
    x = x.clone()
    x[:, 0] /= in_scale
    context = {"layout": layout, "numpy": is_numpy, "device": None if is_numpy else field_.device,
               "target_scale": target_scale}
    # a grid other than the training one is resampled: spectrally where the family is periodic
    resample = "spectral" if family in PERIODIC_FAMILIES else "linear"
    return {"input": x, "resample": resample}, context


def finish_field(pre: PDEPreprocess, y: torch.Tensor, context: dict[str, Any]) -> np.ndarray | torch.Tensor:
    """Model output ``[N, C_out, *grid]`` -> the input's layout, physical units and array type."""
    d, layout = pre.spatial_dims, context["layout"]
    y = y.float() * context["target_scale"]
    if layout <= d + 1:
        y = y[:, 0]
    if layout == d:
        y = y[0]
    return y.cpu().numpy() if context["numpy"] else y.to(context["device"])
