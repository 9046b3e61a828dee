"""Cheap baselines the released models must beat on the same inputs (issue 37 item 1).

Each is a few lines of numpy/scipy/OpenCV that shares no code with the task it stands beside, so a
released model that got worse than "do almost nothing" fails its test. Not a test module.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# ------------------------------------------------------------------------------------ restoration


def psnr(x: np.ndarray, clean: np.ndarray) -> float:
    """PSNR in dB of ``x`` against ``clean`` (both float in [0, 1], same shape)."""
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(clean, np.float64)) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def gaussian_blur_image(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image [H, W, C]`` blurred over its two spatial axes (reflected borders)."""
    return ndimage.gaussian_filter(np.asarray(image, np.float64), sigma=(sigma, sigma, 0), mode="reflect")


def median_filter_image(image: np.ndarray, size: int) -> np.ndarray:
    """``image [H, W, C]`` through a ``size`` x ``size`` median per channel."""
    return ndimage.median_filter(np.asarray(image, np.float64), size=(size, size, 1), mode="reflect")


#: the settings the restoration baselines are tried at; each image gets the best of them (measured
#: against the clean image, so the baseline is, if anything, stronger than a fixed setting)
BLUR_SIGMAS = (0.5, 1.0, 1.5, 2.0)
MEDIAN_SIZES = (3, 5)


def best_blur_psnr(degraded: np.ndarray, clean: np.ndarray) -> float:
    return max(psnr(gaussian_blur_image(degraded, s), clean) for s in BLUR_SIGMAS)


def best_median_psnr(degraded: np.ndarray, clean: np.ndarray) -> float:
    return max(psnr(median_filter_image(degraded, k), clean) for k in MEDIAN_SIZES)


# ------------------------------------------------------------------------------------ pde


def rel_l2(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Relative L2 error per sample of ``[N, ...]`` arrays."""
    n = len(target)
    d = np.asarray(pred, np.float64).reshape(n, -1) - np.asarray(target, np.float64).reshape(n, -1)
    return np.linalg.norm(d, axis=1) / np.linalg.norm(np.asarray(target, np.float64).reshape(n, -1), axis=1)


def blur_fields(fields: np.ndarray, sigma: float = 1.0, periodic: bool = True) -> np.ndarray:
    """``fields [N, H, W]`` blurred over the grid (``wrap`` borders for periodic families)."""
    return ndimage.gaussian_filter(np.asarray(fields, np.float64), sigma=(0, sigma, sigma),
                                   mode="wrap" if periodic else "nearest")


# ------------------------------------------------------------------------------------ anomaly


class PixelZScore:
    """Per-pixel z-score detector: mean and standard deviation of each pixel and channel over normal
    images ``[n, H, W, C]``; the map is the mean absolute z-score over channels, the image score the
    mean of the map's top 1% pixels (the released model's image score rule)."""

    def __init__(self, normals: np.ndarray) -> None:
        x = np.asarray(normals, np.float64)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-3

    def maps(self, images: np.ndarray) -> np.ndarray:
        return (np.abs(np.asarray(images, np.float64) - self.mean) / self.std).mean(-1)

    @staticmethod
    def scores(maps: np.ndarray) -> np.ndarray:
        flat = np.asarray(maps).reshape(len(maps), -1)
        k = max(1, round(0.01 * flat.shape[1]))
        return np.sort(flat, axis=1)[:, -k:].mean(1)


# ------------------------------------------------------------------------------------ tracking


def still_box(frames: list[np.ndarray], init_box: np.ndarray) -> np.ndarray:
    """The first box in every frame."""
    return np.repeat(np.asarray(init_box, np.float64)[None], len(frames), 0)


def template_matching(frames: list[np.ndarray], init_box: np.ndarray) -> np.ndarray:
    """OpenCV template matching (normalised cross-correlation) of the first frame's box over each
    whole frame; the box keeps the first size."""
    import cv2

    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) if f.ndim == 3 else f for f in frames]
    x, y, w, h = (round(float(v)) for v in init_box)
    H, W = gray[0].shape
    x, y = min(max(x, 0), W - 1), min(max(y, 0), H - 1)
    w, h = max(1, min(w, W - x)), max(1, min(h, H - y))
    template = gray[0][y:y + h, x:x + w]
    boxes = [np.asarray(init_box, np.float64)]
    for g in gray[1:]:
        score = cv2.matchTemplate(g, template, cv2.TM_CCOEFF_NORMED)
        _, _, _, (bx, by) = cv2.minMaxLoc(score)
        boxes.append(np.array([bx, by, w, h], np.float64))
    return np.stack(boxes)


# ------------------------------------------------------------------------------------ separation


def spectral_split(mixture: np.ndarray, n_fft: int = 256, hop: int = 64) -> np.ndarray:
    """An oracle-free binary spectral mask: each time-frequency bin of the mixture goes to the low or
    the high source by whether it lies below the mixture's median-energy frequency in its frame
    (two voices differ most in pitch and formants). Returns ``[2, L]``."""
    from scipy.signal import istft, stft

    x = np.asarray(mixture, np.float64)
    _, _, Z = stft(x, nperseg=n_fft, noverlap=n_fft - hop)
    power = np.abs(Z) ** 2
    cum = np.cumsum(power, axis=0) / np.maximum(power.sum(0, keepdims=True), 1e-12)
    low = cum <= 0.5  # the bins below the frame's median-energy frequency
    out = []
    for mask in (low, ~low):
        _, y = istft(Z * mask, nperseg=n_fft, noverlap=n_fft - hop)
        y = y[: len(x)]
        out.append(np.pad(y, (0, len(x) - len(y))))
    return np.stack(out)


def nmf_masks(mixture: np.ndarray, n_fft: int = 256, hop: int = 64) -> np.ndarray:
    """An oracle-free soft spectral mask: a two-component NMF of the mixture's magnitude spectrogram
    (scikit-learn, fixed initialisation), each component's share of the model's magnitude as its
    mask. Returns ``[2, L]``."""
    import warnings

    from scipy.signal import istft, stft
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    x = np.asarray(mixture, np.float64)
    _, _, Z = stft(x, nperseg=n_fft, noverlap=n_fft - hop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 200 iterations are what the baseline is
        nmf = NMF(n_components=2, init="nndsvda", max_iter=200, random_state=0)
        W = nmf.fit_transform(np.abs(Z))
    parts = [np.outer(W[:, i], nmf.components_[i]) for i in range(2)]
    total = parts[0] + parts[1] + 1e-8
    out = []
    for part in parts:
        _, y = istft(Z * part / total, nperseg=n_fft, noverlap=n_fft - hop)
        y = y[: len(x)]
        out.append(np.pad(y, (0, len(x) - len(y))))
    return np.stack(out)
