"""Input checks shared by the public entry points: clear errors naming the argument."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

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


def check_number(name: str, value: object, *, minimum: float = 0.0, inclusive: bool = True) -> float:
    """Raise unless ``value`` is a finite real number (not a bool) ``>= minimum`` (``> minimum`` if not inclusive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        bound = ">=" if inclusive else ">"
        raise ValueError(f"{name}: expected a finite number {bound} {minimum}, got {value!r}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return value


def check_options(name: str, options: object, cls: Callable[..., object], owner: str,
                  fixed: tuple[str, ...]) -> dict[str, Any]:
    """``options`` as a dict, after checking that ``cls`` accepts each key as a keyword.

    ``name`` is the argument that carried the options (e.g. ``router_options``), ``owner`` says
    whose options they are (e.g. ``router 'nested'``) and ``fixed`` lists the constructor
    arguments that are not options (e.g. ``dim``).
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{name}: expected a mapping of option name -> value, got {type(options).__name__}")
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(options)
    accepted = [p.name for p in params
                if p.name not in fixed and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ValueError(f"{name}: {owner} does not accept {unknown}; it accepts "
                         f"{accepted if accepted else 'no options'}")
    return dict(options)
