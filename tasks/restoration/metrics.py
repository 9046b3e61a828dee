"""Restoration metrics: PSNR and SSIM per image, on RGB and (separately named) on the BT.601 luma Y.

Conventions: images are RGB in [0, 1] with data range 1 (the all-in-one papers' RGB convention);
the Y-channel values use the luma of YCbCr, ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255``,
also with data range 1 (the classic SR / denoising convention, same as Y in [0, 255] with range 255).
SSIM is Wang et al.'s: an 11-tap Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population
(co)variances, averaged over the positions whose window lies inside the image, then over channels:
scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=-1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio

from mmoe.validation import check_positive_int

#: BT.601 luma of RGB in [0, 1] (the Y of YCbCr): offset and weights, over 255
Y_OFFSET, Y_WEIGHTS = 16.0 / 255.0, (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
#: per-image PSNR is capped here (an exact reconstruction would give inf and break the mean)
MAX_PSNR = 100.0
KEYS = ("psnr", "ssim", "psnr_y", "ssim_y")


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """BT.601 luma ``[..., 3, H, W] -> [..., 1, H, W]`` of RGB in [0, 1] (Y in [16/255, 235/255])."""
    r, g, b = image.unbind(-3)
    return (Y_OFFSET + Y_WEIGHTS[0] * r + Y_WEIGHTS[1] * g + Y_WEIGHTS[2] * b).unsqueeze(-3)


def crop_border(image: torch.Tensor, border: int) -> torch.Tensor:
    """``image [..., H, W]`` without ``border`` pixels on each side."""
    return image[..., border:image.shape[-2] - border, border:image.shape[-1] - border] if border else image


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image of ``[B, C, H, W]``: ``[B]`` (torchmetrics'), capped at :data:`MAX_PSNR`
    so that an exact copy does not make a mean over images infinite."""
    return peak_signal_noise_ratio(pred, target, data_range=data_range, reduction="none",
                                   dim=tuple(range(1, pred.ndim))).clamp(max=MAX_PSNR)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64,
                    device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``[size]``."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
                   sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of each image of ``[B, C, H, W]`` (over valid window positions, then channels): ``[B]``.

    Kept here rather than torchmetrics' SSIM because the conventions differ: this one averages only the
    window positions that fit inside the image, as scikit-image's ``structural_similarity`` (gaussian
    weights, sigma 1.5, population covariance) does, so the tables compare with published numbers;
    torchmetrics pads the image and gives about 5e-4 more on noisy 40x52 crops (tests check this one
    against scikit-image)."""
    B, C, H, W = pred.shape
    if min(H, W) < win_size:
        raise ValueError(f"pred: SSIM needs images of at least {win_size}x{win_size} (after the border crop), "
                         f"got {H}x{W}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    w = gaussian_window(win_size, sigma, pred.dtype, pred.device)
    maps = torch.stack([pred, target, pred * pred, target * target, pred * target], dim=2).reshape(-1, 1, H, W)
    # separable filtering without padding: exactly the positions scikit-image keeps after its crop
    maps = F.conv2d(F.conv2d(maps, w.view(1, 1, 1, -1)), w.view(1, 1, -1, 1))
    ux, uy, uxx, uyy, uxy = maps.view(B, C, 5, *maps.shape[-2:]).unbind(2)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


class RestorationMetrics(Metric):
    """PSNR and SSIM on RGB and on Y, averaged over images, overall, per degradation type and per noise level.

    ``update(pred, target, degradation=None, sigma=None)`` with ``pred``/``target``
    ``[B, 3, H, W]`` RGB in [0, 1], ``degradation [B]`` (ids into ``degradation_names``, -1 for
    unknown) and ``sigma [B]`` (synthesised noise level on the 0-255 scale, 0 for none). Each
    image gets its own PSNR and SSIM (the mean over images, not the PSNR of the pooled MSE).
    ``compute()`` returns ``{"psnr", "ssim", "psnr_y", "ssim_y"}`` over all images, plus
    ``"<key>_<degradation>"`` for each degradation type seen and ``"<key>_sigma<level>"`` for
    each of ``noise_levels`` seen (the all-in-one tables' denoising columns).

    Args:
        degradation_names: degradation types in label order (for the per-type breakdown).
        crop_border: pixels cut off each side before measuring (0: none, the all-in-one convention).
        noise_levels: noise levels (0-255 scale) reported on their own.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, degradation_names: list[str] | None = None, crop_border: int = 0,
                 noise_levels: tuple[int, ...] = (15, 25, 50)) -> None:
        super().__init__()
        self.degradation_names = list(degradation_names or [])
        self.crop_border = check_positive_int("crop_border", crop_border, minimum=0)
        self.noise_levels = tuple(check_positive_int("noise_levels", s) for s in noise_levels)
        # slots: one per degradation type, one for unknown, one per noise level
        n = len(self.degradation_names) + 1 + len(self.noise_levels)
        self.add_state("sums", default=torch.zeros(len(KEYS), n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, degradation: torch.Tensor | None = None,
               sigma: torch.Tensor | None = None) -> None:
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"pred/target: expected equal shapes [B, 3, H, W], got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        # float64 for agreement with reference implementations (MPS has none: float32 there)
        dtype = torch.float32 if pred.device.type == "mps" else torch.float64
        p = crop_border(pred.detach().to(dtype), self.crop_border)
        t = crop_border(target.detach().to(dtype), self.crop_border)
        py, ty = rgb_to_y(p), rgb_to_y(t)
        values = torch.stack([psnr_per_image(p, t), ssim_per_image(p, t),
                              psnr_per_image(py, ty), ssim_per_image(py, ty)]).to(self.sums.dtype)  # [4, B]
        B = p.shape[0]
        slot = torch.full((B,), len(self.degradation_names), dtype=torch.long, device=p.device)
        if degradation is not None:
            slot = torch.where((degradation >= 0) & (degradation < len(self.degradation_names)),
                               degradation.long(), slot)
        ones = torch.ones(B, dtype=self.counts.dtype, device=slot.device)
        self.sums.index_add_(1, slot, values)
        self.counts.index_add_(0, slot, ones)
        if sigma is not None and self.noise_levels:  # images at a listed noise level count there too
            levels = torch.tensor(self.noise_levels, device=sigma.device, dtype=torch.float32)
            match = (sigma.float().round().unsqueeze(1) == levels).float()  # [B, S]
            first = len(self.degradation_names) + 1
            self.sums[:, first:] += values @ match.to(values)
            self.counts[first:] += match.sum(0).to(self.counts)

    def compute(self) -> dict[str, torch.Tensor]:
        D = len(self.degradation_names)
        total = self.counts[: D + 1].sum().clamp_min(1)
        out = {key: self.sums[i, : D + 1].sum() / total for i, key in enumerate(KEYS)}
        names = self.degradation_names + [None] + [f"sigma{s}" for s in self.noise_levels]
        for slot, name in enumerate(names):
            if name is not None and self.counts[slot] > 0:
                out.update({f"{key}_{name}": self.sums[i, slot] / self.counts[slot] for i, key in enumerate(KEYS)})
        return out

