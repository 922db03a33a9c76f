"""How long a pause must last before the turn ends: the audio turn model's
probability fused with what the transcript says.

Why both: Smart Turn reads prosody, and on flat or synthetic voices it calls
"Where is my order four two one nine?" incomplete (p=0.01) and "So I was wondering
if" complete (p=0.99). The transcript of the turn so far is already decoded when
the pause is judged (the speculative final, which the Final needs anyway), and its
last words say a lot that prosody misses: a turn that ends in "if", "the", "um" or
a trailing "..." is not over, a sentence Whisper closed with "?" or "." probably is,
and a digit string may be read in groups with pauses between them.

The result is a silence requirement rather than a yes/no: a confident "complete"
ends the turn after min_silence_ms, a text that cannot end a turn holds to
max_silence_ms, and anything between waits proportionally longer the less likely
the turn is complete.
"""

from __future__ import annotations

from dataclasses import dataclass

# Words after which an English turn is almost never over, whatever the
# punctuation: fillers, conjunctions, articles, possessives, most prepositions.
HOLD_WORDS = frozenset(
    """um umm uh uhh er erm hmm mm ah eh and but or because cause if than whether to of for
    with from into onto the a an my your our their his her its""".split()
)
# Words that usually continue, unless Whisper closed the sentence after them
# ("Turn it on." / "I think so." / "Yes, I can.").
WEAK_HOLD_WORDS = frozenset(
    """so then that which who whose about in on at by as like this these those some any is
    are was were am be been being can could would should will shall may might must do does
    did have has had i we he she they it's i'm i'd i'll we're you're let's""".split()
)
NUMBER_WORDS = frozenset(
    "zero oh one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand".split()
)

NUMBER_LEADS = frozenset("is number code was are be zip pin extension at".split())


@dataclass(frozen=True)
class Judgement:
    probability: float  # fused probability that the turn is complete
    required_silence_ms: int  # silence after the last word that ends the turn
    text_kind: str  # "hold" | "digits" | "final" | "neutral" | "empty"


def text_kind(text: str) -> str:
    t = text.strip()
    if not t:
        return "empty"
    if t.endswith(("...", "…", ",", "-", "—")):
        return "hold"  # Whisper's own "trailing off" marks
    last = "".join(ch for ch in t.split()[-1].lower() if ch.isalnum() or ch == "'")
    if not last:
        return "neutral"
    closed = t.endswith(("?", ".", "!"))
    if last in HOLD_WORDS or (last in WEAK_HOLD_WORDS and not closed):
        return "hold"
    words = t.split()
    prev = "".join(ch for ch in words[-2].lower() if ch.isalnum()) if len(words) > 1 else ""
    # A number word counts as a digit string only after a digit or a word that
    # introduces a number ("...is four"), not in "the blue one".
    spoken_number = last in NUMBER_WORDS and (prev in NUMBER_WORDS or prev in NUMBER_LEADS or prev.isdigit())
    if last.isdigit() or any(ch.isdigit() for ch in last) or spoken_number:
        # "...four two one nine?" is a question about the number; "...is 4." is
        # often a number still being read (Whisper closes it with a period anyway).
        return "final" if t.endswith("?") else "digits"
    if closed:
        return "final"
    return "neutral"


# What the transcript alone says about completeness, by kind (for the reported
# probability), and how much of the audio model's doubt it lets through (for the
# wait). Whisper's closing punctuation is a strong sign of a finished sentence:
# on our espeak set it is right where Smart Turn calls 9 of 16 complete questions
# unfinished, so a doubted closed sentence waits at most ~0.45 s (still longer
# than a comma pause: "...my subscription, [0.25 s] please."). Text without
# closing punctuation keeps all of the audio model's doubt: Whisper leaves it off
# mostly where the speaker stopped mid-phrase ("My phone number is five five five").
_TEXT_PRIOR = {"final": 0.9, "neutral": 0.5, "empty": 0.5}
_DOUBT_WEIGHT = {"final": 0.15, "neutral": 1.0, "empty": 1.0}
_SURE_INCOMPLETE = 0.1


def judge(p_audio: float, text: str, *, min_silence_ms: int, max_silence_ms: int, threshold: float) -> Judgement:
    """`p_audio` < 0 means no audio judgement (the turn model failed)."""
    kind = text_kind(text)
    if kind in ("hold", "digits"):
        # Digit strings: people read numbers in groups with pauses, and a number
        # cut short is the costliest cut-off (a wrong order looked up).
        return Judgement(round(min(p_audio, 0.1), 4) if p_audio >= 0 else 0.0, max_silence_ms, kind)
    prior = _TEXT_PRIOR[kind]
    weight = _DOUBT_WEIGHT[kind]
    if p_audio < 0:
        doubt, p = 0.5, prior
    else:
        doubt = min(1.0, max(0.0, (threshold - p_audio) / max(threshold, 1e-6)))
        p = 0.5 * p_audio + 0.5 * prior
        if kind == "final" and p_audio < _SURE_INCOMPLETE:
            # The audio model is sure the speaker is mid-phrase: a closed sentence is
            # then as likely Whisper making a fragment whole ("I want the" ->
            # "I welcome to that.") as a flat reading of a real question, so the
            # wait grows towards the middle of the range.
            weight += (0.5 - weight) * (_SURE_INCOMPLETE - p_audio) / _SURE_INCOMPLETE
    required = int(min_silence_ms + (max_silence_ms - min_silence_ms) * weight * doubt)
    return Judgement(round(p, 4), required, kind)
