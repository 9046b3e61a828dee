"""Generated conversations of raw speech and text for emotion recognition (the embedded default).

Six IEMOCAP-style classes with IEMOCAP-like imbalance. Each conversation alternates two
speakers; every utterance has a 16 kHz waveform (a harmonic source whose pitch contour,
loudness and syllable rate follow a prosody profile, shaped by vowel formants, plus noise) and
an English sentence. Each utterance is of one *type*, which says where its label can be read:

* ``speech``: the prosody profile is the label's (pitch level and range, energy, speaking
  rate); the sentence is neutral filler.
* ``text``: the sentence carries emotion words of the label (or, with ``everyday_text``, an
  everyday sentence of the label, :mod:`.everyday`); the prosody is the profile of a random class
  (uninformative).
* ``both``: the sentence has only a valence (positive / neutral / negative words) and the
  prosody only an arousal level (low / mid / high); the label is the cell of
  :data:`COMBINATION` -- each modality alone leaves three candidates.
* ``context``: a short backchannel ("mm-hmm") with random prosody; the speaker keeps the
  emotion of the previous turn, so only the conversation decides the label.

All randomness comes from ``numpy.random.default_rng(seed)``: the same arguments give the
same conversations.
"""

from __future__ import annotations

import numpy as np

from mmoe.datamodules.emotion.everyday import everyday_sentence

CLASSES: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "excited", "frustrated")
# IEMOCAP 6-class counts (neu 1708, hap 648, sad 1084, ang 1103, exc 1041, fru 1849)
CLASS_PRIOR = np.array([1708, 648, 1084, 1103, 1041, 1849], dtype=float) / 7433
UTTERANCE_TYPES: tuple[str, ...] = ("speech", "text", "both", "context")
TYPE_PRIOR = np.array([0.22, 0.22, 0.38, 0.18])
SAMPLE_RATE = 16_000
NUM_HARMONICS = 20

# pitch level (Hz), pitch range (relative), loudness (dBFS), rate (syllables / s)
PROSODY = {
    "neutral": (135.0, 0.06, -28.0, 4.0),
    "happy": (205.0, 0.30, -22.0, 4.6),
    "sad": (105.0, 0.04, -36.0, 2.4),
    "angry": (175.0, 0.14, -13.0, 5.6),
    "excited": (250.0, 0.34, -16.0, 6.4),
    "frustrated": (150.0, 0.20, -19.0, 3.0),
}
# arousal levels of ``both`` utterances: pitch level comes from a random class
AROUSAL = {"low": (0.05, -34.0, 2.6), "mid": (0.16, -24.0, 4.2), "high": (0.32, -14.0, 6.2)}
VALENCES = ("positive", "neutral", "negative")
# rows: valence, columns: arousal (low, mid, high); rows and columns each hold 3 distinct labels
COMBINATION = {
    "positive": ("happy", "neutral", "excited"),
    "neutral": ("neutral", "frustrated", "angry"),
    "negative": ("sad", "angry", "frustrated"),
}

EMOTION_WORDS = {
    "neutral": ["calm", "indifferent", "unbothered", "composed"],
    "happy": ["happy", "glad", "delighted", "cheerful", "pleased"],
    "sad": ["sad", "heartbroken", "miserable", "depressed", "gloomy"],
    "angry": ["furious", "angry", "outraged", "livid", "enraged"],
    "excited": ["thrilled", "excited", "ecstatic", "pumped", "elated"],
    "frustrated": ["frustrated", "fed up", "annoyed", "exasperated", "stuck"],
}
EMOTION_TEMPLATES = ["i am so {w} about {o}", "honestly i feel {w} about {o}", "{o} makes me {w}",
                     "i am {w} right now", "you know i am really {w}"]
VALENCE_WORDS = {
    "positive": ["good news", "a nice surprise", "the promotion", "a great result", "the wedding"],
    "neutral": ["the schedule", "the paperwork", "the address", "the bus", "the forms"],
    "negative": ["the accident", "a bad result", "the layoffs", "the broken car", "the rejection"],
}
VALENCE_TEMPLATES = ["we need to talk about {o}", "so it is about {o}", "they told me about {o}",
                     "did you hear about {o}", "it was {o} again"]
FILLER_SUBJECTS = ["i", "we", "my sister", "the manager", "our neighbour", "they"]
FILLER_VERBS = ["moved", "checked", "picked up", "looked at", "wrote down", "mentioned"]
FILLER_OBJECTS = ["the package", "the table", "the tickets", "a letter", "the keys", "the report"]
FILLER_TIMES = ["this morning", "on tuesday", "yesterday", "after lunch", "last week", "today"]
BACKCHANNELS = ["mm-hmm", "yeah", "uh-huh", "right", "okay", "i see", "hmm"]
TOPICS = ["the meeting", "the trip", "my job", "the house", "this weekend", "the results"]

# vowel formants (F1, F2, F3) in Hz
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])


def _sentence(kind: str, label: str, valence: str | None, rng: np.random.Generator, everyday: float = 0.0) -> str:
    pick = lambda xs: xs[rng.integers(len(xs))]  # noqa: E731
    if kind == "text":
        if everyday > 0 and rng.random() < everyday:  # no draw at 0: the grammar's conversations stay as they were
            return everyday_sentence(label, rng)
        return pick(EMOTION_TEMPLATES).format(w=pick(EMOTION_WORDS[label]), o=pick(TOPICS))
    if kind == "both":
        return pick(VALENCE_TEMPLATES).format(o=pick(VALENCE_WORDS[valence]))
    if kind == "context":
        return pick(BACKCHANNELS)
    return f"{pick(FILLER_SUBJECTS)} {pick(FILLER_VERBS)} {pick(FILLER_OBJECTS)} {pick(FILLER_TIMES)}"


def synthesize_speech(pitch: float, pitch_range: float, loudness_db: float, rate: float, duration: float,
                      rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A voiced-speech-like waveform (float32, peak <= 1) with the given prosody.

    Syllables at ``rate`` per second, each a raised-cosine loudness envelope over a vowel
    (formant-shaped harmonics of the pitch contour); the contour has a random accent per
    syllable scaled by ``pitch_range`` and a slight declination; loudness is RMS in dBFS.
    """
    n = max(1, int(duration * sample_rate))
    t = np.arange(n) / sample_rate
    n_syl = max(1, int(round(duration * rate)))
    # syllable onsets roughly evenly spaced (jittered), so the rate is audible
    onsets = (np.arange(n_syl) + rng.uniform(-0.15, 0.15, n_syl)) * duration / n_syl
    onsets = np.clip(onsets, 0, duration)
    syl = np.clip(np.searchsorted(onsets, t, side="right") - 1, 0, n_syl - 1)
    syl_len = duration / n_syl
    phase_in = np.clip((t - onsets[syl]) / (0.8 * syl_len), 0, 1)
    envelope = np.sin(np.pi * phase_in) ** 2
    accents = rng.uniform(-1, 1, n_syl)
    contour = pitch * (1 + pitch_range * accents[syl] * np.sin(np.pi * phase_in)) * (1 - 0.08 * t / max(duration, 1e-3))
    contour = contour * (1 + 0.01 * rng.standard_normal(n_syl)[syl])  # per-syllable jitter
    phase = 2 * np.pi * np.cumsum(contour) / sample_rate
    vowels = VOWELS[rng.integers(len(VOWELS), size=n_syl)]  # [n_syl, 3]
    # formant gains per syllable and harmonic, at the syllable's mean pitch
    syl_pitch = np.bincount(syl, weights=contour, minlength=n_syl) / np.maximum(np.bincount(syl, minlength=n_syl), 1)
    k = np.arange(1, NUM_HARMONICS + 1)
    freq = syl_pitch[:, None] * k  # [n_syl, K]
    width = 80.0 + 40.0 * np.arange(3)
    gain = np.exp(-0.5 * ((freq[:, :, None] - vowels[:, None, :]) / width) ** 2).sum(-1) + 0.3 / k
    gain = np.where(freq < sample_rate / 2 - 200, gain, 0.0)[syl]  # [n, K]
    # sin(k * phase) by the Chebyshev recurrence (one sin and cos for all harmonics)
    s_prev, s_cur, two_cos = np.zeros(n), np.sin(phase), 2 * np.cos(phase)
    signal = np.zeros(n)
    for j in range(NUM_HARMONICS):
        signal += gain[:, j] * s_cur
        s_prev, s_cur = s_cur, two_cos * s_cur - s_prev
    signal *= envelope
    signal += 0.02 * rng.standard_normal(n) * signal.std()
    rms = np.sqrt(np.mean(signal**2)) + 1e-12
    signal *= 10 ** (loudness_db / 20) / rms
    signal += 10 ** (-50 / 20) * rng.standard_normal(n)  # background noise floor
    return np.clip(signal, -1, 1).astype(np.float32)


def generate_conversations(num_conversations: int, seed: int, min_turns: int = 6, max_turns: int = 12,
                           sample_rate: int = SAMPLE_RATE, everyday_text: float = 0.0) -> list[list[dict]]:
    """``num_conversations`` conversations, each a list of utterance dicts
    ``{"id", "speaker", "text", "label", "type", "audio" (float32 waveform), "sample_rate"}``.

    ``everyday_text``: the share of text-cued turns whose sentence comes from the everyday templates
    (:mod:`.everyday`) instead of the keyword grammar."""
    rng = np.random.default_rng(seed)
    conversations = []
    for c in range(num_conversations):
        turns = int(rng.integers(min_turns, max_turns + 1))
        # per-speaker voice: pitch scale around 1 (emotion cues dominate speaker differences)
        voice = rng.uniform(0.9, 1.1, 2)
        conv, prev = [], None
        for u in range(turns):
            speaker = u % 2
            kind = UTTERANCE_TYPES[rng.choice(4, p=TYPE_PRIOR)] if u else UTTERANCE_TYPES[rng.choice(3, p=TYPE_PRIOR[:3] / TYPE_PRIOR[:3].sum())]
            label = prev if kind == "context" else CLASSES[rng.choice(6, p=CLASS_PRIOR)]
            valence = None
            if kind == "both":
                cells = [(v, a) for v in VALENCES for a, lab in zip(AROUSAL, COMBINATION[v]) if lab == label]
                valence, arousal = cells[rng.integers(len(cells))]
                pitch = PROSODY[CLASSES[rng.integers(6)]][0]
                rng_, loud, rate = AROUSAL[arousal]
                prosody = (pitch, rng_, loud, rate)
            elif kind == "speech":
                prosody = PROSODY[label]
            else:
                prosody = PROSODY[CLASSES[rng.integers(6)]]
            pitch, pitch_range, loud, rate = prosody
            duration = rng.uniform(0.35, 0.6) if kind == "context" else rng.uniform(0.9, 1.5)
            audio = synthesize_speech(
                pitch * voice[speaker] * rng.uniform(0.95, 1.05), pitch_range * rng.uniform(0.85, 1.15),
                loud + rng.uniform(-1.5, 1.5), rate * rng.uniform(0.92, 1.08), duration, rng, sample_rate)
            conv.append({"id": f"conv{seed}_{c:05d}_u{u:02d}", "speaker": "AB"[speaker],
                         "text": _sentence(kind, label, valence, rng, everyday_text), "label": CLASSES.index(label),
                         "type": UTTERANCE_TYPES.index(kind), "audio": audio, "sample_rate": sample_rate})
            prev = label
        conversations.append(conv)
    return conversations
