"""The PDE data's settings that travel with a model, and the encoding of physical parameters.

``PDEPreprocess`` is decided by the data (:class:`~mmoe.datamodules.pde.PDEDataModule.preprocess`)
and travels with the weights (zoo metadata, checkpoint hyper-parameters), so a loaded model maps
inputs and outputs between physical units and its training units exactly as its datamodule did.
:data:`FAMILY_PARAMETERS` and :func:`encode_parameter` are the one place where a physical
parameter (heat's ``nu``, advection's ``velocity``...) becomes an input channel: the generator
and ``PDETask.predict`` both call them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

@dataclass(frozen=True)
class ParameterSpec:
    """One physical parameter of a family and where it goes in the input.

    Args:
        name: the keyword ``predict`` takes (``nu``, ``eps2``, ``velocity``).
        channels: input channels (1-based: channel 0 is the field) holding its components.
        scale: ``"log"``: mapped to [1, 2] on a log scale within the family's range;
            ``"linear"``: stored as is.
        meaning: what it is, with units, for error messages and docs.
    """

    name: str
    channels: tuple[int, ...]
    scale: Literal["log", "linear"]
    meaning: str


#: family -> its physical parameters; fields of one ``dim`` share one channel layout, so a
#: channel belongs to one parameter of one family and is 0 for the others.
FAMILY_PARAMETERS: dict[str, tuple[ParameterSpec, ...]] = {
    "darcy": (),
    "heat": (ParameterSpec("nu", (1,), "log", "diffusivity (domain lengths^2 per time unit)"),),
    "allen_cahn": (ParameterSpec("eps2", (2,), "log", "interface energy eps^2 (domain lengths^2)"),),
    "advection": (ParameterSpec("velocity", (3, 4), "linear", "velocity (c_x, c_y) in domain lengths per time unit"),),
    "burgers": (ParameterSpec("nu", (1,), "log", "viscosity (domain lengths^2 per time unit)"),),
}

#: families on periodic domains: predict resamples them spectrally between grids
PERIODIC_FAMILIES = frozenset({"heat", "advection", "allen_cahn", "burgers"})

#: the embedded data's parameter ranges (also part of its generation cache key)
EMBEDDED_PARAMETER_RANGES: dict[str, dict[str, list[float]]] = {
    "heat": {"nu": [3e-3, 3e-2]},
    "allen_cahn": {"eps2": [1e-3, 4e-3]},
    "advection": {"velocity": [-1.0, 1.0]},
    "burgers": {"nu": [2e-3, 5e-2]},
}


def encode_parameter(spec: ParameterSpec, values: np.ndarray, value_range: list[float]) -> np.ndarray:
    """Physical values ``[N, len(spec.channels)]`` -> their input-channel values (same shape)."""
    values = np.asarray(values, dtype=np.float64)
    if spec.scale == "linear":
        return values
    lo, hi = math.log(value_range[0]), math.log(value_range[1])
    return 1.0 + (np.log(values) - lo) / (hi - lo)


def decode_parameter(spec: ParameterSpec, encoded: np.ndarray, value_range: list[float]) -> np.ndarray:
    """The inverse of :func:`encode_parameter`."""
    encoded = np.asarray(encoded, dtype=np.float64)
    if spec.scale == "linear":
        return encoded
    lo, hi = math.log(value_range[0]), math.log(value_range[1])
    return np.exp(lo + (encoded - 1.0) * (hi - lo))


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
        parameter_ranges: family -> parameter name -> the ``[low, high]`` range it was trained on
            (the defaults are the embedded data's; a log-scale parameter's range also fixes its encoding).
    """

    spatial_dims: int = 2
    in_channels: int = 5
    out_channels: int = 1
    family_names: list[str] = field(default_factory=lambda: list(DEFAULT_FAMILIES))
    resolution: int | None = 32
    input_scale: dict[str, float] = field(default_factory=lambda: {"darcy": 12.0})
    target_scale: dict[str, float] = field(default_factory=lambda: {"darcy": 0.01})
    parameter_ranges: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {f: {k: list(v) for k, v in r.items()} for f, r in EMBEDDED_PARAMETER_RANGES.items()})

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
        self.parameter_ranges = _check_ranges(self.parameter_ranges, names)

    def scales(self, family: str | None) -> tuple[float, float]:
        """``(input_scale, target_scale)`` of ``family`` (1, 1 for None)."""
        if family is None:
            return 1.0, 1.0
        return float(self.input_scale.get(family, 1.0)), float(self.target_scale.get(family, 1.0))

    def parameters(self, family: str) -> tuple[ParameterSpec, ...]:
        """The physical parameters of ``family`` this model takes (none for unknown families)."""
        return FAMILY_PARAMETERS.get(family, ()) if family in self.family_names else ()

    @property
    def units_differ(self) -> bool:
        """Whether some family was trained in other units than its physical ones."""
        return any(v != 1.0 for v in (*self.input_scale.values(), *self.target_scale.values()))


def _check_ranges(ranges: object, names: list[str]) -> dict[str, dict[str, list[float]]]:
    """``preprocess.parameter_ranges`` checked; families not in ``names`` dropped."""
    def bad(why: str) -> ValueError:
        return ValueError(f"preprocess.parameter_ranges: {why}, got {ranges!r}")

    if not isinstance(ranges, dict):
        raise bad("expected family name -> {parameter name -> [low, high]}")
    out: dict[str, dict[str, list[float]]] = {}
    for fam, params in ranges.items():
        if fam not in names:
            continue
        specs = {s.name: s for s in FAMILY_PARAMETERS.get(fam, ())}
        if not isinstance(params, dict) or set(params) != set(specs):
            raise bad(f"family {fam!r} expected parameters {sorted(specs)}")
        out[fam] = {}
        for name, r in params.items():
            if (not isinstance(r, (list, tuple)) or len(r) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in r)
                    or not r[0] < r[1] or (specs[name].scale == "log" and r[0] <= 0)):
                raise bad(f"{fam}.{name} expected [low, high] with low < high (low > 0 on a log scale)")
            out[fam][name] = [float(r[0]), float(r[1])]
    missing = [f for f in names if FAMILY_PARAMETERS.get(f) and f not in out]
    if missing:
        raise bad(f"families {missing} have parameters but no ranges")
    return out
