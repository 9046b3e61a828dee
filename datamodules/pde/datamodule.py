"""PDE operator-learning data: generated families (embedded default) and PDEBench HDF5 files.

Embedded default (``path=None``): samples are produced once by the solvers in
:mod:`mmoe.datamodules.pde.solvers` and cached under ``$MMOE_HOME/data/pde/`` (default
``~/.cache/mmoe``), one ``.npz`` per family whose name carries a hash of every generation
parameter and the solver version, so changing any of them regenerates.

Families and channel layout (every family of one ``dim`` has the same channels, so one
model serves all of them; parameter channels are constant maps, zero where unused):

* 2D (``[5, H, W]`` input, ``[1, H, W]`` target), unit square, cell-centred grid:

  - ``darcy``: ``-div(a grad u) = 1``, ``u = 0`` on the boundary; ``a`` is a thresholded
    Gaussian random field taking 12 or 3. Input channel 0 is ``a / 12``; target ``u / 0.01``
    (RMS about 0.9; the scales are stored, see :attr:`PDEDataModule.normalization`).
  - ``heat``: ``u_t = nu lap u`` (periodic), ``u0 -> u(1)``, ``nu`` log-uniform in [3e-3, 3e-2].
  - ``advection``: ``u_t + c.grad u = 0`` (periodic), ``u0 -> u(0.5)``, ``c`` uniform in [-1, 1]^2.
  - ``allen_cahn``: ``u_t = eps2 lap u + u - u^3`` (periodic), ``u0 -> u(2)``, ``eps2``
    log-uniform in [1e-3, 4e-3]; solved on a 64^2 (or finer) grid and sampled spectrally.

  Channel 0: ``a / 12`` (darcy) or ``u0`` (unit-variance random field). Channel 1: heat
  ``nu`` and channel 2: allen_cahn ``eps2``, each mapped to [1, 2] on a log scale within its
  range (0 for the other families). Channels 3, 4: advection velocity ``(c_x, c_y)``.

* 1D (``[2, X]`` input, ``[1, X]`` target): ``burgers``, ``u_t + (u^2/2)_x = nu u_xx``
  (periodic), ``u0 -> u(1)``, ``nu`` log-uniform in [2e-3, 5e-2], solved on 1024 points and
  sampled at ``resolution`` points. Channel 0: ``u0``; channel 1: ``nu`` mapped to [1, 2].

Real data (``path`` given): PDEBench HDF5 files as distributed; input/target have one
channel each, values are left as stored, and ``family`` is -1.

* 1D: dataset ``tensor`` ``[N, T, X]``; input ``tensor[:, 0]``, target
  ``tensor[:, target_time_index]``.
* 2D Darcy: datasets ``nu`` ``[N, H, W]`` (input) and ``tensor`` ``[N, 1, H, W]`` (target).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm.auto import tqdm

from mmoe.datamodules.base import MMoEDataModule
from mmoe.datamodules.pde import predict_files
from mmoe.datamodules.pde import solvers as S
from mmoe.datamodules.pde.preprocess import (EMBEDDED_PARAMETER_RANGES as RANGES, FAMILY_PARAMETERS,
                                             PDEPreprocess, encode_parameter)

FAMILIES: dict[int, tuple[str, ...]] = {2: ("darcy", "heat", "advection", "allen_cahn"), 1: ("burgers",)}
IN_CHANNELS: dict[int, int] = {2: 5, 1: 2}
DEFAULT_RESOLUTION: dict[int, int] = {2: 32, 1: 128}
MIN_RESOLUTION = 16  # the 2D random fields use modes |n| <= 7, which a 16-point grid resolves
# Files up to this size are read whole; larger ones are read one sample at a time.
IN_MEMORY_BYTES = 512 * 2**20
_CHUNK = 64  # samples solved together: bounds memory and paces the progress bar

# Every entry is part of the cache key. "grf" is (mode cutoff, alpha, tau) of the random fields.
FAMILY_PARAMS: dict[str, dict[str, Any]] = {
    "darcy": {"grf": [7, 2.0, 3.0], "a_high": 12.0, "a_low": 3.0, "forcing": 1.0, "target_scale": 0.01},
    "heat": {"grf": [7, 1.5, 3.0], "nu": RANGES["heat"]["nu"], "t_final": 1.0},
    "advection": {"grf": [7, 1.5, 3.0], "speed": RANGES["advection"]["velocity"][1], "t_final": 0.5},
    "allen_cahn": {"grf": [7, 1.5, 3.0], "eps2": RANGES["allen_cahn"]["eps2"], "t_final": 2.0, "dt": 0.05,
                   "solver_grid": 64},
    "burgers": {
        "grf": [16, 2.0, 6.0], "amplitude": 0.5, "nu": RANGES["burgers"]["nu"], "t_final": 1.0, "cfl": 0.8,
        "solver_grid": 1024,
    },
}
_ALL_FAMILIES = FAMILIES[2] + FAMILIES[1]


def default_cache_dir() -> Path:
    """``$MMOE_HOME/data/pde`` with ``MMOE_HOME`` defaulting to ``~/.cache/mmoe``."""
    home = os.environ.get("MMOE_HOME") or os.path.join("~", ".cache", "mmoe")
    return Path(home).expanduser() / "data" / "pde"


# ---------------------------------------------------------------------------------------
# Generation and cache
# ---------------------------------------------------------------------------------------
def generate_family(
    family: str, num_samples: int, resolution: int, seed: int, progress: bool = True
) -> dict[str, Any]:
    """Solve ``num_samples`` problems of ``family``; returns float32 arrays ``field``
    ``[N, *grid]`` (input channel 0), ``params`` ``[N, C-1]`` (constant channels), ``target``
    ``[N, *grid]``, and ``meta`` (normalization, parameter ranges, grid). Random draws are
    made up front from ``(seed, family)``, so chunking does not change the data, and the
    random fields are Fourier series, so another ``resolution`` samples the same functions
    (Darcy excepted: its finite-difference solution depends on the grid)."""
    p = FAMILY_PARAMS[family]
    dim = 1 if family in FAMILIES[1] else 2
    rng = np.random.default_rng([seed, _ALL_FAMILIES.index(family)])
    cutoff, alpha, tau = p["grf"]
    coeffs = S.grf_coefficients(rng, num_samples, dim, int(cutoff), alpha, tau)
    modes = [np.arange(-cutoff, cutoff + 1)] * dim
    grid = [S.cell_centres(resolution)] * dim
    fine = [S.cell_centres(max(p.get("solver_grid", resolution), resolution))] * dim
    # Each physical parameter has its own channel, so families with alike inputs (heat and
    # Allen-Cahn both start from a random field) stay distinguishable; the encoding (log-scale
    # parameters mapped to [1, 2] within their range, absent ones 0) is the one predict uses.
    params = np.zeros((num_samples, IN_CHANNELS[dim] - 1))
    for spec in FAMILY_PARAMETERS[family]:
        lo, hi = RANGES[family][spec.name]
        if spec.scale == "log":
            coef = np.exp(rng.uniform(np.log(lo), np.log(hi), size=num_samples))
        else:
            coef = rng.uniform(lo, hi, size=(num_samples, len(spec.channels)))
        params[:, [c - 1 for c in spec.channels]] = encode_parameter(spec, coef.reshape(num_samples, -1), [lo, hi])

    if family == "burgers":  # one time step for all chunks, from the largest |u0|
        u0_max = p["amplitude"] * np.abs(S.eval_fourier(coeffs, modes, fine)).max()
        dt = p["cfl"] / (len(fine[0]) * u0_max)
    field = np.empty((num_samples,) + (resolution,) * dim)
    target = np.empty_like(field)
    # scipy.fft threads help the 2D spectral solves; the result does not depend on them.
    desc = f"solving {family} ({resolution}^{dim})"
    with S.sfft.set_workers(min(4, os.cpu_count() or 1)), \
            tqdm(total=num_samples, desc=desc, unit="sample", disable=not progress) as bar:
        for start in range(0, num_samples, _CHUNK):
            sl = slice(start, min(start + _CHUNK, num_samples))
            c = coeffs[sl]
            if family == "darcy":
                a = np.where(S.eval_fourier(c, modes, grid) >= 0, p["a_high"], p["a_low"])
                field[sl], target[sl] = a, S.solve_darcy(a, p["forcing"])
            elif family == "heat":
                field[sl] = S.eval_fourier(c, modes, grid)
                target[sl] = S.heat_periodic(field[sl], coef[sl], p["t_final"])
            elif family == "advection":
                field[sl] = S.eval_fourier(c, modes, grid)
                target[sl] = S.advect_periodic(field[sl], coef[sl], p["t_final"])
            elif family == "allen_cahn":
                field[sl] = S.eval_fourier(c, modes, grid)
                u = S.allen_cahn_periodic(S.eval_fourier(c, modes, fine), coef[sl], p["t_final"], p["dt"])
                target[sl] = S.periodic_interpolate(u, grid)
            else:  # burgers
                field[sl] = p["amplitude"] * S.eval_fourier(c, modes, grid)
                u0 = p["amplitude"] * S.eval_fourier(c, modes, fine)
                u = S.burgers_periodic(u0, coef[sl], p["t_final"], dt=dt)
                target[sl] = S.periodic_interpolate(u, grid)
            bar.update(sl.stop - sl.start)

    input_scale, target_scale = unit_scales(family)
    meta = {
        "family": family, "dim": dim, "resolution": resolution, "num_samples": num_samples, "seed": seed,
        "params": p, "solver_version": S.SOLVER_VERSION, "input_scale": input_scale,
        "target_scale": target_scale, "grid": "cell centres (i + 1/2) / resolution on [0, 1]",
    }
    return {
        "field": (field / input_scale).astype(np.float32),
        "params": params.astype(np.float32),
        "target": (target / target_scale).astype(np.float32),
        "meta": meta,
    }


def cache_key(family: str, num_samples: int, resolution: int, seed: int) -> str:
    """Hash of every generation parameter and the solver version."""
    spec = {
        "family": family, "num_samples": num_samples, "resolution": resolution, "seed": seed,
        "params": FAMILY_PARAMS[family], "solver_version": S.SOLVER_VERSION, "format": 2,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(family: str, num_samples: int, resolution: int, seed: int, cache_dir: str | Path) -> Path:
    key = cache_key(family, num_samples, resolution, seed)
    return Path(cache_dir) / f"{family}_r{resolution}_n{num_samples}_s{seed}_{key}.npz"


def load_or_generate(
    family: str, num_samples: int, resolution: int, seed: int, cache_dir: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Read the family's cache file, generating and writing it (temp file + rename) if absent."""
    path = cache_path(family, num_samples, resolution, seed, cache_dir)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in ("field", "params", "target")} | {"meta": json.loads(str(z["meta"]))}
        except (OSError, ValueError, KeyError):
            pass  # unreadable (e.g. truncated by a full disk): regenerate below
    data = generate_family(family, num_samples, resolution, seed, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, field=data["field"], params=data["params"], target=data["target"],
                     meta=np.array(json.dumps(data["meta"])))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache should be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data


def unit_scales(family: str) -> tuple[float, float]:
    """``(input_scale, target_scale)``: stored = physical / scale. Darcy pressure is ~1e-2, so it
    is scaled to O(1); the scales are constants, not data statistics, so they agree across
    resolutions and travel with a model (``PDEPreprocess``)."""
    if family == "darcy":
        p = FAMILY_PARAMS["darcy"]
        return float(p["a_high"]), float(p["target_scale"])
    return 1.0, 1.0


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------
class GeneratedPDEDataset(Dataset):
    """Generated samples of one family; parameter channels are broadcast on access."""

    def __init__(self, field: np.ndarray, params: np.ndarray, target: np.ndarray, family: int) -> None:
        self.field = torch.from_numpy(np.ascontiguousarray(field))
        self.params = torch.from_numpy(np.ascontiguousarray(params))
        self.target = torch.from_numpy(np.ascontiguousarray(target))
        self.family = torch.tensor(family, dtype=torch.long)

    def __len__(self) -> int:
        return self.field.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        f = self.field[i]
        maps = self.params[i].view(-1, *([1] * f.ndim)).expand(-1, *f.shape)
        return {"input": torch.cat([f[None], maps]), "target": self.target[i][None], "family": self.family}


def inspect_pdebench(path: str, arg: str, dim: int) -> tuple[int, int | None, tuple[int, ...]]:
    """Check that ``path`` is a PDEBench file of the ``dim``-D layout; return
    ``(num_samples, num_times or None, spatial shape)``. Errors name the argument ``arg``."""
    if not os.path.isfile(path):
        raise ValueError(f"{arg}: file not found: {path!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{arg}: cannot read {path!r} as HDF5 ({e})") from None
    with f:
        need = ("tensor",) if dim == 1 else ("nu", "tensor")
        missing = [k for k in need if not isinstance(f.get(k), h5py.Dataset)]
        if missing:
            raise ValueError(
                f"{arg}: {path!r} lacks dataset(s) {missing} of the PDEBench {dim}D layout "
                f"(expected {list(need)}); found {sorted(f.keys())}"
            )
        t = f["tensor"]
        if dim == 1:
            if t.ndim != 3 or 0 in t.shape:
                raise ValueError(
                    f"{arg}: dataset 'tensor' in {path!r} must be non-empty [N, T, X], got shape {t.shape}"
                )
            return t.shape[0], t.shape[1], tuple(t.shape[2:])
        nu = f["nu"]
        if nu.ndim != 3 or 0 in nu.shape:
            raise ValueError(f"{arg}: dataset 'nu' in {path!r} must be non-empty [N, H, W], got shape {nu.shape}")
        if t.shape != (nu.shape[0], 1) + nu.shape[1:]:
            raise ValueError(
                f"{arg}: dataset 'tensor' in {path!r} must be [N, 1, H, W] = {(nu.shape[0], 1) + nu.shape[1:]} "
                f"to match 'nu' {nu.shape}, got shape {t.shape}"
            )
        return nu.shape[0], None, tuple(nu.shape[1:])


class PDEBenchDataset(Dataset):
    """Samples ``indices`` of a PDEBench file (layout checked by :func:`inspect_pdebench`).

    Files up to :data:`IN_MEMORY_BYTES` are read whole; larger ones are opened lazily, once
    per process (so each DataLoader worker gets its own handle), and read one sample at a time.
    """

    def __init__(self, path: str, dim: int, indices: np.ndarray, target_time_index: int = -1,
                 in_memory: bool | None = None) -> None:
        self.path, self.dim, self.t_index = path, dim, target_time_index
        self.indices = np.asarray(indices, dtype=np.int64)
        if in_memory is None:
            in_memory = os.path.getsize(path) <= IN_MEMORY_BYTES
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._arrays: tuple[torch.Tensor, torch.Tensor] | None = None
        if in_memory:
            with h5py.File(path, "r") as f:
                if dim == 1:
                    x, y = f["tensor"][:, 0], f["tensor"][:, target_time_index]
                else:
                    x, y = f["nu"][:], f["tensor"][:, 0]
            self._arrays = tuple(torch.from_numpy(np.asarray(a[self.indices], dtype=np.float32)) for a in (x, y))

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_file": None, "_pid": None}  # h5py handles do not pickle

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._arrays is not None:
            x, y = self._arrays[0][i], self._arrays[1][i]
        else:
            if self._file is None or self._pid != os.getpid():  # a forked worker reopens
                self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
            j = int(self.indices[i])
            if self.dim == 1:
                x, y = self._file["tensor"][j, 0], self._file["tensor"][j, self.t_index]
            else:
                x, y = self._file["nu"][j], self._file["tensor"][j, 0]
            x, y = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (x, y))
        return {"input": x[None], "target": y[None], "family": torch.tensor(-1, dtype=torch.long)}


def split_indices(
    n: int, test_fraction: float, val_fraction: float, seed: int, stream: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, val, test)`` indices of ``n`` samples: test is the last ``round(test_fraction
    * n)``; val a seeded random ``round(val_fraction * n)`` of the rest."""
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    perm = np.random.default_rng([seed, stream]).permutation(n - n_test)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val]), np.arange(n - n_test, n)


# ---------------------------------------------------------------------------------------
# DataModule
# ---------------------------------------------------------------------------------------
class PDEDataModule(MMoEDataModule):
    """Operator-learning batches ``{"input": [B, C, *grid], "target": [B, 1, *grid],
    "family": [B] long}`` from generated families (``path=None``) or a PDEBench file.

    Args:
        path: PDEBench HDF5 file; ``None`` uses the embedded generated families.
        test_path: separate PDEBench test file; without it the last ``test_fraction`` of
            ``path`` is the test split.
        spatial_dims: 1 (Burgers / PDEBench 1D) or 2 (the 2D families / PDEBench Darcy).
        families: embedded families to include (default all of ``spatial_dims``); labels
            always index :attr:`family_names`, the full list for it, so they stay stable.
        num_samples_per_family: generated samples per family (embedded only).
        resolution: grid points per axis of the generated data; default 32 (2D), 128 (1D).
        test_fraction, val_fraction: fractions of all samples (per family when generated).
        batch_size, num_workers: DataLoader settings.
        seed: seeds generation and splits.
        cache_dir: where generated files live; default ``$MMOE_HOME/data/pde``.
        target_time_index: PDEBench 1D time index used as the target (default the last).
        predict_path: ``mmoe predict``'s input: an ``.npz``/``.npy`` file or a folder of them
            (:mod:`mmoe.datamodules.pde.predict_files`); None: the inputs of the test split.

    Attributes ``family_names``, ``in_channels`` and ``out_channels`` are set at
    construction; ``normalization`` (family -> input/target scales) after :meth:`setup`.
    """

    def __init__(
        self,
        path: str | None = None,
        test_path: str | None = None,
        spatial_dims: int = 2,
        families: list[str] | None = None,
        num_samples_per_family: int = 256,
        resolution: int | None = None,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        target_time_index: int = -1,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        dim = spatial_dims
        if dim not in (1, 2) or isinstance(dim, bool):
            raise ValueError(f"spatial_dims: expected 1 or 2, got {dim!r}")
        for name, value, lo in (("num_samples_per_family", num_samples_per_family, 1), ("batch_size", batch_size, 1),
                                ("num_workers", num_workers, 0), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {value!r}")
        resolution = DEFAULT_RESOLUTION[dim] if resolution is None else resolution
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < MIN_RESOLUTION:
            raise ValueError(f"resolution: expected an integer >= {MIN_RESOLUTION}, got {resolution!r}")
        for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
        if families is None:
            families = list(FAMILIES[dim])
        bad = [f for f in families if f not in FAMILIES[dim]] if isinstance(families, (list, tuple)) else families
        if bad or not families or len(set(families)) != len(families):
            raise ValueError(
                f"families: expected distinct names from {list(FAMILIES[dim])} for spatial_dims={dim}, got {families!r}"
            )
        if test_path is not None and path is None:
            raise ValueError("test_path: given without path (the embedded default has its own test split)")
        self.save_hyperparameters()
        self.dim, self.families, self.resolution = dim, list(families), resolution
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.family_names: list[str] = list(FAMILIES[dim]) if path is None else []
        self.in_channels: int = IN_CHANNELS[dim] if path is None else 1
        self.out_channels: int = 1
        self.normalization: dict[str, dict[str, float]] = {}
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

        # Check files and split sizes now, so a bad config fails at construction.
        if path is not None:
            n, n_times, _ = inspect_pdebench(path, "path", dim)
            if test_path is not None:
                _, n_times_test, _ = inspect_pdebench(test_path, "test_path", dim)
                n_times = min(n_times, n_times_test) if n_times is not None else None
            if n_times is not None and not -n_times <= target_time_index < n_times:
                raise ValueError(
                    f"target_time_index: expected an index into {n_times} time steps, got {target_time_index}"
                )
        else:
            n = num_samples_per_family
        tf = 0.0 if test_path is not None else test_fraction
        n_train = n - round(tf * n) - round(val_fraction * n)
        if n_train < 1 or (test_path is None and round(tf * n) < 1):
            arg = "num_samples_per_family" if path is None else "path"
            raise ValueError(
                f"{arg}: {n} samples with test_fraction={test_fraction}, val_fraction={val_fraction} "
                f"leave {n_train} for training and {round(tf * n)} for test; need at least 1 each"
            )

    @property
    def preprocess(self) -> PDEPreprocess:
        """The settings the model takes from the data (the CLI links them to ``model.preprocess``)."""
        if self.hparams.path is None:
            scales = {f: unit_scales(f) for f in self.family_names}
            return PDEPreprocess(self.dim, self.in_channels, self.out_channels, list(self.family_names),
                                 self.resolution, {f: s[0] for f, s in scales.items() if s[0] != 1.0},
                                 {f: s[1] for f, s in scales.items() if s[1] != 1.0},
                                 {f: RANGES[f] for f in self.family_names if f in RANGES})
        _, _, shape = inspect_pdebench(self.hparams.path, "path", self.dim)
        return PDEPreprocess(self.dim, self.in_channels, self.out_channels, [], int(shape[0]))

    # -- data ------------------------------------------------------------------------------
    def _load_family(self, family: str) -> dict[str, Any]:
        return load_or_generate(family, self.hparams.num_samples_per_family, self.resolution, self.hparams.seed,
                                self.cache_dir)

    def prepare_data(self) -> None:
        """Generate missing cache files (Lightning calls this on one process per node)."""
        if self.hparams.path is None:
            for family in self.families:
                self._load_family(family)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        hp = self.hparams
        if hp.path is None:
            parts: dict[str, list[Dataset]] = {"train": [], "val": [], "test": []}
            for family in self.families:
                data = self._load_family(family)
                fid = self.family_names.index(family)
                meta = data["meta"]
                self.normalization[family] = {"input_scale": meta["input_scale"], "target_scale": meta["target_scale"]}
                splits = split_indices(len(data["field"]), hp.test_fraction, hp.val_fraction, hp.seed, fid)
                for name, idx in zip(("train", "val", "test"), splits):
                    parts[name].append(GeneratedPDEDataset(data["field"][idx], data["params"][idx],
                                                           data["target"][idx], fid))
            self.train_dataset, self.val_dataset, self.test_dataset = (ConcatDataset(parts[k]) for k in parts)
            return
        n, _, _ = inspect_pdebench(hp.path, "path", self.dim)
        train, val, test = split_indices(n, 0.0 if hp.test_path else hp.test_fraction, hp.val_fraction, hp.seed)
        self.train_dataset = PDEBenchDataset(hp.path, self.dim, train, hp.target_time_index)
        self.val_dataset = PDEBenchDataset(hp.path, self.dim, val, hp.target_time_index)
        if hp.test_path is not None:
            n_test, _, _ = inspect_pdebench(hp.test_path, "test_path", self.dim)
            test = np.arange(n_test)
        self.test_dataset = PDEBenchDataset(hp.test_path or hp.path, self.dim, test, hp.target_time_index)

    def to_physical(self, target: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
        """Map stored targets ``[B, 1, *grid]`` back to physical units (identity for family -1)."""
        # One extra trailing entry of 1 so that family -1 (unknown) indexes it.
        scales = torch.ones(len(self.family_names) + 1, dtype=target.dtype, device=target.device)
        for name, norm in self.normalization.items():
            scales[self.family_names.index(name)] = norm["target_scale"]
        return target * scales[family].view(-1, *([1] * (target.ndim - 1)))

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("PDEDataModule: call setup() before requesting a dataloader")
        return self.loader(dataset, shuffle=shuffle,
                           generator=torch.Generator().manual_seed(self.hparams.seed) if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, False)

    predict_suffixes = predict_files.SUFFIXES

    def predict_file_inputs(self, path: Path) -> dict[str, Any]:
        return predict_files.read_field_file(path)

    def predict_split(self) -> tuple[Dataset, Any, None]:
        if self.test_dataset is None:
            self.setup("test")
        names = self.family_names

        def inputs(sample: dict[str, Any]) -> dict[str, Any]:
            fid = int(sample["family"])
            return {"field": sample["input"][None], "family": names[fid] if 0 <= fid < len(names) else None}

        return self.test_dataset, inputs, None
