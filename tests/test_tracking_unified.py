"""One tracker for every X (issue 29, item 1): the X-kind prompt (off by default, so older files
load; on, it changes the answer by kind and is ignored without X), the data renders one scene per
seed for every X with the thermal and event properties the docstring states, modality="all"
batches carry each pair's X kind, and predict/track take the kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from mmoe.datamodules.tracking.datamodule import X_KIND_IDS, TrackingDataModule
from mmoe.datamodules.tracking.synthetic import MODALITIES, render_sequence
from mmoe.settings import MoESettings
from mmoe.tasks.tracking import OneStreamMoETracker, TrackingTask
from mmoe.tasks.tracking.model import X_KINDS

TINY = dict(template_size=32, search_size=64, patch_size=8, dim=32, depth=2, num_heads=2, hidden_dim=32,
            moe=MoESettings(num_experts=2, top_k=1), slots=2)


def crops(B=3):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(B, 3, 32, 32, generator=g), torch.rand(B, 3, 64, 64, generator=g),
            torch.rand(B, 1, 32, 32, generator=g), torch.rand(B, 1, 64, 64, generator=g))


def test_prompt_is_opt_in_and_old_state_dicts_fit():
    torch.manual_seed(0)
    old = OneStreamMoETracker(**TINY)
    assert not any("x_kind" in k for k in old.state_dict())
    torch.manual_seed(0)
    new = OneStreamMoETracker(**TINY, modality_prompt=True)
    missing = set(new.state_dict()) - set(old.state_dict())
    assert missing == {"x_kind_embed"} and new.x_kind_embed.shape == (len(X_KINDS), 32)
    # a zero prompt is the model without one: a file's weights give the same maps after adding it
    new.load_state_dict(old.state_dict(), strict=False)
    z, s, zx, sx = crops()
    torch.testing.assert_close(new(z, s, zx, sx, torch.tensor([1, 2, 3]))["score"], old(z, s, zx, sx)["score"])


def test_prompt_changes_the_answer_by_kind():
    torch.manual_seed(0)
    model = OneStreamMoETracker(**TINY, modality_prompt=True).eval()
    with torch.no_grad():
        model.x_kind_embed.normal_(0, 1)
    z, s, zx, sx = crops(2)
    depth = model(z, s, zx, sx, torch.tensor([1, 1]))["score"]
    thermal = model(z, s, zx, sx, torch.tensor([2, 2]))["score"]
    assert not torch.allclose(depth, thermal)
    # per sample: a mixed batch gives each sample its own kind's answer
    mixed = model(z, s, zx, sx, torch.tensor([1, 2]))["score"]
    torch.testing.assert_close(mixed[0], depth[0])
    torch.testing.assert_close(mixed[1], thermal[1])
    # without X the kind is "none" whatever is passed
    torch.testing.assert_close(model(z, s, x_kind=torch.tensor([3, 2]))["score"],
                               model(z, s, x_kind=torch.tensor([0, 0]))["score"])
    with pytest.raises(ValueError, match="x_kind: expected \\[2\\] int64"):
        model(z, s, zx, sx, torch.tensor([1.0, 2.0]))


def test_x_kind_ids_agree_with_the_model():
    assert [X_KINDS[X_KIND_IDS[m]] for m in (None, *MODALITIES)] == [None, *MODALITIES]


def test_one_scene_for_every_x():
    seqs = {m: render_sequence(4, "test", m, length=24) for m in MODALITIES}
    d = seqs["depth"]
    for m in ("thermal", "event"):
        np.testing.assert_array_equal(seqs[m].frames, d.frames)
        np.testing.assert_array_equal(seqs[m].boxes, d.boxes)
        np.testing.assert_array_equal(seqs[m].present, d.present)
    assert not np.allclose(seqs["thermal"].x, d.x)


def test_thermal_target_is_warm_unless_crossover():
    """Thermal: the target is warmer than its surroundings in ordinary frames; the renderer's
    crossover frames (some sequences) bring it to its surroundings' level."""
    contrasts, crossover_seen = [], False
    for seed in range(12):
        s = render_sequence(seed, "train", "thermal", length=30, return_masks=True)
        for t in range(1, 30):
            m = s.masks[t] > 0.9
            if m.sum() < 30:
                continue
            ring = (gaussian_filter(m.astype(float), 4) > 0.05) & ~(gaussian_filter(m.astype(float), 1) > 0.01)
            if ring.sum() < 30:
                continue
            c = float(s.x[t][m].mean() - s.x[t][ring].mean())
            contrasts.append(c)
            crossover_seen |= abs(c) < 0.05
    contrasts = np.array(contrasts)
    assert np.median(contrasts) > 0.3, np.median(contrasts)
    assert crossover_seen, "some frames show the target at its surroundings' temperature"


def test_events_follow_motion_with_noise():
    s = render_sequence(2, "train", "event", length=20, return_masks=True)
    assert set(np.unique(s.x)) <= {-1.0, 0.0, 1.0}
    assert (s.x[0] == 0).all()  # no previous frame
    fires = np.abs(s.x[1:]) > 0
    near = np.stack([gaussian_filter(m, 2) > 0.02 for m in s.masks[1:]])  # around the moving target
    assert fires[near].mean() > 5 * fires[~near].mean()
    assert 0.001 < fires[~near].mean() < 0.05  # background noise events, at about the stated rate


def test_all_modalities_data():
    dm = TrackingDataModule(modality="all", train_sequences=3, val_sequences=3, test_sequences=3, sequence_length=6,
                            frame_size=(64, 80), template_size=32, search_size=64, samples_per_epoch=24,
                            batch_size=24)
    assert dm.preprocess.modality == "depth"  # the default X of a unified model
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x_kind"].dtype == torch.int64 and set(batch["x_kind"].tolist()) <= {1, 2, 3}
    assert len(set(batch["x_kind"].tolist())) >= 2
    assert [dm.val_dataset[i]["modality"] for i in range(3)] == list(MODALITIES)
    rgb = TrackingDataModule(modality="thermal", use_x=False, train_sequences=2, sequence_length=6,
                             frame_size=(64, 80), samples_per_epoch=4, batch_size=4)
    rgb.setup("fit")
    b = next(iter(rgb.train_dataloader()))
    assert (b["x_kind"] == 0).all() and not b["has_x"].any()
    with pytest.raises(ValueError, match="modality: expected one of"):
        TrackingDataModule(modality="lidar")


def test_unified_task_takes_the_modality():
    torch.manual_seed(0)
    task = TrackingTask(preprocess={"template_size": 32, "search_size": 64, "modality": "depth"}, dim=16, depth=2,
                        num_heads=2, hidden_dim=16, moe={"num_experts": 2}, slots=1, modality_prompt=True).eval()
    with torch.no_grad():
        task.model.x_kind_embed.normal_(0, 1)
    s = render_sequence(1, "val", "thermal", length=6, size=(80, 96))
    by_kind = {m: task.predict(s.frames, s.boxes[0], s.x, modality=m)["boxes"] for m in MODALITIES}
    np.testing.assert_allclose(task.predict(s.frames, s.boxes[0], s.x)["boxes"], by_kind["depth"])  # the default
    assert not np.allclose(by_kind["thermal"], by_kind["depth"])
    tracker = task.track(s.frames[0], s.boxes[0], s.x[0], modality="thermal")
    box, _ = tracker.update(s.frames[1], s.x[1])
    np.testing.assert_allclose(box, by_kind["thermal"][1])
    with pytest.raises(TypeError, match="modality_prompt: expected a bool"):
        TrackingTask(modality_prompt="yes")
