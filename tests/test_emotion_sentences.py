"""The everyday-sentence emotion benchmark's data (issue 31) and the training text generator:
sets large and balanced in the task's classes, held-out apart, never produced by the generator;
the generator's sentences; the VADER mapping of the benchmark."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks import emotion_sentences as bench
from mmoe.datamodules.emotion.everyday import TEMPLATES, everyday_sentence
from mmoe.datamodules.emotion.synthetic import CLASSES, UTTERANCE_TYPES, generate_conversations

ROOT = Path(__file__).resolve().parents[1]


def _norm(text: str) -> str:
    return re.sub(r"[^a-z' ]", "", text.lower()).strip()


def test_sentence_sets_are_large_balanced_and_apart() -> None:
    texts, labels = bench.read_sentences(bench.SENTENCES)
    held_texts, held_labels = bench.read_sentences(bench.HELDOUT)
    assert len(texts) >= 150 and len(held_texts) >= 40
    for ls in (labels, held_labels):
        counts = Counter(ls)
        assert set(counts) == set(CLASSES)  # the task's class names, all of them
        assert max(counts.values()) - min(counts.values()) <= 1
    assert len({_norm(t) for t in texts}) == len(texts) and len({_norm(t) for t in held_texts}) == len(held_texts)
    assert not {_norm(t) for t in texts} & {_norm(t) for t in held_texts}
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) <= 4 and max(lengths) >= 12  # varied length
    assert sum(bool(re.search(r"\b(not|n't|never|nobody|nothing)\b", t.lower())) for t in texts) >= 10  # negation


def test_no_benchmark_sentence_comes_from_the_training_text() -> None:
    """Neither set is produced by the everyday templates (every slot filling enumerated) or the keyword grammar."""
    from mmoe.datamodules.emotion import everyday

    bench_texts = {_norm(t) for p in (bench.SENTENCES, bench.HELDOUT) for t in bench.read_sentences(p)[0]}
    prefixes = {_norm(p) for p in everyday.PREFIXES}
    generated: set[str] = set()
    for templates in TEMPLATES.values():
        for template in templates:
            fills = [""]
            for part in re.split(r"(\{\w+\})", template):
                m = re.fullmatch(r"\{(\w+)\}", part)
                fills = [f + v for f in fills for v in (everyday.SLOTS[m.group(1)] if m else [part])]
            generated.update(_norm(f) for f in fills)
    with_prefix = {(p + " " + g).strip() for p in prefixes for g in generated}
    assert not bench_texts & (generated | with_prefix)
    grammar = {_norm(u["text"]) for c in generate_conversations(200, seed=1, everyday_text=0.5) for u in c}
    assert not bench_texts & grammar


def test_everyday_sentences_are_their_class_and_reproducible() -> None:
    rng = np.random.default_rng(0)
    for label in CLASSES:
        text = everyday_sentence(label, rng)
        assert text and "{" not in text and text[-1] in ".!?"
    a = generate_conversations(30, seed=5, everyday_text=1.0)
    b = generate_conversations(30, seed=5, everyday_text=1.0)
    assert [u["text"] for c in a for u in c] == [u["text"] for c in b for u in c]
    text_type = UTTERANCE_TYPES.index("text")
    cued = [u for c in a for u in c if u["type"] == text_type]
    # every text-cued turn is a filled template of its own class
    patterns = {lab: [re.compile(r"^([\w ]+, |so |man, )?" + re.sub(r"\\\{\w+\\\}", ".+", re.escape(t)) + r"[.!?]$")
                      for t in TEMPLATES[lab]] for lab in CLASSES}
    for u in cued:
        assert any(p.match(u["text"]) for p in patterns[CLASSES[u["label"]]]), u["text"]
    # the default keeps the keyword grammar's conversations exactly
    old = generate_conversations(10, seed=7)
    assert [u["text"] for c in old for u in c] == [u["text"] for c in generate_conversations(10, seed=7, everyday_text=0.0)
                                                   for u in c]


def test_vader_mapping_uses_valence_and_punctuation() -> None:
    pytest.importorskip("vaderSentiment")
    preds = bench.vader_predict(["The bus is at nine.", "I love this, it is wonderful.",
                                 "This is wonderful, we won!", "You ruined everything, I hate you!",
                                 "I am so sad and lonely and depressed.", "This is slightly annoying."])
    assert preds == ["neutral", "happy", "excited", "angry", "sad", "frustrated"]


def test_score_matches_sklearn() -> None:
    from sklearn.metrics import f1_score

    labels = ["happy", "sad", "sad", "angry", "neutral", "excited"]
    preds = ["happy", "sad", "angry", "angry", "sad", "happy"]
    s = bench.score(labels, preds, list(CLASSES))
    assert s["weighted_f1"] == pytest.approx(f1_score(labels, preds, average="weighted", zero_division=0), abs=1e-4)
    assert s["accuracy"] == pytest.approx(0.5, abs=1e-4)
