"""Template/search crops: the box lands where the transform says, outside the frame is the mean colour."""

from __future__ import annotations

import numpy as np
import pytest

from mmoe.datamodules.tracking.crops import crop_around


@pytest.mark.parametrize("box, factor, size, shift, scale", [
    ((40.0, 30.0, 20.0, 12.0), 2.0, 64, (0.0, 0.0), 1.0),
    ((3.0, 70.0, 31.0, 17.0), 4.0, 128, (0.7, -0.4), 1.2),
    ((100.5, 5.25, 9.0, 30.0), 4.0, 96, (-1.0, 0.5), 0.8),
])
def test_box_lands_where_the_transform_says(box, factor, size, shift, scale):
    frame = np.zeros((120, 160, 3), np.uint8)
    x, y, w, h = box
    frame[int(np.ceil(y)):int(y + h), int(np.ceil(x)):int(x + w)] = 255
    crop, t = crop_around(frame, np.array(box), factor, size, shift, scale)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    cx, cy, cw, ch = t.box_to_crop(np.array(box))
    ys, xs = np.nonzero(crop[..., 0] > 127)
    tol = 1.5 + t.scale  # a pixel of rounding in the frame, one resampled pixel in the crop
    visible = (cx + cw > 0) and (cy + ch > 0) and cx < size and cy < size
    if visible:
        assert abs(xs.min() - max(cx, 0)) <= tol and abs(xs.max() + 1 - min(cx + cw, size)) <= tol
        assert abs(ys.min() - max(cy, 0)) <= tol and abs(ys.max() + 1 - min(cy + ch, size)) <= tol
    np.testing.assert_allclose(t.box_to_frame(t.box_to_crop(np.array(box))), box, atol=1e-9)
    side = np.sqrt(w * h) * factor * scale
    assert t.scale == pytest.approx(size / side)


def test_outside_the_frame_is_the_mean_colour_and_single_channels_work():
    frame = np.full((50, 50, 3), (10, 200, 30), np.uint8)
    frame[:25] = (250, 0, 90)
    crop, _ = crop_around(frame, np.array([0.0, 0.0, 10.0, 10.0]), 4.0, 32)
    assert tuple(crop[0, 0]) == tuple(np.round(frame.reshape(-1, 3).mean(0)).astype(np.uint8))
    depth = np.full((50, 50), 3000, np.uint16)
    d, _ = crop_around(depth, np.array([20.0, 20.0, 5.0, 5.0]), 2.0, 16)
    assert d.shape == (16, 16) and d.dtype == np.uint16 and (d == 3000).all()
    x = np.zeros((50, 50, 1), np.float32)
    assert crop_around(x, np.array([20.0, 20.0, 5.0, 5.0]), 2.0, 16)[0].shape == (16, 16, 1)


@pytest.mark.parametrize("box", [(0, 0, 0, 5), (0, 0, 5, -1), (np.nan, 0, 5, 5)])
def test_bad_box(box):
    with pytest.raises(ValueError, match="box"):
        crop_around(np.zeros((20, 20, 3), np.uint8), np.array(box, dtype=float), 2.0, 16)
