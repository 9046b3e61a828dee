"""Emotion task: synthetic conversations, batching, metric vs scikit-learn, padding invariance,
predict API and bad input, CLI fit/test/predict and loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
import torch
import yaml
from sklearn.metrics import f1_score

import mmoe
from mmoe.settings import MoESettings
from mmoe.cli import cli_main
from mmoe.datamodules.emotion.conversation import collate_conversations
from mmoe.datamodules import EmotionDataModule
from mmoe.datamodules.emotion.synthetic import (
    CLASSES, COMBINATION, EMOTION_WORDS, PROSODY, UTTERANCE_TYPES, VALENCE_WORDS, generate_conversations,
)
from mmoe.tasks import EmotionTask

SMALL = dict(dim=16, depth=1, fusion_depth=1, num_heads=2, hidden_dim=16,
             moe=MoESettings(num_experts=4, top_k=2), n_mels=16, patch=8)


def test_synthetic_conversations_carry_their_cues() -> None:
    convs = generate_conversations(60, seed=3)
    assert generate_conversations(60, seed=3)[5][2]["text"] == convs[5][2]["text"]
    np.testing.assert_array_equal(generate_conversations(60, seed=3)[7][1]["audio"], convs[7][1]["audio"])
    assert generate_conversations(60, seed=4)[5][2]["text"] != convs[5][2]["text"] or \
        not np.array_equal(generate_conversations(60, seed=4)[5][2]["audio"], convs[5][2]["audio"])
    utts = [u for c in convs for u in c]
    types = np.array([u["type"] for u in utts])
    assert set(types.tolist()) == set(range(len(UTTERANCE_TYPES)))
    loud = {c: [] for c in CLASSES}
    for conv in convs:
        assert conv[0]["type"] != UTTERANCE_TYPES.index("context")  # context needs a previous turn
        assert [u["speaker"] for u in conv[:4]] == ["A", "B", "A", "B"]
        for prev, u in zip(conv, conv[1:]):
            if UTTERANCE_TYPES[u["type"]] == "context":
                assert u["label"] == prev["label"]
        for u in conv:
            kind, label = UTTERANCE_TYPES[u["type"]], CLASSES[u["label"]]
            assert u["audio"].dtype == np.float32 and np.abs(u["audio"]).max() <= 1 and u["sample_rate"] == 16000
            if kind == "text":
                assert any(w in u["text"] for w in EMOTION_WORDS[label])
            if kind == "both":
                valence = [v for v, words in VALENCE_WORDS.items() if any(w in u["text"] for w in words)]
                assert len(valence) == 1 and label in COMBINATION[valence[0]]
            if kind == "speech":
                loud[label].append(20 * np.log10(np.sqrt(np.mean(u["audio"] ** 2))))
    # the speech cue is audible: measured loudness follows the class profiles
    means = {c: np.mean(v) for c, v in loud.items() if v}
    order = sorted(means, key=means.get)
    assert order == sorted(means, key=lambda c: PROSODY[c][2])


def test_datamodule_splits_by_conversation_and_batches_line_up() -> None:
    dm = EmotionDataModule(num_conversations=30, batch_size=4, val_fraction=0.2, test_fraction=0.2, seed=1)
    splits = dm.prepare_splits()
    ids = {k: {u["id"].rsplit("_u", 1)[0] for c in v for u in c} for k, v in splits.items()}
    assert len(splits["val"]) == 6 and len(splits["test"]) == 6 and len(splits["train"]) == 18
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    batch = next(iter(dm.test_dataloader()))
    convs = splits["test"][:4]
    valid = batch["utterance_index"] >= 0
    assert int(valid.sum()) == sum(len(c) for c in convs) == batch["audio"].shape[0] == batch["text"].shape[0]
    flat_labels = batch["labels"][valid]
    assert flat_labels.tolist() == [u["label"] for c in convs for u in c]
    row = int(batch["utterance_index"][1, 2])
    utt = convs[1][2]
    n = int(batch["audio_lengths"][row])
    assert n == len(utt["audio"])
    # int16 in memory, converted as wav files are (full scale 2**15, mmoe.inputs.audio.pcm_to_float)
    np.testing.assert_allclose(batch["audio"][row, :n].numpy(), utt["audio"] / 32768.0, atol=1e-6)
    assert (batch["audio"][row, n:] == 0).all()
    with pytest.raises(ValueError, match="dataset"):
        EmotionDataModule(dataset="crema")
    with pytest.raises(ValueError, match="root"):
        EmotionDataModule(dataset="meld")


def test_weighted_f1_matches_sklearn() -> None:
    task = EmotionTask(**SMALL)
    rng = np.random.default_rng(0)
    preds, targets = [], []
    metric = task.test_metrics
    for n in (7, 1, 30):  # several updates; class 5 never appears as a target
        t = rng.choice(5, size=n, p=[0.5, 0.2, 0.1, 0.1, 0.1])
        p = np.where(rng.random(n) < 0.6, t, rng.integers(0, 6, size=n))
        metric.update(torch.tensor(p), torch.tensor(t))
        preds.append(p), targets.append(t)
    p, t = np.concatenate(preds), np.concatenate(targets)
    out = metric.compute()
    assert out["weighted_f1"].item() == pytest.approx(f1_score(t, p, average="weighted"), abs=1e-6)
    assert out["accuracy"].item() == pytest.approx((p == t).mean(), abs=1e-6)
    per_class = f1_score(t, p, average=None, labels=range(6), zero_division=0)
    np.testing.assert_allclose(out["f1"].numpy(), per_class, atol=1e-6)


def test_backbone_padding_and_unimodal_attention() -> None:
    torch.manual_seed(0)
    block = mmoe.BlockSpec(mixer_options={"num_heads": 2}, hidden_dim=16, num_experts=4, top_k=2)
    bb = mmoe.MultimodalMoEBackbone(["a", "b"], dim=16, blocks=[block] * 2, cross_modal_attention=False).eval()
    a, b = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    mask = {"a": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool), "b": torch.ones(2, 3, dtype=torch.bool)}
    out = bb({"a": a, "b": b}, mask=mask)
    # padded tokens never reach the MoE: the layer routed 3 + 5 real "a" tokens and 3 + 3 "b" tokens
    assert bb.blocks[0].ffn.stats.tokens_per_modality.tolist() == [8, 6]
    # padding is invisible: the first sample equals a run on its 3 real "a" tokens alone
    alone = bb({"a": a[:1, :3], "b": b[:1]}, mask={"a": torch.ones(1, 3, dtype=torch.bool), "b": torch.ones(1, 3, dtype=torch.bool)})
    torch.testing.assert_close(out["a"][0, :3], alone["a"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["b"][0], alone["b"][0], rtol=1e-5, atol=1e-5)
    # no cross-modal attention: changing "b" leaves "a" untouched
    out2 = bb({"a": a, "b": torch.randn(2, 3, 16)}, mask=mask)
    torch.testing.assert_close(out2["a"], out["a"])
    assert not torch.allclose(out2["b"], out["b"])
    with pytest.raises(ValueError, match=r"mask\['a'\]"):
        bb({"a": a, "b": b}, mask={"a": torch.ones(2, 4, dtype=torch.bool)})


def _conversation(seed: int, turns: int) -> list[dict]:
    conv = generate_conversations(1, seed=seed, min_turns=turns, max_turns=turns)[0]
    return [{"audio": u["audio"], "sample_rate": 16000, "text": u["text"]} for u in conv]


def test_predictions_do_not_depend_on_batch_padding() -> None:
    torch.manual_seed(0)
    task = EmotionTask(**SMALL).eval()
    short, long = _conversation(1, 3), _conversation(2, 7)
    alone = task(collate_conversations([short], 16))
    both = task(collate_conversations([long, short], 16))
    torch.testing.assert_close(both["logits"][7:], alone["logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both["gate"][7:], alone["gate"], rtol=1e-4, atol=1e-5)
    # the context model sees the conversation: changing turn 0 changes turn 1's logits
    changed = [dict(short[0], text="i am so furious about the trip")] + short[1:]
    moved = task(collate_conversations([changed], 16))
    assert not torch.allclose(moved["logits"][1], alone["logits"][1])


def test_predict_api(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = EmotionTask(**SMALL)
    conv = _conversation(5, 4)
    out = task.predict(conv)
    assert len(out) == 4
    for r in out:
        assert r["label"] in CLASSES and abs(sum(r["probabilities"].values()) - 1) < 1e-5
        assert set(r["gate"]) == {"speech", "text", "cross"}
    # a wav path and an 8 kHz array resampled to 16 kHz give (nearly) what the 16 kHz array gives
    wav = tmp_path / "u0.wav"
    scipy.io.wavfile.write(wav, 16000, (conv[0]["audio"] * 32767).astype(np.int16))
    from_path = task.predict([{"audio": str(wav), "text": conv[0]["text"]}] + conv[1:])
    for a, b in zip(from_path, out):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=2e-3)
    low = torch.tensor(conv[1]["audio"])[::2].numpy()  # 8 kHz
    resampled = task.predict([conv[0], {"audio": low, "sample_rate": 8000, "text": conv[1]["text"]}] + conv[2:])
    assert resampled[1]["probabilities"] == pytest.approx(out[1]["probabilities"], abs=0.05)
    # empty text, silent and empty audio still get a prediction
    odd = task.predict([{"audio": np.zeros(16000, np.float32), "sample_rate": 16000, "text": ""},
                        {"audio": np.zeros(0, np.float32), "sample_rate": 16000, "text": "ok"}])
    assert len(odd) == 2 and all(np.isfinite(list(r["probabilities"].values())).all() for r in odd)


@pytest.mark.parametrize("conversation,error,match", [
    (3, TypeError, "conversation"),
    ([], ValueError, "conversation"),
    ([{}], ValueError, r"conversation\[0\]: expected 'text', 'audio'"),
    (["fine", {"audio": None, "text": None}], ValueError, r"conversation\[1\]"),
    ([{"text": "x", "sample_rate": 16000}], ValueError, r"conversation\[0\]\['sample_rate'\]"),
    (["ok", 5], TypeError, r"conversation\[1\]"),
    ([{"audio": np.zeros(10, np.float32), "text": "x"}], ValueError, "sample_rate"),
    ([{"audio": np.full(10, np.nan, np.float32), "sample_rate": 16000, "text": "x"}], ValueError, "NaN"),
    ([{"audio": np.zeros((2, 10), np.float32), "sample_rate": 16000, "text": "x"}], ValueError, "1-D"),
    ([{"audio": [0.0, 1.0], "sample_rate": 16000, "text": "x"}], TypeError, "audio"),
    ([{"audio": np.zeros(10, np.float32), "sample_rate": 16000, "text": 3}], TypeError, "text"),
    ([{"audio": np.zeros(10, np.float32), "sample_rate": -5, "text": "x"}], ValueError, "sample_rate"),
    ([{"audio": np.zeros(10, np.float32)}], ValueError, "sample_rate"),
    ([{"audio": torch.zeros(10), "text": "x"}], ValueError, "sample_rate"),  # tensors need a rate too
    ([{"audio": torch.full((10,), float("nan")), "sample_rate": 16000, "text": "x"}], ValueError, "NaN"),
    ([{"audio": torch.zeros(10, dtype=torch.bool), "sample_rate": 16000, "text": "x"}], TypeError, "real numbers"),
])
def test_predict_rejects_bad_input(conversation, error, match) -> None:
    task = EmotionTask(**SMALL)
    with pytest.raises(error, match=match):
        task.predict(conversation)


def test_bad_task_arguments() -> None:
    with pytest.raises(ValueError, match="modalities"):
        EmotionTask(modalities=["video"])
    with pytest.raises(ValueError, match="class_weights"):
        EmotionTask(class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="loss"):
        EmotionTask(loss="hinge")
    for name, value in (("fusion_depth", -1), ("focal_gamma", -1.0), ("cross_gate_cost", -0.1),
                        ("expert_loss_weight", float("nan")), ("dropout", 1.0)):
        with pytest.raises(ValueError, match=name):
            EmotionTask(**{name: value})
    with pytest.raises(ValueError, match="max_seconds"):
        EmotionDataModule(max_seconds=0)


def test_cross_gate_cost_adds_the_cross_experts_mean_gate_weight() -> None:
    torch.manual_seed(0)
    batch = collate_conversations([[dict(u, label=i % 6) for i, u in enumerate(_conversation(8, 4))]], 16)
    free = EmotionTask(**SMALL, dropout=0.0).eval()
    costly = EmotionTask(**SMALL, dropout=0.0, cross_gate_cost=0.3).eval()
    costly.load_state_dict(free.state_dict())
    out = free(batch)
    extra = costly.task_loss(out, batch) - free.task_loss(out, batch)
    cross = free.model.experts.index("cross")
    torch.testing.assert_close(extra, 0.3 * out["gate"][:, cross].mean())


@pytest.mark.parametrize("loss", ["ce", "focal"])
def test_losses_and_single_modality_models(loss: str) -> None:
    torch.manual_seed(0)
    batch = collate_conversations([[dict(u, label=i % 6) for i, u in enumerate(_conversation(3, 5))]], 16)
    for mods in (["speech"], ["text"], ["speech", "text"]):
        task = EmotionTask(modalities=mods, loss=loss, class_weights=[1, 2, 1, 1, 1, 1], **SMALL)
        out = task(batch)
        assert out["expert_logits"].shape == (5, 1 if len(mods) == 1 else 3, 6)
        task.task_loss(out, batch).backward()
        grads = [p.grad for n, p in task.named_parameters() if n.startswith("model.heads")]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_print_config_resolves_short_names(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--model", "EmotionTask", "--data", "EmotionDataModule", "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: mmoe.tasks.EmotionTask" in out


def test_optional_open_clip_text_encoder_runs_without_download() -> None:
    """The open_clip text transformer (random weights here: no download) feeds the text tokens."""
    torch.manual_seed(0)
    task = EmotionTask(text_encoder="ViT-B-32", **SMALL)
    batch = collate_conversations([[dict(u, label=1) for u in _conversation(6, 2)]], 16)
    out = task(batch)
    assert out["logits"].shape == (2, 6)
    task.task_loss(out, batch).backward()
    enc = task.model.text_embed
    assert enc.proj.weight.grad is not None and all(p.grad is None for p in enc.transformer.parameters())


def test_integer_pcm_arrays_are_converted_as_wav_files_are(tmp_path: Path) -> None:
    """One conversion for arrays and files, on every integer dtype (8-bit wav is unsigned)."""
    from mmoe.datamodules.emotion.conversation import prepare_audio

    rng = np.random.default_rng(0)
    wave = np.clip(rng.normal(0, 0.3, 4000), -0.99, 0.99)
    for dtype in (np.uint8, np.int16, np.int32, np.int8, np.uint16, np.int64):
        info = np.iinfo(dtype)
        half = (int(info.max) + 1) // 2 if info.min == 0 else int(info.max) + 1
        pcm = (np.round(wave * (half - 1)) + (half if info.min == 0 else 0)).astype(dtype)
        from_array = prepare_audio(pcm, 16000).numpy()
        np.testing.assert_allclose(from_array, wave, atol=2.0 / half + 1e-6, err_msg=str(dtype))
        torch_dtype = {np.uint8: torch.uint8, np.int16: torch.int16, np.int32: torch.int32, np.int8: torch.int8,
                       np.int64: torch.int64, np.uint16: torch.uint16}[dtype]
        np.testing.assert_array_equal(prepare_audio(torch.from_numpy(pcm).to(torch_dtype), 16000).numpy(), from_array)
        if dtype in (np.uint8, np.int16, np.int32):  # the sample types wav files hold
            path = tmp_path / f"{np.dtype(dtype).name}.wav"
            scipy.io.wavfile.write(path, 16000, pcm)
            np.testing.assert_array_equal(prepare_audio(str(path), None).numpy(), from_array)


def test_short_audio_alone_is_predicted() -> None:
    task = EmotionTask(**SMALL)
    for n in (0, 1, 150, 200, 201):
        out = task.predict([{"audio": np.zeros(n, np.float32), "sample_rate": 16000, "text": "hi"}])
        assert len(out) == 1 and abs(sum(out[0]["probabilities"].values()) - 1) < 1e-5


@pytest.mark.parametrize("name", ["mister_e", "speech_only", "text_only", "iemocap", "meld"])
def test_data_gives_the_model_its_classes(name: str) -> None:
    """The head's classes are the data's classes, in label order (linked, never typed twice)."""
    from mmoe.datamodules.emotion.readers import IEMOCAP_CLASSES, MELD_CLASSES

    cli = cli_main(["--config", f"emotion/{name}", "--trainer.logger", "false"], run=False)
    dataset = cli.datamodule.hparams.dataset
    expected = {"synthetic": CLASSES, "iemocap": IEMOCAP_CLASSES, "meld": MELD_CLASSES}[dataset]
    assert tuple(cli.model.pre.class_names) == tuple(expected)
    assert cli.model.model.heads[cli.model.model.experts[0]][-1].out_features == len(expected)
