"""Input checks shared by the public entry points: clear errors naming the argument."""

from __future__ import annotations

import torch


def check_tensor(name: str, value: object, *, last_dim: int | None = None, min_ndim: int = 1) -> torch.Tensor:
    """Raise TypeError/ValueError unless ``value`` is a finite float tensor of the expected shape."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if value.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dims, got shape {tuple(value.shape)}")
    if last_dim is not None and value.shape[-1] != last_dim:
        raise ValueError(f"{name}: expected last dim {last_dim}, got shape {tuple(value.shape)}")
    if value.numel() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: contains NaN or inf (shape {tuple(value.shape)})")
    return value


def check_ids(name: str, value: object, *, shape: tuple[int, ...], num: int) -> torch.Tensor:
    """Raise unless ``value`` is an integer tensor of ``shape`` with entries in ``[0, num)``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected an integer torch.Tensor, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {value.dtype}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(value.shape)}")
    if value.numel():
        lo, hi = int(value.min()), int(value.max())
        if lo < 0 or hi >= num:
            raise ValueError(f"{name}: expected ids in [0, {num}), got values in [{lo}, {hi}]")
    return value


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value  # type: ignore[return-value]
