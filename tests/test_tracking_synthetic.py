"""Embedded tracking sequences: ground truth consistent with the rendered target, X consistent
with the scene, deterministic, and split by source photograph."""

from __future__ import annotations

import numpy as np
import pytest

from mmoe.datamodules.tracking.synthetic import ATTRIBUTES, SOURCES, render_sequence


def test_splits_share_no_source_photograph():
    train, val, test = (set(SOURCES[s]) for s in ("train", "val", "test"))
    assert not (train & test) and not (train & val) and not (val & test)


@pytest.mark.parametrize("modality", ["depth", "thermal", "event"])
def test_boxes_enclose_the_visible_target(modality):
    for seed in range(3):
        seq = render_sequence(seed, "train", modality, length=12, size=(96, 128), return_masks=True)
        assert seq.frames.shape == (12, 96, 128, 3) and seq.frames.dtype == np.uint8
        assert seq.x.shape == (12, 96, 128) and seq.boxes.shape == (12, 4)
        assert seq.present[0], "the first frame initialises the tracker"
        assert set(seq.attributes) == set(ATTRIBUTES)
        for t in np.nonzero(seq.present)[0]:
            x, y, w, h = seq.boxes[t]
            ys, xs = np.nonzero(seq.masks[t] > 0.5)
            assert w > 0 and h > 0 and len(xs) > 0
            assert xs.min() >= x and xs.max() + 1 <= x + w and ys.min() >= y and ys.max() + 1 <= y + h
            assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 96
        for t in np.nonzero(~seq.present)[0]:
            assert seq.masks[t].sum() < 0.1 * seq.masks[0].sum() * 2  # at most a sliver shows


def test_x_modalities_see_the_target():
    for seed in range(4):
        depth = render_sequence(seed, "train", "depth", length=4, size=(96, 128), return_masks=True)
        thermal = render_sequence(seed, "train", "thermal", length=4, size=(96, 128), return_masks=True)
        for seq, nearer in ((depth, True), (thermal, False)):
            inside = seq.masks[0] > 0.9
            outside = seq.masks[0] < 0.01
            a, b = np.median(seq.x[0][inside]), np.median(seq.x[0][outside])
            assert (a < b) if nearer else (a > b + 0.3), (seq.modality, a, b)


def test_events_are_signed_changes():
    seq = render_sequence(1, "test", "event", length=6, size=(96, 128))
    assert set(np.unique(seq.x)) <= {-1.0, 0.0, 1.0}
    assert not seq.x[0].any(), "no events before the second frame"
    assert np.abs(seq.x[1:]).sum() > 0, "a moving target makes events"


def test_deterministic_and_seed_dependent():
    a = render_sequence(5, "val", "thermal", length=5, size=(80, 96))
    b = render_sequence(5, "val", "thermal", length=5, size=(80, 96))
    c = render_sequence(6, "val", "thermal", length=5, size=(80, 96))
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.frames, c.frames)


def test_rgb_failures_leave_x_intact():
    """Some seed has dark frames: there RGB is near black, while depth still shows the target."""
    for seed in range(40):
        seq = render_sequence(seed, "train", "depth", length=30, size=(96, 128), return_masks=True)
        dark = np.nonzero(seq.attributes["dark"] & seq.present)[0]
        if len(dark):
            t = dark[0]
            assert seq.frames[t].mean() < 0.25 * seq.frames[0].mean()
            inside, outside = seq.masks[t] > 0.9, seq.masks[t] < 0.01
            if inside.any():
                assert np.median(seq.x[t][inside]) < np.median(seq.x[t][outside])
            return
    pytest.fail("no dark frames in 40 seeds")


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "training"}, "split"), ({"modality": "rgb"}, "modality"),
    ({"length": 1}, "length"), ({"size": (32, 32)}, "size"),
])
def test_bad_arguments(kwargs, match):
    args = {"seed": 0, "split": "train", "modality": "depth", "length": 4, "size": (96, 128)} | kwargs
    with pytest.raises(ValueError, match=match):
        render_sequence(**args)
