"""Restoration task: metrics vs scikit-image, Haar wavelets, the wavelet MoE model, predict inputs and tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mmoe.settings import MoESettings
from mmoe.tasks.restoration import RestorationPreprocess, RestorationTask, WaveletMoERestorer
from mmoe.tasks.restoration.io import reflect_pad
from mmoe.tasks.restoration.metrics import RestorationMetrics, rgb_to_y
from mmoe.tasks.restoration.model import haar_dwt, haar_idwt

# No torch.set_num_threads here: with torch 2.14.1's MKL, going from 1 thread back to 2 breaks
# later batched LU solves in the same process ("Intel oneMKL ERROR ... DLASWP"; torchmetrics' SDR).


MOE = MoESettings(router="nested_image", groups=3, num_experts=9, top_k=1)
SMALL = dict(channels=8, dim=16, depth=2, hidden_dim=16, moe=MOE)


def small_task(seed: int = 0, **kwargs) -> RestorationTask:
    torch.manual_seed(seed)
    return RestorationTask(**{**SMALL, **kwargs})


def hand_batch(n: int = 3, size: tuple[int, int] = (16, 16), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(n, 3, *size, generator=g)
    noisy = (clean + 0.1 * torch.randn(n, 3, *size, generator=g)).clamp(0, 1)
    return {"input": noisy, "target": clean, "degradation": torch.arange(n) % 3}


# ------------------------------------------------------------------------------------ metrics
def _skimage_values(pred: np.ndarray, target: np.ndarray, border: int) -> np.ndarray:
    """(psnr, ssim, psnr_y, ssim_y) of one HxWx3 image pair, by scikit-image."""
    def y(img: np.ndarray) -> np.ndarray:
        return 16 / 255 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255

    if border:
        pred, target = pred[border:-border, border:-border], target[border:-border, border:-border]
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
    return np.array([peak_signal_noise_ratio(target, pred, data_range=1),
                     structural_similarity(target, pred, channel_axis=-1, **kw),
                     peak_signal_noise_ratio(y(target), y(pred), data_range=1),
                     structural_similarity(y(target), y(pred), **kw)])


@pytest.mark.parametrize("border", [0, 4])
def test_metrics_match_scikit_image(border: int) -> None:
    rng = np.random.default_rng(0)
    names = ["denoise", "derain", "dehaze"]
    metric = RestorationMetrics(names, crop_border=border)
    rows, labels, sigmas = [], [], []
    for n, (h, w) in ((3, (37, 53)), (2, (29, 41)), (4, (37, 53))):  # updates of odd sizes
        target = rng.random((n, h, w, 3))
        pred = np.clip(target + rng.uniform(0.02, 0.2) * rng.normal(size=target.shape), 0, 1)
        deg, sigma = rng.integers(-1, 3, size=n), rng.choice([0.0, 15.0, 25.0, 50.0], size=n)
        metric.update(*(torch.tensor(a).permute(0, 3, 1, 2) for a in (pred, target)), torch.tensor(deg),
                      torch.tensor(sigma, dtype=torch.float32))
        rows += [_skimage_values(pred[i], target[i], border) for i in range(n)]
        labels += list(deg)
        sigmas += list(sigma)
    ref, labels, sigmas = np.stack(rows), np.array(labels), np.array(sigmas)
    out = metric.compute()
    groups = {**{name: labels == d for d, name in enumerate(names)},
              **{f"sigma{s}": sigmas == s for s in (15, 25, 50)}}
    for k, key in enumerate(("psnr", "ssim", "psnr_y", "ssim_y")):
        # torchmetrics' PSNR takes log10 of the data range in float32: about 1e-6 dB off float64
        tol = 1e-5 if key.startswith("psnr") else 1e-9
        assert out[key].item() == pytest.approx(ref[:, k].mean(), rel=1e-9, abs=tol)  # mean over images
        for name, sel in groups.items():
            if sel.any():
                assert out[f"{key}_{name}"].item() == pytest.approx(ref[sel, k].mean(), rel=1e-9, abs=tol)
            else:
                assert f"{key}_{name}" not in out


def test_metrics_y_channel_exact_images_and_errors() -> None:
    rgb = torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]])
    assert rgb_to_y(rgb).item() == pytest.approx((16 + 65.481) / 255)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    metric = RestorationMetrics()
    metric.update(x, x.clone())
    out = metric.compute()
    assert out["psnr"].item() == 100.0 and out["ssim"].item() == pytest.approx(1.0)  # capped, not inf
    with pytest.raises(ValueError, match="pred: SSIM needs"):
        RestorationMetrics(crop_border=3).update(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="pred/target"):
        metric.update(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))


# ------------------------------------------------------------------------------ Haar wavelets
def test_haar_dwt_is_orthonormal_and_exactly_invertible() -> None:
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    ll, high = haar_dwt(x)
    assert ll.shape == (2, 3, 4, 6) and high.shape == (2, 9, 4, 6)
    torch.testing.assert_close(haar_idwt(ll, high), x, rtol=0, atol=1e-13)
    assert (ll.square().sum() + high.square().sum()).item() == pytest.approx(x.square().sum().item(), rel=1e-12)
    # the transform's matrix on a 4x4 image is orthogonal: M M^T = I
    basis = torch.eye(16, dtype=torch.float64).view(16, 1, 4, 4)
    m = torch.cat([t.flatten(1) for t in haar_dwt(basis)], dim=1)
    torch.testing.assert_close(m @ m.T, torch.eye(16, dtype=torch.float64))
    ll, high = haar_dwt(torch.full((1, 1, 4, 4), 0.5))  # a constant image has no high band
    assert torch.equal(high, torch.zeros_like(high)) and torch.allclose(ll, torch.ones_like(ll))
    with pytest.raises(ValueError, match="even sides"):
        haar_dwt(torch.zeros(1, 1, 5, 4))


# --------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (3, 3, 48, 80), (3, 3, 16, 16), (1, 3, 48, 16)])
def test_model_shapes_forward_backward(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = WaveletMoERestorer(**SMALL)
    x = torch.rand(*shape)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert model.last_logits.shape == (shape[0], 3) and len(model.group_logits()) == SMALL["depth"]
    layer = model.moe_layers()[0]
    assert layer.stats.tokens_per_modality.tolist() == [shape[0] * shape[2] * shape[3] // 16] * 2  # low, high
    (y.square().mean() + sum(m.aux_loss for m in model.moe_layers())).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.stem.weight.grad.abs().sum() > 0
    assert model.backbone.blocks[0].ffn.router.group_weight.grad is not None
    with pytest.raises(ValueError, match="x: expected"):
        model(torch.rand(1, 3, 18, 16))


def test_dense_baseline_has_equal_active_parameters() -> None:
    """Per token: k routed + the group's shared FFN expert, and one conv expert per image, vs the
    dense FFN of width (k + 1) * hidden and one conv expert; router weights are not counted."""
    for top_k, experts_per_group in ((1, 3), (2, 4)):
        settings = MOE.replace(top_k=top_k, num_experts=3 * experts_per_group)
        moe = WaveletMoERestorer(**(SMALL | {"moe": settings}))
        dense = WaveletMoERestorer(**(SMALL | {"moe": settings.replace(dense=True)}))
        total = sum(p.numel() for p in moe.parameters())
        inactive = 0
        for layer in moe.moe_layers():
            per_expert = (layer.experts.w_in.numel() + layer.experts.w_out.numel()) // layer.num_experts
            inactive += (layer.num_experts - (top_k + 1)) * per_expert
            inactive += sum(p.numel() for p in layer.router.parameters())
        per_conv = [sum(p.numel() for p in e.parameters()) for e in moe.high_experts]
        assert len(set(per_conv)) == 1  # equal whichever receptive field (3, 5, 7) an image gets
        inactive += (len(per_conv) - 1) * per_conv[0]
        assert [e.receptive_field for e in moe.high_experts] == [3, 5, 7]
        assert total - inactive == sum(p.numel() for p in dense.parameters())
        assert not dense.moe_layers() and dense(torch.rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)
        assert dense.last_logits is None


def test_group_logits_can_be_imposed() -> None:
    torch.manual_seed(0)
    model = WaveletMoERestorer(**SMALL).eval()
    x = torch.rand(2, 3, 16, 16)
    forced = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    with torch.no_grad():
        model(x, forced)
    for logits in model.group_logits():
        torch.testing.assert_close(logits, forced)
    groups = model.moe_layers()[0].last_assignment[1].view(2, -1) // (MOE.num_experts // MOE.groups)
    assert (groups[0] == 0).all() and (groups[1] == 2).all()  # every token in its image's group
    assert all(m.router.forced_logits is None for m in model.moe_layers())  # cleared after the forward


def test_capacity_sees_the_band_mix_and_attention_mixer_runs() -> None:
    torch.manual_seed(0)
    model = WaveletMoERestorer(**(SMALL | {"moe": MOE.replace(capacity_mode="macs", capacity_factor=0.5)}), mixer="attention",
                               num_heads=2)
    y = model(torch.rand(2, 3, 32, 16))
    assert y.shape == (2, 3, 32, 16) and torch.isfinite(y).all()
    stats = model.moe_layers()[0].stats
    assert stats.tokens_per_modality.tolist() == [64, 64]  # (low, high) tokens: 2 images x 8 x 4 each
    assert stats.dropped_per_modality.shape == (2,) and stats.dropped_per_modality.sum() > 0  # capacity binds


# ------------------------------------------------------------------------------ task and loss
@pytest.mark.parametrize("loss", ["l1", "charbonnier"])
def test_task_loss_metrics_and_figures(loss: str) -> None:
    task = small_task(loss=loss)
    batch = hand_batch(4, (32, 32))
    batch["degradation"][3] = -1
    out = task(batch)
    value = task.task_loss(out, batch)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    task.update_metrics("val", out, batch)
    values = task.val_metrics.compute()
    assert {"psnr", "ssim", "psnr_y", "ssim_y", "psnr_denoise", "ssim_y_dehaze"} <= set(values)
    assert 0 <= task.val_routing_acc.compute() <= 1
    assert task.routing_classes(batch).tolist() == [0, 1, 2, 0]
    figures = task.validation_figures()
    assert set(figures) == {"restoration_samples", "degradation_x_group"}
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    unlabelled = {k: v for k, v in batch.items() if k != "degradation"}
    assert torch.isfinite(task.task_loss(task(unlabelled), unlabelled))


def test_task_forward_pads_full_size_test_images() -> None:
    """Test batches hold whole images of any size: reflect-padded to the multiple, cropped back."""
    task = small_task().eval()
    batch = hand_batch(1, (37, 53))
    with torch.no_grad():
        out = task(batch)
        expected = task.model(reflect_pad(batch["input"], 48, 64))[..., :37, :53]
    assert out["image"].shape == (1, 3, 37, 53) and out["logits"].shape == (1, 3)
    torch.testing.assert_close(out["image"], expected)
    task.update_metrics("test", out, {**batch, "sigma": torch.tensor([25.0])})
    assert "psnr_sigma25" in task.test_metrics.compute()


def test_task_argument_errors() -> None:
    with pytest.raises(ValueError, match="loss"):
        RestorationTask(loss="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="groups: expected a divisor"):
        RestorationTask(moe=MOE.replace(top_k=2, num_experts=6))
    with pytest.raises(ValueError, match="moe.router: restoration cannot use router 'softmax'"):
        RestorationTask(moe=MOE.replace(router="softmax"))
    with pytest.raises(ValueError, match="preprocess.multiple"):
        RestorationTask(preprocess=RestorationPreprocess(multiple=6, tile=48, overlap=8))
    with pytest.raises(ValueError, match="degradation_loss_weight"):
        RestorationTask(degradation_loss_weight=-1.0)


def test_degradation_loss_decreases_on_a_toy_problem() -> None:
    """Noise, darkening and haze are told apart by the per-image routers within a few steps."""
    task = small_task(degradation_loss_weight=1.0)
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(12, 3, 16, 16, generator=g) * 0.5 + 0.25
    deg = torch.arange(12) % 3
    noisy = (clean + 0.3 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    degraded = torch.where((deg == 0)[:, None, None, None], noisy,
                           torch.where((deg == 1)[:, None, None, None], clean * 0.2, 0.4 * clean + 0.6))
    batch = {"input": degraded, "target": clean, "degradation": deg}
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)

    def ce() -> torch.Tensor:
        task(batch)
        return torch.stack([torch.nn.functional.cross_entropy(lg, deg) for lg in task.model.group_logits()]).mean()

    first = ce().item()
    for _ in range(12):
        opt.zero_grad()
        out = task(batch)
        task.task_loss(out, batch).backward()
        opt.step()
    assert ce().item() < 0.5 * first
    assert (task(batch)["logits"].argmax(-1) == deg).float().mean() >= 11 / 12  # the router tells them apart


# ----------------------------------------------------------------------------------- predict
def test_predict_input_kinds(tmp_path) -> None:
    from PIL import Image

    task = small_task(seed=1)
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(21, 35, 3), dtype=np.uint8)
    out = task.predict(u8)
    assert out["image"].dtype == np.uint8 and out["image"].shape == (21, 35, 3)
    assert out["degradation"] in ("denoise", "derain", "dehaze") and 0 < out["probability"] <= 1
    f32 = task.predict(u8.astype(np.float32) / 255)
    assert f32["image"].dtype == np.float32 and f32["image"].shape == (21, 35, 3)
    assert np.abs(f32["image"] * 255 - out["image"]).max() <= 0.51 + 1e-3  # the same result, rounded
    assert f32["degradation"] == out["degradation"]
    f64 = task.predict(u8.astype(np.float64) / 255)["image"]
    assert f64.dtype == np.float64 and float(f64.min()) >= 0 and float(f64.max()) <= 1  # clamped at predict
    u16 = task.predict(u8.astype(np.uint16) * 257)["image"]  # 16-bit data keeps its range
    assert u16.dtype == np.uint16 and np.abs(u16 / 65535 - f32["image"]).max() < 1e-4
    # batch [N, H, W, 3]: per image decisions, same as one at a time
    batch = task.predict(np.stack([u8, u8[::-1].copy()]))
    assert batch["image"].shape == (2, 21, 35, 3) and len(batch["degradation"]) == 2
    np.testing.assert_array_equal(batch["image"][0], out["image"])
    # torch tensors are channels first, returned as tensors of the same dtype
    t = task.predict(torch.from_numpy(u8).permute(2, 0, 1).float() / 255)
    assert isinstance(t["image"], torch.Tensor) and t["image"].shape == (3, 21, 35)
    np.testing.assert_allclose(t["image"].permute(1, 2, 0).numpy(), f32["image"], atol=1e-6)
    t4 = task.predict(torch.rand(2, 3, 16, 20, dtype=torch.float64))["image"]
    assert t4.dtype == torch.float64 and t4.shape == (2, 3, 16, 20)
    # grayscale: repeated to RGB, returned as the BT.601 luma of the restored RGB
    gray = u8[..., 0]
    g = task.predict(gray)["image"]
    rgb = task.predict(np.repeat(gray[..., None], 3, axis=-1).astype(np.float32) / 255)["image"]
    assert g.shape == (21, 35) and g.dtype == np.uint8
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert np.abs(g.astype(np.float32) - 255 * luma).max() <= 0.51 + 1e-3
    assert task.predict(gray[..., None])["image"].shape == (21, 35, 1)
    # RGBA: alpha set aside and re-attached unchanged
    rgba = np.concatenate([u8, rng.integers(0, 256, size=(21, 35, 1), dtype=np.uint8)], axis=-1)
    a = task.predict(rgba)["image"]
    assert a.shape == (21, 35, 4) and np.array_equal(a[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(a[..., :3], out["image"])
    # files: PNG (lossless: as the array) and JPEG
    Image.fromarray(u8).save(tmp_path / "x.png")
    Image.fromarray(u8).save(tmp_path / "x.jpg", quality=95)
    np.testing.assert_array_equal(task.predict(tmp_path / "x.png")["image"], out["image"])
    assert task.predict(str(tmp_path / "x.jpg"))["image"].shape == (21, 35, 3)
    # tiny images are reflect-padded up to the multiple
    assert task.predict(u8[:1, :1])["image"].shape == (1, 1, 3)
    assert task.predict(u8[:5, :3])["image"].shape == (5, 3, 3)


@pytest.mark.parametrize("image,error,match", [
    (np.full((8, 8, 3), np.nan, dtype=np.float32), ValueError, "image: contains NaN"),
    (np.full((8, 8, 3), np.inf), ValueError, "image: contains NaN"),
    (np.full((8, 8, 3), 1.5, dtype=np.float32), ValueError, r"image: expected float values in \[0, 1\]"),
    (-torch.ones(3, 8, 8), ValueError, r"image: expected float values in \[0, 1\]"),
    (np.zeros((8, 8, 3), dtype=np.int32), TypeError, "image: expected dtype"),
    (np.zeros((8, 8, 3), dtype=bool), TypeError, "image: expected dtype"),
    (torch.zeros(3, 8, 8, dtype=torch.int64), TypeError, "image: expected dtype"),
    ([[0.5, 0.5]], TypeError, "image: expected a numpy array"),
    (np.zeros((1, 1, 8, 8, 3), dtype=np.uint8), ValueError, "image: expected"),
    (np.zeros((8, 8, 2), dtype=np.uint8), ValueError, "C in"),
    (np.zeros((0, 8, 3), dtype=np.uint8), ValueError, "non-empty"),
    (np.zeros((2, 8, 0, 3), dtype=np.uint8), ValueError, "non-empty"),
])
def test_predict_bad_input(image, error, match) -> None:
    with pytest.raises(error, match=match):
        small_task().predict(image)


def test_predict_bad_paths(tmp_path) -> None:
    task = small_task()
    with pytest.raises(FileNotFoundError, match="image: no such file"):
        task.predict(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="image: cannot read"):
        task.predict(tmp_path / "notes.png")


def test_reflect_pad() -> None:
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert reflect_pad(x, 2, 7)[0, 0, 0].tolist() == [0, 1, 2, 1, 0, 1, 2]  # reflection, repeated
    assert reflect_pad(torch.ones(1, 3, 1, 1), 16, 16).shape == (1, 3, 16, 16)


def test_predict_whole_image_equals_model_on_padded_image() -> None:
    """600x900 with tile >= the padded size: one pass of the model on the reflect-padded image."""
    task = small_task(seed=3, preprocess=RestorationPreprocess(multiple=16, tile=912, overlap=32))
    image = np.random.default_rng(1).random((600, 900, 3)).astype(np.float32)
    out = task.predict(image)
    x = reflect_pad(torch.from_numpy(image).permute(2, 0, 1)[None], 608, 912)
    with torch.no_grad():
        expected = task.model.eval()(x)[0, :, :600, :900].clamp(0, 1).permute(1, 2, 0).numpy()
        probs = torch.softmax(task.model.last_logits[0], -1)
    np.testing.assert_allclose(out["image"], expected, rtol=0, atol=1e-5)
    assert out["probability"] == pytest.approx(probs.max().item(), abs=1e-6)


def test_tiled_predict_is_close_to_untiled_with_one_decision_per_image() -> None:
    h, w = 200, 300
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    smooth = np.stack([0.5 + 0.3 * np.sin(3 * xx + 2 * yy), 0.5 + 0.2 * np.cos(4 * yy), 0.4 + 0.3 * xx * yy], -1)
    smooth = smooth.astype(np.float32)
    whole = small_task(seed=4, preprocess=RestorationPreprocess(multiple=16, tile=304, overlap=32))
    tiled = small_task(seed=4, preprocess=RestorationPreprocess(multiple=16, tile=128, overlap=32))
    calls: list[tuple[tuple[int, ...], list[torch.Tensor]]] = []
    tiled.model.register_forward_hook(
        lambda m, args, out: calls.append((tuple(args[0].shape), [g.clone() for g in m.group_logits()])))
    a, b = whole.predict(smooth), tiled.predict(smooth)
    tiles = len(calls) // 2  # first pass: decisions per tile, second: restoration under the mean decision
    assert tiles == 2 * 3 and all(shape == (1, 3, 128, 128) for shape, _ in calls)  # bounded by the tile
    forced = torch.stack([torch.stack(g) for _, g in calls[:tiles]]).mean(0)
    for _, g in calls[tiles:]:
        torch.testing.assert_close(torch.stack(g), forced)  # the same decision for every tile
    diff = np.abs(a["image"] - b["image"])
    assert diff.mean() < 2e-3 and diff.max() < 3e-2, (diff.mean(), diff.max())
    hard = small_task(seed=4, preprocess=RestorationPreprocess(multiple=16, tile=128, overlap=0)).predict(smooth)
    assert np.abs(a["image"] - hard["image"]).max() > 2 * diff.max()  # blending hides the seams
    assert b["degradation"] == a["degradation"] and b["probability"] == pytest.approx(a["probability"], abs=0.02)


def test_fit_and_validate_with_lightning(tmp_path) -> None:
    """A two-step fit with validation through Lightning: logging, routing maps and figures."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    class Batches(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return hand_batch(3, (32, 32), seed=i)

    loader = DataLoader(Batches(), batch_size=None)
    task = small_task()
    trainer = Trainer(accelerator="cpu", max_steps=2, limit_val_batches=2, num_sanity_val_steps=0,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, log_every_n_steps=1)
    trainer.fit(task, loader, loader)
    logged = trainer.callback_metrics
    assert {"val/psnr", "val/ssim_y", "val/psnr_derain", "val/degradation_routing_acc"} <= set(logged)
    assert any(p.name.startswith("degradation_x_group") for p in tmp_path.rglob("*.png"))
