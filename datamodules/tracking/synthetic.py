"""Embedded tracking sequences rendered from photographs bundled in the scikit-image and
matplotlib wheels (no download), with an X modality rendered consistently with the scene.

A sequence is a background (a crop of a source photograph) with a target sprite (a crop of a
source photograph under a soft elliptical mask) that moves smoothly (an Ornstein-Uhlenbeck
velocity), changes scale and rotates; optionally similar-looking distractors (crops next to the
target's own crop, hue-shifted), an occluder crossing in front, bursts of fast motion with
motion blur, and RGB failures (dark or over-exposed frames, camouflage: the target takes the
background's texture) where X still sees the target. X is one of:

* ``depth``: target and distractors at their own (slowly changing) depths in front of the
  background's depth (the real Middlebury disparity of ``stereo_motorcycle`` for that source,
  smooth random depth for others), the occluder nearest; sensor noise and missing pixels (0).
  Values in [0, 1], larger is farther.
* ``thermal``: background cold (its luminance, dimmed and blurred), target warm (emissive),
  distractors and occluder at other temperatures, a blurry sensor with noise; clutter: zero to
  three static warm regions of a person's proportions (taller than wide) at temperatures near the
  target's; thermal crossover: in some sequences a run of frames where the target cools to the
  background's temperature around it (X loses it, RGB does not). Values in [0, 1].
* ``event``: signed brightness changes between consecutive frames of the scene's linear
  intensity before the RGB failure (an event camera's range is wider than the RGB sensor's):
  +1 / -1 where the log intensity rose / fell by more than 0.1, else 0; the first frame is 0;
  sensor noise: about 0.5% of the pixels fire a random-signed event each frame.

One seed gives one scene whatever the X: RGB, motion, events, boxes and attributes are the same
with depth, thermal or event beside it (the X-only parts, thermal clutter, crossover and sensor
noise and event noise, draw from their own generator); depth sequences are the same as before
thermal and event shared their scenes.

Ground truth: the target's whole (amodal) box, clipped to the frame, in continuous ``x, y, w, h``
pixels. The target is absent (``present`` False) where less than 10% of its area is visible
(occluded or out of view). Per-frame attributes: ``occlusion`` (partly or fully hidden),
``out_of_view``, ``dark``, ``overexposed``, ``camouflage``, ``fast_motion``, ``distractor``.

Splits are by source photograph: the test split's backgrounds and objects come from photographs
never used in training (:data:`SOURCES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from mmoe.inputs.image import read_image

Modality = Literal["depth", "thermal", "event"]
MODALITIES: tuple[str, ...] = ("depth", "thermal", "event")
ATTRIBUTES: tuple[str, ...] = ("occlusion", "out_of_view", "dark", "overexposed", "camouflage",
                               "fast_motion", "distractor")
#: source photographs per split; a sequence's background and objects come from its split only
SOURCES: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "rocket", "camera", "coins", "immunohistochemistry", "hubble_deep_field",
              "grass", "gravel", "brick", "retina", "clock", "grace_hopper"),
    "val": ("moon", "page"),
    "test": ("chelsea", "coffee", "motorcycle"),
}
#: visible fraction below which the target counts as absent
ABSENT_BELOW = 0.1


@dataclass(frozen=True)
class SyntheticSequence:
    """One rendered sequence (see the module docstring).

    Args:
        name: ``<split>-<seed>``.
        frames: RGB frames uint8 ``[N, H, W, 3]``.
        x: the X modality float32 ``[N, H, W]`` (event in {-1, 0, 1}, others in [0, 1]).
        modality: ``"depth"``, ``"thermal"`` or ``"event"``.
        boxes: the target's boxes ``[N, 4]`` float64 xywh.
        present: ``[N]`` bool.
        attributes: per-frame bool ``[N]`` per name in :data:`ATTRIBUTES`.
        masks: the target's visible alpha float32 ``[N, H, W]`` when asked for, else None.
    """

    name: str
    frames: np.ndarray
    x: np.ndarray
    modality: str
    boxes: np.ndarray
    present: np.ndarray
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    masks: np.ndarray | None = None


@lru_cache(maxsize=None)
def _source(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(float32 RGB [H, W, 3] in [0, 1], depth [H, W] in [0, 1] or None)`` of a photograph bundled
    in a wheel (scikit-image's data, matplotlib's sample photograph)."""
    import skimage.data

    if name == "motorcycle":
        left, _, disparity = skimage.data.stereo_motorcycle()
        valid = np.isfinite(disparity) & (disparity > 0)
        depth = np.where(valid, 1.0 / np.where(valid, disparity, 1.0), np.nan)
        lo, hi = np.nanmin(depth), np.nanmax(depth)
        depth = np.nan_to_num((depth - lo) / max(hi - lo, 1e-12), nan=1.0)  # holes: far
        return left.astype(np.float32) / 255.0, depth.astype(np.float32)
    if name == "grace_hopper":  # matplotlib's sample photograph (in its wheel)
        from matplotlib.cbook import get_sample_data

        pixels = read_image(get_sample_data("grace_hopper.jpg", asfileobj=False), "grace_hopper.jpg")
    else:
        pixels = getattr(skimage.data, name)()
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels[:, :, :3].astype(np.float32) / 255.0, None


def _crop(rng: np.random.Generator, image: np.ndarray, h: int, w: int) -> tuple[int, int]:
    H, W = image.shape[:2]
    return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))


def _sprite(rng: np.random.Generator, image: np.ndarray, h: int, w: int, at: tuple[int, int] | None = None
            ) -> tuple[np.ndarray, tuple[int, int]]:
    """RGBA float32 ``[h, w, 4]``: a crop of ``image`` under a soft ellipse."""
    y, x = at if at is not None else _crop(rng, image, h, w)
    rgb = image[y:y + h, x:x + w]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy + 0.5) / h * 2 - 1) ** 2 + ((xx + 0.5) / w * 2 - 1) ** 2)
    alpha = np.clip((1.0 - r) / 0.15, 0, 1).astype(np.float32)  # soft border, 1 inside
    return np.concatenate([rgb, alpha[:, :, None]], axis=2), (y, x)


def _hue_shift(rgb: np.ndarray, amount: float) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + amount) % 360
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


class _Mover:
    """Smooth random motion: OU velocity, scale and angle random walks; ``fast`` multiplies speed."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], speed: float) -> None:
        H, W = size
        self.rng, self.speed = rng, speed
        self.pos = np.array([rng.uniform(0.25, 0.75) * W, rng.uniform(0.25, 0.75) * H])
        self.vel = rng.normal(0, speed, 2)
        self.scale, self.angle = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)

    def step(self, fast: bool = False) -> None:
        self.vel = 0.85 * self.vel + self.rng.normal(0, 0.5 * self.speed, 2)
        self.pos = self.pos + self.vel * (3.0 if fast else 1.0)
        self.scale = float(np.clip(self.scale * np.exp(self.rng.normal(0, 0.02)), 0.6, 1.6))
        self.angle += float(self.rng.normal(0, 2.0))


def _place(sprite: np.ndarray, mover: _Mover, size: tuple[int, int]) -> np.ndarray:
    """The sprite warped into an ``[H, W, 4]`` frame layer at the mover's pose."""
    h, w = sprite.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), mover.angle, mover.scale)
    m[:, 2] += mover.pos - np.array([w / 2, h / 2])
    return cv2.warpAffine(sprite, m, (size[1], size[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _amodal_box(alpha: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(alpha > 0.5)
    if len(xs) == 0:
        return np.array([np.nan] * 4)
    return np.array([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()], dtype=np.float64)


def _motion_blur(image: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    length = int(min(15, np.hypot(*velocity)))
    if length < 3:
        return image
    kernel = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    d = velocity / max(np.hypot(*velocity), 1e-6)
    for t in np.linspace(-c, c, 2 * length):
        kernel[int(round(c + t * d[1])), int(round(c + t * d[0]))] = 1
    return cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def _smooth_depth(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A plausible background depth: a floor-to-wall ramp plus smooth bumps, in [0.45, 1]."""
    H, W = size
    ramp = np.linspace(1.0, 0.6, H)[:, None] * np.ones((1, W))
    bumps = gaussian_filter(rng.normal(0, 1, size), sigma=min(size) / 6)
    bumps = bumps / max(np.abs(bumps).max(), 1e-6) * 0.15
    return np.clip(ramp + bumps, 0.45, 1.0).astype(np.float32)


def render_sequence(seed: int, split: Literal["train", "val", "test"], modality: Modality,
                    length: int = 60, size: tuple[int, int] = (144, 192), return_masks: bool = False
                    ) -> SyntheticSequence:
    """Render one sequence; the same arguments give the same sequence.

    Args:
        seed: the sequence's seed (its events, objects and motion).
        split: the split whose source photographs are used.
        modality: the X modality rendered beside RGB.
        length: frames.
        size: frame ``(H, W)``.
        return_masks: also return the target's visible alpha per frame (tests, figures).
    """
    if split not in SOURCES:
        raise ValueError(f"split: expected one of {tuple(SOURCES)}, got {split!r}")
    if modality not in MODALITIES:
        raise ValueError(f"modality: expected one of {MODALITIES}, got {modality!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length: expected an integer >= 2, got {length!r}")
    H, W = size
    if H < 64 or W < 64:
        raise ValueError(f"size: expected sides >= 64, got {size}")
    # the scene's generator does not depend on the X modality: the same seed gives the same scene
    # (RGB, motion, events, boxes) with depth, thermal or event beside it
    rng = np.random.default_rng([seed, list(SOURCES).index(split), 0])
    names = SOURCES[split]
    bg_name = names[int(rng.integers(len(names)))]
    bg_image, bg_depth = _source(bg_name)
    y, x = _crop(rng, bg_image, min(H, bg_image.shape[0]), min(W, bg_image.shape[1]))
    background = cv2.resize(bg_image[y:y + H, x:x + W], (W, H), interpolation=cv2.INTER_AREA)
    depth_bg = (cv2.resize(bg_depth[y:y + H, x:x + W], (W, H), interpolation=cv2.INTER_NEAREST)
                if bg_depth is not None else _smooth_depth(rng, size))

    obj_image = _source(names[int(rng.integers(len(names)))])[0]
    th, tw = (int(v) for v in rng.integers(min(H, W) // 7, min(H, W) // 3, 2))
    target, (ty, tx) = _sprite(rng, obj_image, th, tw)
    speed = rng.uniform(0.5, 2.5)
    movers = [_Mover(rng, size, speed)]
    sprites = [target]
    n_distractors = int(rng.integers(0, 3)) if rng.random() < 0.5 else 0
    for _ in range(n_distractors):  # a neighbouring crop of the same photograph, hue-shifted: similar-looking
        dy = int(np.clip(ty + rng.integers(-th, th + 1), 0, obj_image.shape[0] - th))
        dx = int(np.clip(tx + rng.integers(-tw, tw + 1), 0, obj_image.shape[1] - tw))
        sprite, _ = _sprite(rng, obj_image, th, tw, at=(dy, dx))
        sprite[..., :3] = _hue_shift(sprite[..., :3], rng.uniform(-25, 25))
        sprites.append(sprite)
        movers.append(_Mover(rng, size, speed))
    occluder = None
    if rng.random() < 0.4:  # a background-textured slab that crosses the scene
        oh, ow = int(H * rng.uniform(0.3, 0.6)), int(W * rng.uniform(0.15, 0.3))
        occluder, _ = _sprite(rng, bg_image, oh, ow)
        occluder[..., 3] = (occluder[..., 3] > 0).astype(np.float32)
        occ_mover = _Mover(rng, size, 0)
        occ_mover.pos = np.array([-ow if rng.random() < 0.5 else W + ow, movers[0].pos[1]])
        occ_mover.vel = np.array([np.sign(W / 2 - occ_mover.pos[0]) * rng.uniform(3, 6), 0.0])
        occ_mover.scale, occ_mover.angle = 1.0, 0.0

    def segment(p: float) -> np.ndarray:  # a random run of frames (after the first) with probability p
        out = np.zeros(length, bool)
        if rng.random() < p:
            a = int(rng.integers(1, length))
            out[a:a + int(rng.integers(length // 8 + 1, length // 3 + 2))] = True
        return out

    fast, dark, bright, camo = segment(0.3), segment(0.3), segment(0.15), segment(0.2)
    bright &= ~dark
    depths = [rng.uniform(0.1, 0.3)] + list(rng.uniform(0.3, 0.4, n_distractors))
    temps = [rng.uniform(0.8, 0.95)] + list(rng.uniform(0.35, 0.6, n_distractors))
    thermal_bg = 0.1 + 0.15 * gaussian_filter(background.mean(2), 2)
    # X-only extras from their own generator: the depth sequences and all RGB stay as they were
    xrng = np.random.default_rng([seed, list(SOURCES).index(split), MODALITIES.index(modality), 29])
    crossover = np.zeros(length, bool)
    if modality == "thermal":
        yy, xx = np.mgrid[0:H, 0:W]
        for _ in range(int(xrng.integers(0, 4))):  # warm people-like regions: upright ellipses
            cy, cx = xrng.uniform(0, H), xrng.uniform(0, W)
            ry, rx = xrng.uniform(0.12, 0.3) * H, xrng.uniform(0.04, 0.1) * W
            blob = np.exp(-0.5 * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) ** 2)
            thermal_bg = np.maximum(thermal_bg, xrng.uniform(0.6, 0.9) * blob)
        if xrng.random() < 0.3:  # thermal crossover: the target cools to its surroundings for a while
            a = int(xrng.integers(1, length))
            crossover[a:a + int(xrng.integers(length // 8 + 1, length // 3 + 2))] = True

    frames, xs, boxes, present, masks = [], [], [], [], []
    attrs = {a: np.zeros(length, bool) for a in ATTRIBUTES}
    prev_log = None
    for t in range(length):
        if t:
            for m in movers:
                m.step(fast=bool(fast[t]) and m is movers[0])
            if occluder is not None:
                occ_mover.pos = occ_mover.pos + occ_mover.vel
        layers = [_place(s, m, size) for s, m in zip(sprites, movers)]
        if camo[t]:  # the target wears the background's texture: RGB cannot tell it apart
            layers[0][..., :3] = background
        rgb, dep = background.copy(), depth_bg.copy()
        therm = thermal_bg.copy()
        # far to near: distractors (behind the target), target, occluder
        order = list(range(1, len(layers))) + [0]
        for i in order:
            a = layers[i][..., 3:]
            rgb = rgb * (1 - a) + layers[i][..., :3] * a
            dep = np.where(a[..., 0] > 0.5, depths[i], dep)
            temp = temps[i]
            if i == 0 and crossover[t]:  # the target's temperature: the mean of what it covers
                temp = float((therm * a[..., 0]).sum() / max(float(a.sum()), 1e-6))
            therm = therm * (1 - a[..., 0]) + temp * a[..., 0]
        visible = layers[0][..., 3].copy()
        if occluder is not None:
            occ = _place(occluder, occ_mover, size)
            a = occ[..., 3:]
            rgb = rgb * (1 - a) + occ[..., :3] * a
            dep = np.where(a[..., 0] > 0.5, 0.05, dep)
            therm = therm * (1 - a[..., 0]) + 0.25 * a[..., 0]
            visible *= 1 - a[..., 0]
        if fast[t]:
            rgb = _motion_blur(rgb, movers[0].vel * 3)
        scene = rgb  # before the RGB sensor's failure: the event camera's intensity
        if dark[t]:
            rgb = rgb * rng.uniform(0.03, 0.1) + rng.normal(0, 0.01, rgb.shape)
        if bright[t]:
            rgb = rgb * rng.uniform(3, 5)
        box = _amodal_box(layers[0][..., 3])
        area = float(sprites[0][..., 3].sum() * movers[0].scale ** 2)
        frac = float(visible.sum()) / max(area, 1e-6)
        is_present = frac >= ABSENT_BELOW and np.isfinite(box).all()
        in_frame = float(layers[0][..., 3].sum()) / max(area, 1e-6)
        attrs["out_of_view"][t] = in_frame < ABSENT_BELOW
        attrs["occlusion"][t] = (in_frame - frac) > 0.1
        attrs["dark"][t], attrs["overexposed"][t], attrs["camouflage"][t] = dark[t], bright[t], camo[t]
        attrs["fast_motion"][t] = fast[t]
        attrs["distractor"][t] = n_distractors > 0
        # drawn for every modality so the scene's generator advances alike (same scenes for every X)
        noisy = dep + rng.normal(0, 0.01, dep.shape)
        noisy[rng.random(dep.shape) < 0.02] = 0.0  # missing depth pixels
        if modality == "depth":
            xs.append(np.clip(noisy, 0, 1))
        elif modality == "thermal":
            xs.append(np.clip(gaussian_filter(therm, 1.2) + xrng.normal(0, 0.02, therm.shape), 0, 1))
        else:
            log = np.log(scene.mean(2) + 1e-2)
            diff = log - prev_log if prev_log is not None else np.zeros_like(log)
            events = np.sign(diff) * (np.abs(diff) > 0.1)
            if t:  # sensor noise: random-signed events on about 0.5% of the pixels
                noise = xrng.random(events.shape) < 0.005
                events = np.where(noise, xrng.choice([-1.0, 1.0], events.shape), events)
            xs.append(events)
            prev_log = log
        frames.append(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8))
        boxes.append(box if is_present else (box if np.isfinite(box).all() else np.full(4, np.nan)))
        present.append(is_present)
        if return_masks:
            masks.append(visible.astype(np.float32))
    present_arr = np.array(present)
    if not present_arr[0]:  # the first frame initialises the tracker: it must show the target
        return render_sequence(seed + 7919, split, modality, length, size, return_masks)
    return SyntheticSequence(f"{split}-{seed}", np.stack(frames), np.stack(xs).astype(np.float32), modality,
                             np.stack(boxes), present_arr, attrs, np.stack(masks) if return_masks else None)
