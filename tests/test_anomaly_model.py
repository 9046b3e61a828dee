"""Anomaly model: proxy tasks routed to their own experts, cell rotations, calibration, the dense
baseline's active parameters, predict's inputs and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmoe.settings import MoESettings
from mmoe.experts import DenseFFN
from mmoe.moe_layer import MoELayer
from mmoe.tasks.anomaly import AnomalyPreprocess, AnomalyTask
from mmoe.tasks.anomaly.model import gaussian_blur, rotate_cells

PRE = AnomalyPreprocess(image_size=32, modality_names=["brain_mri", "ct", "fundus", "histology"])


def _task(**kw) -> AnomalyTask:
    torch.manual_seed(0)
    args = dict(preprocess=PRE, dim=16, depth=2, num_heads=2, hidden_dim=16,
                moe=MoESettings(router="proxy_task", groups=4, num_experts=12, top_k=1))
    return AnomalyTask(**(args | kw))


def _batch(B: int = 8, S: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, 3, S, S, generator=g)
    return {"image": x, "pseudo_image": x.flip(-1), "pseudo_mask": (x[:, :1] > 0.7).float(),
            "mask": torch.zeros(B, 1, S, S), "label": torch.zeros(B, dtype=torch.long),
            "modality": torch.arange(B) % 4, "has_mask": torch.ones(B, dtype=torch.bool)}


def test_each_proxy_task_uses_only_its_expert_group() -> None:
    task = _task()
    task.train()
    out = task(_batch())
    ids = out["task_ids"]
    layers = [m for m in task.model.modules() if isinstance(m, MoELayer)]
    assert layers
    for layer in layers:
        pair_token, expert, per_sample = layer.last_assignment
        sample = pair_token // per_sample
        group = expert // 3  # experts per proxy-task group
        assert torch.equal(group, ids[sample])
        # every group got tokens: the four tasks are all in the batch
        assert set(group.tolist()) == {0, 1, 2, 3}
    # the experts x proxy-task load map comes from routing_classes
    assert torch.equal(task.routing_classes({}), ids)
    loss = task.model.losses(out, _batch())
    assert set(loss) == {"inpaint", "denoise", "pseudo_seg", "rotation", "modality"}
    sum(loss.values()).backward()
    assert all(p.grad is not None for n, p in task.model.heads.named_parameters())


def test_dense_baseline_has_the_same_active_parameters() -> None:
    moe, dense = _task(), _task(moe=MoESettings(router="proxy_task", groups=4, num_experts=12, top_k=1, dense=True))
    layer = next(m for m in moe.model.modules() if isinstance(m, MoELayer))
    ffn = next(m for m in dense.model.modules() if isinstance(m, DenseFFN))
    per_expert = layer.experts.w_in[0].numel() + layer.experts.w_out[0].numel()
    active = (layer.top_k + 1) * per_expert  # k routed + the group's shared expert
    dense_weights = ffn.mlp.w_in.numel() + ffn.mlp.w_out.numel()
    assert dense_weights == active
    learned = _task(moe=MoESettings(router="softmax", num_experts=12, top_k=2))
    layer = next(m for m in learned.model.modules() if isinstance(m, MoELayer))
    assert layer.top_k == 2 and layer.router_kind == "softmax"
    with pytest.raises(ValueError, match="moe.groups: the proxy_task router needs one group per proxy task"):
        _task(moe=MoESettings(router="proxy_task", groups=2, num_experts=12, top_k=1))


def test_rotate_cells_and_blur() -> None:
    x = torch.rand(2, 3, 16, 24)
    k = torch.randint(0, 4, (2, 2, 3))
    y = rotate_cells(x, k, 8)
    torch.testing.assert_close(rotate_cells(y, (4 - k) % 4, 8), x)
    torch.testing.assert_close(rotate_cells(x, torch.zeros_like(k), 8), x)
    cell = x[0, :, 8:16, 16:24]
    torch.testing.assert_close(y[0, :, 8:16, 16:24], torch.rot90(cell, int(k[0, 1, 2]), dims=(-2, -1)))
    c = torch.full((1, 2, 7, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(c, 2.0), c)  # odd sizes, constant preserved
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1
    assert gaussian_blur(spike, 1.0).sum() == pytest.approx(1.0, abs=1e-5)


def test_calibration_standardises_normal_maps() -> None:
    task = _task()
    batches = [_batch() for _ in range(2)]
    task.calibrate(batches)
    task.eval()
    raw, _ = task.model.raw_maps(batches[0]["image"])
    mods = batches[0]["modality"]
    z = (raw - task.model.calib_mean[mods][..., None, None]) / task.model.calib_std[mods][..., None, None]
    # the calibration batches are two copies: each modality's z-maps have mean 0 and std 1 per task
    for m in range(4):
        zm = z[mods == m].transpose(0, 1).flatten(1)
        torch.testing.assert_close(zm.mean(1), torch.zeros(4), atol=1e-4, rtol=0)
        torch.testing.assert_close(zm.std(1, correction=0), torch.ones(4), atol=1e-3, rtol=0)


def test_predict_inputs_sizes_and_paths(tmp_path: Path) -> None:
    import pydicom.data

    task = _task()
    gray = (np.random.default_rng(0).random((37, 53)) * 4000).astype(np.uint16)
    out = task.predict(gray, modality="ct")
    assert out["map"].shape == (37, 53) and out["map"].dtype == np.float32
    assert isinstance(out["score"], float) and out["modality"] == "ct"
    rgb = (np.random.default_rng(1).random((21, 30, 3)) * 255).astype(np.uint8)
    batch = task.predict([rgb, gray])
    assert [m.shape for m in batch["map"]] == [(21, 30), (37, 53)] and len(batch["score"]) == 2
    stacked = task.predict(torch.rand(3, 1, 33, 35))
    assert len(stacked["map"]) == 3 and stacked["map"][0].shape == (33, 35)
    png = tmp_path / "x.png"
    Image.fromarray(rgb).save(png)
    from_path = task.predict(str(png), modality="fundus")
    np.testing.assert_allclose(from_path["map"], task.predict(rgb, modality="fundus")["map"], rtol=1e-5, atol=1e-5)
    dcm = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"  # bundled in the wheel
    assert task.predict(str(dcm))["map"].shape == (128, 128)


@pytest.mark.parametrize("bad, error, match", [
    (np.full((8, 8), np.nan, dtype=np.float32), ValueError, "NaN"),
    (np.zeros((0, 8)), ValueError, "non-empty"),
    (np.zeros((8, 8), dtype=bool), TypeError, "dtype"),
    (np.zeros((8, 8), dtype=np.complex64), TypeError, "dtype"),
    (np.zeros((2, 2, 8, 8, 3)), ValueError, "shape"),
    (np.full((8, 8, 3), 2.0, dtype=np.float32), ValueError, r"\[0, 1\]"),
    ("not/a/file.png", FileNotFoundError, "images"),
    (3.0, TypeError, "images"),
    ([], ValueError, "images"),
])
def test_predict_rejects_bad_input(bad, error, match) -> None:
    with pytest.raises(error, match=match):
        _task().predict(bad)


def test_predict_rejects_unknown_modality_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="modality"):
        _task().predict(np.zeros((8, 8)), modality="xray")
    with pytest.raises(ValueError, match="tasks"):
        _task(tasks=["inpaint", "jigsaw"])
    with pytest.raises(ValueError, match="groups: expected a divisor of num_experts=4 leaving >= top_k"):
        _task(moe=MoESettings(router="proxy_task", groups=4, num_experts=4, top_k=1))
    with pytest.raises(ValueError, match="image_size"):
        AnomalyPreprocess(image_size=30)
