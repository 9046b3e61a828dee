"""eSpeak NG speech synthesis through its C API (ctypes), from the ``espeakng-loader`` wheel.

The wheel ships ``libespeak-ng`` and its voice data; no system package is needed. The library
keeps global state, so one process-wide :class:`ESpeak` is used behind a lock.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

# espeak_AUDIO_OUTPUT (speak_lib.h)
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER
ESPEAK_RATE, ESPEAK_VOLUME, ESPEAK_PITCH, ESPEAK_RANGE = 1, 2, 3, 4
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
EE_OK = 0

SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    """One speaker's settings.

    Args:
        name: eSpeak voice name, a language with an optional variant, e.g. ``"en-us+f3"``.
        pitch: base pitch 0..100 (eSpeak's default 50).
        pitch_range: pitch range 0..100 (0 monotone).
        rate: speaking rate in words per minute (80..450).
    """

    name: str
    pitch: int = 50
    pitch_range: int = 50
    rate: int = 175


class ESpeak:
    """The eSpeak NG library, initialised once in synchronous mode with a collecting callback."""

    _instance: ESpeak | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib = self.lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise (espeak_Initialize returned {rate})")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []

        def collect(wav, numsamples, events):  # called from espeak_Synth, in this thread
            if numsamples > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
            return 0  # continue

        self._callback = SYNTH_CALLBACK(collect)  # kept referenced: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> ESpeak:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """Speech of ``text`` in ``voice`` as float32 in [-1, 1] at :attr:`sample_rate`."""
        with self._lock:
            lib = self.lib
            if lib.espeak_SetVoiceByName(voice.name.encode()) != EE_OK:
                raise ValueError(f"voice.name: eSpeak NG has no voice {voice.name!r}")
            for param, value in ((ESPEAK_RATE, voice.rate), (ESPEAK_PITCH, voice.pitch),
                                 (ESPEAK_RANGE, voice.pitch_range), (ESPEAK_VOLUME, 100)):
                lib.espeak_SetParameter(param, int(value), 0)
            self._chunks = []
            data = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(data)
            err = lib.espeak_Synth(buf, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            if err != EE_OK:
                raise RuntimeError(f"espeak_Synth failed with error {err} for {text[:40]!r}")
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0


def list_variants() -> list[str]:
    """Names of the voice variants shipped with the library (``voices/!v``), sorted."""
    from pathlib import Path

    import espeakng_loader

    root = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return sorted(p.name for p in root.iterdir() if p.is_file() and " " not in p.name)
