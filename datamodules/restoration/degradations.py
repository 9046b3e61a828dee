"""Synthetic degradations for all-in-one restoration: pure numpy functions on RGB images.

Every function takes a float32 ``[H, W, 3]`` image in [0, 1] and a ``numpy.random.Generator``
and returns a new float32 image in [0, 1] of the same shape; parameters left as ``None`` are
drawn from the ranges in the docstrings, so the same generator state gives the same output.
:func:`degrade` dispatches on the degradation names of :mod:`mmoe.datamodules.restoration.preprocess`.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom
from scipy.signal import fftconvolve

#: noise levels (0-255 scale) of the all-in-one denoising benchmarks
NOISE_SIGMAS: tuple[int, int, int] = (15, 25, 50)
DEGRADATION_NAMES: tuple[str, ...] = ("denoise", "derain", "dehaze", "deblur", "lowlight")


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        got = image.shape if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image: expected an [H, W, 3] numpy array, got {got}")
    return image.astype(np.float32, copy=False)


def _quantize(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to the 8-bit grid, as a saved degraded image would be."""
    return (np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel of ``[H, W, C]`` (or ``[H, W]``) with an odd-sized 2D kernel, edges
    reflected. FFT-based because streak and blur kernels reach 35 px on full-size test images."""
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    pad = ((ph, ph), (pw, pw)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image, pad, mode="reflect" if min(image.shape[:2]) > max(ph, pw) else "edge")
    k = kernel if image.ndim == 2 else kernel[:, :, None]
    return fftconvolve(padded, k, mode="valid", axes=(0, 1)).astype(np.float32)


def _splat(points: np.ndarray) -> np.ndarray:
    """Kernel of odd size holding ``points`` ``[N, 2]`` (x right, y down, relative to the centre),
    each spread bilinearly over its four neighbouring pixels (anti-aliased trajectory)."""
    half = int(np.ceil(np.abs(points).max())) + 1
    size = 2 * half + 1
    x, y = points[:, 0] + half, points[:, 1] + half
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    kernel = np.zeros((size, size))
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    return kernel


def line_kernel(length: float, angle: float) -> np.ndarray:
    """Anti-aliased straight line of ``length`` pixels, normalised to sum 1.

    Args:
        length: line length in pixels (>= 1).
        angle: direction in degrees from vertical; positive turns the lower end to the right.
    """
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, max(2, int(4 * length)))
    a = np.deg2rad(angle)
    kernel = _splat(np.stack([t * np.sin(a), t * np.cos(a)], axis=1))
    return kernel / kernel.sum()


# ---------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------
def add_noise(image: np.ndarray, rng: np.random.Generator, sigma: float | None = None) -> np.ndarray:
    """Additive white Gaussian noise as in the all-in-one benchmarks (AirNet, PromptIR).

    Noise of standard deviation ``sigma`` is added on the 0-255 scale, independently per pixel
    and channel; the result is clipped to [0, 255] and rounded to uint8 levels.

    Args:
        image: float32 ``[H, W, 3]`` in [0, 1].
        rng: source of randomness.
        sigma: noise level on the 0-255 scale; ``None`` draws one of 15, 25, 50 uniformly.
    """
    image = _check_image(image)
    if sigma is None:
        sigma = float(rng.choice(NOISE_SIGMAS))
    noisy = image * 255.0 + rng.standard_normal(image.shape) * float(sigma)
    return _quantize(noisy / 255.0)


# ---------------------------------------------------------------------------------------
# Rain
# ---------------------------------------------------------------------------------------
def add_rain(
    image: np.ndarray,
    rng: np.random.Generator,
    angle: float | None = None,
    density: float | None = None,
    length: float | None = None,
    layers: int | None = None,
) -> np.ndarray:
    """Rain streaks: sparse random drops smeared along a direction, added to the image.

    Each layer places drops at a fraction ``density`` of the pixels (brightness uniform in
    [0.4, 1]) and convolves them with a line of ``length`` pixels (sum normalised to the
    length, so a streak keeps its drop's brightness); the layer is clipped to [0, 1], scaled
    by a per-layer opacity uniform in [0.4, 0.8] and added to every channel (rain is white),
    then the image is clipped to [0, 1].

    Args:
        image: float32 ``[H, W, 3]`` in [0, 1].
        rng: source of randomness.
        angle: streak direction in degrees from vertical (positive: lower end to the right);
            ``None`` draws it uniformly in [-30, 30]. Layers deviate from it by up to 5 degrees
            when it is drawn, and not at all when it is given.
        density: fraction of pixels that start a streak, per layer; ``None`` draws uniformly
            in [0.0005, 0.005] per layer.
        length: streak length in pixels; ``None`` draws uniformly in [10, 35] per layer.
        layers: number of streak layers; ``None`` draws 1, 2 or 3.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    jitter = 5.0 if angle is None else 0.0
    angle = rng.uniform(-30.0, 30.0) if angle is None else float(angle)
    layers = int(rng.integers(1, 4)) if layers is None else int(layers)
    rain = np.zeros((h, w), dtype=np.float32)
    for _ in range(layers):
        d = rng.uniform(0.0005, 0.005) if density is None else float(density)
        n = rng.uniform(10.0, 35.0) if length is None else float(length)
        a = angle + rng.uniform(-jitter, jitter)
        drops = (rng.random((h, w)) < d) * rng.uniform(0.4, 1.0, size=(h, w))
        streaks = np.clip(_convolve(drops.astype(np.float32), line_kernel(n, a) * n), 0.0, 1.0)
        rain += rng.uniform(0.4, 0.8) * streaks
    return np.clip(image + rain[:, :, None], 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Haze
# ---------------------------------------------------------------------------------------
def random_depth(shape: tuple[int, int], rng: np.random.Generator, cells: int = 3) -> np.ndarray:
    """Smooth random depth field in [0, 1] (larger is farther) for images without a depth map.

    Half a vertical ramp (the top of a photograph is usually farther away) and half a random
    ``cells`` x ``cells`` grid upsampled cubically to ``shape``, rescaled to [0, 1].

    Args:
        shape: ``(H, W)`` of the field.
        rng: source of randomness.
        cells: resolution of the random grid (more cells: faster depth changes).
    """
    h, w = shape
    coarse = rng.random((cells, cells))
    field = zoom(coarse, (h / cells, w / cells), order=3, mode="nearest", grid_mode=True)[:h, :w]
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    depth = 0.5 * np.linspace(1.0, 0.0, h)[:, None] + 0.5 * field
    return ((depth - depth.min()) / max(float(np.ptp(depth)), 1e-6)).astype(np.float32)


def add_haze(
    image: np.ndarray,
    rng: np.random.Generator,
    depth: np.ndarray | None = None,
    beta: float | None = None,
    airlight: float | None = None,
) -> np.ndarray:
    """Atmospheric scattering model ``I = J t + A (1 - t)`` with ``t = exp(-beta * depth)``.

    Args:
        image: the clear scene ``J``, float32 ``[H, W, 3]`` in [0, 1].
        rng: source of randomness.
        depth: ``[H, W]`` scene depth normalised to [0, 1] (larger is farther); ``None`` uses
            :func:`random_depth`.
        beta: scattering coefficient; ``None`` draws uniformly in [0.5, 2.0] (transmission at
            the farthest point between 0.61 and 0.14).
        airlight: atmospheric light ``A`` (grey, the same for all channels); ``None`` draws
            uniformly in [0.7, 1.0], the RESIDE range.
    """
    image = _check_image(image)
    if depth is None:
        depth = random_depth(image.shape[:2], rng)
    elif depth.shape != image.shape[:2]:
        raise ValueError(f"depth: expected shape {image.shape[:2]} to match the image, got {depth.shape}")
    beta = rng.uniform(0.5, 2.0) if beta is None else float(beta)
    airlight = rng.uniform(0.7, 1.0) if airlight is None else float(airlight)
    t = np.exp(-beta * depth.astype(np.float64))[:, :, None]
    return np.clip(image * t + airlight * (1.0 - t), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Motion blur
# ---------------------------------------------------------------------------------------
def motion_blur_kernel(rng: np.random.Generator, length: float | None = None, curved: bool | None = None) -> np.ndarray:
    """Random camera-shake kernel: an anti-aliased trajectory, non-negative, summing to 1.

    The trajectory runs ``length`` pixels in a uniformly random direction; a curved one is a
    quadratic Bezier curve whose control point is pushed sideways by up to a third of the
    length (points are uniform in the curve parameter, so the speed varies along it, as a
    hand's does).

    Args:
        rng: source of randomness.
        length: end-to-end length in pixels; ``None`` draws uniformly in [5, 17].
        curved: curved or straight; ``None`` draws either with probability 1/2.
    """
    length = rng.uniform(5.0, 17.0) if length is None else float(length)
    curved = bool(rng.random() < 0.5) if curved is None else curved
    a = rng.uniform(0.0, np.pi)
    direction, normal = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    p0, p2 = -direction * length / 2, direction * length / 2
    p1 = normal * (rng.uniform(-length / 3, length / 3) if curved else 0.0)
    t = np.linspace(0.0, 1.0, max(8, int(8 * length)))[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    kernel = _splat(points)
    return (kernel / kernel.sum()).astype(np.float32)


def add_motion_blur(image: np.ndarray, rng: np.random.Generator, kernel: np.ndarray | None = None) -> np.ndarray:
    """Motion blur: each channel convolved with a normalised kernel (edges reflected).

    Args:
        image: float32 ``[H, W, 3]`` in [0, 1].
        rng: source of randomness.
        kernel: odd-sized 2D kernel; ``None`` draws one with :func:`motion_blur_kernel`.
    """
    image = _check_image(image)
    kernel = motion_blur_kernel(rng) if kernel is None else np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"kernel: expected an odd-sized 2D array, got shape {kernel.shape}")
    return np.clip(_convolve(image, kernel), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Low light
# ---------------------------------------------------------------------------------------
def add_low_light(
    image: np.ndarray,
    rng: np.random.Generator,
    gamma: float | None = None,
    gain: float | None = None,
    photons: float | None = None,
    read_noise: float | None = None,
) -> np.ndarray:
    """Under-exposure: ``gain * image ** gamma``, then shot and read noise, saved as 8 bits.

    Shot noise is Poisson with ``photons`` expected counts at value 1 (so it grows with the
    signal); read noise is Gaussian; the result is clipped and rounded to uint8 levels like a
    camera's output.

    Args:
        image: float32 ``[H, W, 3]`` in [0, 1].
        rng: source of randomness.
        gamma: exponent > 1 (darkens mid-tones most); ``None`` draws uniformly in [1.5, 2.5].
        gain: exposure factor < 1; ``None`` draws uniformly in [0.25, 0.6].
        photons: photon count at full scale; ``None`` draws log-uniformly in [100, 1000].
        read_noise: read-noise std on the [0, 1] scale; ``None`` draws uniformly in [0.002, 0.01].
    """
    image = _check_image(image)
    gamma = rng.uniform(1.5, 2.5) if gamma is None else float(gamma)
    gain = rng.uniform(0.25, 0.6) if gain is None else float(gain)
    photons = float(np.exp(rng.uniform(np.log(100.0), np.log(1000.0)))) if photons is None else float(photons)
    read_noise = rng.uniform(0.002, 0.01) if read_noise is None else float(read_noise)
    dark = gain * np.power(image.astype(np.float64), gamma)
    noisy = rng.poisson(dark * photons) / photons + rng.standard_normal(image.shape) * read_noise
    return _quantize(noisy)


# ---------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------
def degrade(
    name: str,
    image: np.ndarray,
    rng: np.random.Generator,
    depth: np.ndarray | None = None,
    sigma: float | None = None,
) -> tuple[np.ndarray, float]:
    """Apply the degradation ``name``; returns ``(degraded image, noise sigma)``.

    Args:
        name: one of ``denoise``, ``derain``, ``dehaze``, ``deblur``, ``lowlight``.
        image: float32 ``[H, W, 3]`` in [0, 1].
        rng: source of randomness.
        depth: ``[H, W]`` depth in [0, 1] for ``dehaze`` (``None``: a random smooth field).
        sigma: noise level (0-255 scale) for ``denoise``; ``None`` draws from 15, 25, 50.

    The returned sigma is the noise level used for ``denoise`` and 0.0 otherwise.
    """
    if name == "denoise":
        sigma = float(rng.choice(NOISE_SIGMAS)) if sigma is None else float(sigma)
        return add_noise(image, rng, sigma), sigma
    if name == "derain":
        return add_rain(image, rng), 0.0
    if name == "dehaze":
        return add_haze(image, rng, depth), 0.0
    if name == "deblur":
        return add_motion_blur(image, rng), 0.0
    if name == "lowlight":
        return add_low_light(image, rng), 0.0
    raise ValueError(f"name: expected one of {DEGRADATION_NAMES}, got {name!r}")
