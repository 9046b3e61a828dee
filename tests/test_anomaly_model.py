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
    task.calibrate(batches, reference=[_batch(S=32)])
    task.eval()
    raw, _, _ = task.model.raw_maps(batches[0]["image"], batches[0]["modality"])
    mods = batches[0]["modality"]
    z = (raw - task.model.calib_mean[mods][..., None, None]) / task.model.calib_std[mods][..., None, None]
    # the calibration batches are two copies: each modality's z-maps have mean 0 and std 1 per task
    for m in range(4):
        zm = z[mods == m].transpose(0, 1).flatten(1)
        C = z.shape[1]  # the four task maps and the feature distance
        assert C == 5
        torch.testing.assert_close(zm.mean(1), torch.zeros(C), atol=1e-4, rtol=0)
        torch.testing.assert_close(zm.std(1, correction=0), torch.ones(C), atol=1e-3, rtol=0)


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


def _calibrated(**kw) -> AnomalyTask:
    task = _task(bank_size=64, **kw)
    g = torch.Generator().manual_seed(5)
    ref = {"image": torch.rand(8, 3, 32, 32, generator=g), "modality": torch.arange(8) % 4}
    task.calibrate([_batch(), _batch()], reference=[ref])
    return task


def test_bank_is_a_coreset_of_the_reference_tokens() -> None:
    """Every reference token is within the k-center radius of the bank; a modality without reference
    images keeps an empty bank and its map falls back to the task maps."""
    task = _task(bank_size=32)
    feats = torch.randn(500, task.model.bank.shape[-1], generator=torch.Generator().manual_seed(0))
    task.model.fill_bank(feats, 1)
    bank = task.model.bank[1]
    d = torch.cdist(feats, bank).amin(1)
    assert d.max() > 0 and bool(torch.isin(bank, feats).all(-1).all())  # bank tokens are reference tokens
    # greedy k-center: the covering radius is at most twice the optimum, and no worse than a random subset's
    rand = torch.cdist(feats, feats[torch.randperm(500, generator=torch.Generator().manual_seed(1))[:32]]).amin(1)
    assert d.max() <= rand.max()
    assert task.model.bank_ready.tolist() == [0.0, 1.0, 0.0, 0.0]
    x = torch.rand(2, 3, 32, 32)
    task.eval()
    with torch.no_grad():
        out = task.model.anomaly_maps(x, torch.tensor([0, 0]))
        raw = out["task_maps"]
        assert float(raw[:, -1].abs().max()) == 0.0  # modality 0 has no bank: no feature distance
        z = (raw[:, :4] - task.model.calib_mean[0, :4, None, None]) / task.model.calib_std[0, :4, None, None]
        torch.testing.assert_close(out["map"], z.mean(1))


def test_thresholds_from_normal_validation_images_and_overrides() -> None:
    task = _calibrated()
    m = task.model
    assert m.table_ready.tolist() == [1.0] * 4
    assert bool((m.score_table[:, :-1] >= m.score_table[:, 1:]).all())  # a lower rate needs a higher threshold
    # the thresholds are the (1 - fpr) quantiles of the normal validation scores, recomputed here independently
    batch = _batch()
    with torch.no_grad():
        out = m.anomaly_maps(batch["image"], batch["modality"])
    for k in range(4):
        scores = out["score"][batch["modality"] == k].double()
        want = torch.quantile(torch.cat([scores, scores]), 1 - 0.1)  # calibrated on two copies of the batch
        got, _ = m.thresholds(torch.tensor([k]), 0.1, 0.1)
        torch.testing.assert_close(got[0], want, atol=1e-4, rtol=1e-4)
    img = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    out = task.predict(img, modality="ct")
    assert isinstance(out["is_anomalous"], bool) and out["mask"].shape == (20, 30) and out["mask"].dtype == bool
    assert out["is_anomalous"] == (out["score"] > out["threshold"])
    np.testing.assert_array_equal(out["mask"], out["map"] > out["pixel_threshold"])
    low = task.predict(img, modality="ct", threshold=out["score"] - 1e-3, pixel_threshold=-1e9)
    high = task.predict(img, modality="ct", threshold=out["score"] + 1e-3)
    assert low["is_anomalous"] and not high["is_anomalous"] and low["mask"].all()
    loose, strict = task.predict(img, modality="ct", fpr=0.4), task.predict(img, modality="ct", fpr=0.001)
    assert loose["threshold"] <= out["threshold"] <= strict["threshold"]


@pytest.mark.parametrize("kwargs, match", [
    ({"fpr": 0.0}, "fpr: expected a false-positive rate in"), ({"fpr": 1.5}, "fpr: expected"),
    ({"pixel_fpr": True}, "pixel_fpr: expected"), ({"threshold": float("nan")}, "threshold: expected a finite"),
    ({"fpr": 0.1, "threshold": 1.0}, "not both"), ({"pixel_fpr": 0.1, "pixel_threshold": 1.0}, "not both"),
    ({"window": (80, 0)}, "window: expected"), ({"window": "kidney"}, "window: expected"),
])
def test_predict_decision_arguments_are_checked(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        _task().predict(np.zeros((8, 8)), **kwargs)


def test_uncalibrated_model_gives_no_decision_unless_a_threshold_is_given() -> None:
    out = _task().predict(np.random.default_rng(0).random((8, 8)))
    assert out["is_anomalous"] is None and out["mask"] is None and out["threshold"] is None
    out = _task().predict(np.random.default_rng(0).random((8, 8)), threshold=0.0, pixel_threshold=0.0)
    assert isinstance(out["is_anomalous"], bool) and out["mask"].shape == (8, 8)


def test_volumes_give_per_slice_scores_and_maps_in_the_file_geometry(tmp_path: Path) -> None:
    import nibabel as nib

    task = _calibrated()
    vol = (np.random.default_rng(4).random((20, 24, 3)) * 1500).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    out = task.predict(str(tmp_path / "v.nii.gz"), modality="brain_mri")
    assert out["map"].shape == vol.shape and out["mask"].shape == vol.shape and out["score"].shape == (3,)
    assert out["volume_score"] == pytest.approx(float(out["score"].max()))
    assert out["volume_is_anomalous"] == bool(out["is_anomalous"].any())
    for z in range(3):  # slice z of the map volume is the map of slice z on its own
        one = task.predict(vol[:, :, z], modality="brain_mri")
        np.testing.assert_allclose(out["map"][:, :, z], one["map"], rtol=1e-4, atol=1e-4)
        assert out["score"][z] == pytest.approx(one["score"], rel=1e-4, abs=1e-4)
    # a fixed window instead of the percentiles: (v - low) / (high - low), clipped to [0, 1]
    hu = (np.random.default_rng(5).random((16, 16)) * 600 - 300).astype(np.float32)
    windowed = task.predict(hu, modality="ct", window="soft_tissue")  # (-160, 240)
    unit = np.clip((hu + 160) / 400, 0, 1)
    np.testing.assert_allclose(windowed["map"], task.predict(unit, modality="ct", window=(0.0, 1.0))["map"], atol=1e-5)
    assert not np.allclose(windowed["map"], task.predict(hu, modality="ct")["map"], atol=1e-3)
    with pytest.raises(ValueError, match="window: applies to greyscale images only"):
        task.predict(np.zeros((8, 8, 3), np.uint8), window="brain")
