"""Make real test speech with espeak-ng (and sox for resampling/padding)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import wave

import numpy as np

# The order question the end-to-end and fault tests ask, whose answer ("out for
# delivery") proves the digits were heard. tiny.en on espeak-ng's voice is on a
# knife edge with it ("...for to one nine" or "...one line/eye" depending on the
# clip's end, the forced prefix and the encoder padding: the short windows write
# "line" at p ~0.2, which the stt decodes again on the long window, see stt
# settings.pause_pad_s). "Can you check my
# order four two one nine?" was tried and was no better through the stt-kill
# replay ("...for to one line?" at 3 s of padding, "...for two well?" at 8 s).
ORDER_QUESTION = "Where is my order four two one nine?"


def require_tools() -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install espeak-ng sox)")


def say_to_wav(
    text: str,
    path: str | pathlib.Path,
    rate: int = 16000,
    voice: str = "en-us",
    wpm: int = 160,
    lead_silence: float = 0.0,
    tail_silence: float = 0.0,
) -> pathlib.Path:
    """Speak `text` into a 16-bit mono WAV at `rate`, padded with silence."""
    require_tools()
    path = pathlib.Path(path)
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(raw), text], check=True, capture_output=True)
    cmd = ["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", str(path)]
    if lead_silence or tail_silence:
        cmd += ["pad", str(lead_silence), str(tail_silence)]
    subprocess.run(cmd, check=True, capture_output=True)
    raw.unlink(missing_ok=True)
    return path


def read_pcm16(path: str | pathlib.Path) -> tuple[np.ndarray, int]:
    """(int16 mono samples, sample rate) of a 16-bit WAV."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels())[:, 0]
        return data.copy(), w.getframerate()


def write_pcm16(path: str | pathlib.Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over normalized words / reference length."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)] / max(1, len(ref))


_NUMBER_WORDS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}


def normalize_words(text: str) -> list[str]:
    """Lower case, no punctuation, digits spelled one per word ("4219" -> 4 2 1 9)."""
    out: list[str] = []
    for raw in text.lower().replace("-", " ").split():
        word = "".join(ch for ch in raw if ch.isalnum() or ch == "'")
        if not word:
            continue
        if word.isdigit():
            out.extend(word)
        else:
            out.append(_NUMBER_WORDS.get(word, word))
    return out
