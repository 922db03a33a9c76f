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

# Digits a spoken number word stands for, to count the digits of a number however
# Whisper wrote it ("4219", "4 2 1 9", "42-19", "four two one nine").
_UNIT_DIGITS = {w: 1 for w in "zero one two three four five six seven eight nine".split()}
_TWO_DIGIT_WORDS = frozenset(
    "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
)
_TENS_WORDS = frozenset("twenty thirty forty fifty sixty seventy eighty ninety".split())
# Words Whisper writes for a digit it heard as another word ("for two one nine",
# "oh one six", "for to one nine"); one counts as a digit only right before a
# spoken digit word or another such homophone that does.
_DIGIT_HOMOPHONES = frozenset("for to too won ate oh o".split())
_SEPARATORS = ".,?!;:\"'()"


@dataclass(frozen=True)
class Judgement:
    probability: float  # fused probability that the turn is complete
    required_silence_ms: int  # silence after the last word that ends the turn
    text_kind: str  # "hold" | "digits" | "final" | "neutral" | "empty"


def trailing_digit_count(text: str) -> int | None:
    """How many digits the number at the end of `text` has, counting "4219",
    "4 2 1 9", "42-19", "four two one nine", "for two one nine" and "forty two
    nineteen" alike (separating commas and hyphens do not end the number), or
    None when the text does not end in a plain digit string (no digits, or words
    like "hundred" whose digit count is not what was said)."""
    pieces: list[tuple[str, bool]] = []  # (word, followed by punctuation)
    for token in text.split():
        parts = [p for p in token.split("-") if p]
        for i, part in enumerate(parts):
            word = part.strip(_SEPARATORS).lower()
            punct = i == len(parts) - 1 and part.rstrip(_SEPARATORS) != part
            if word:
                pieces.append((word, punct))
    count = 0
    after: str | None = None  # the piece read right after the current one
    for word, punct in reversed(pieces):
        numeral = word.replace(",", "")
        if numeral.isdigit():
            count += len(numeral)
            kind = "numeral"
        elif word in _UNIT_DIGITS:
            count += 1
            kind = "unit"
        elif word in _TWO_DIGIT_WORDS:
            count += 2
            kind = "teen"
        elif word in _TENS_WORDS:
            count += 1 if after == "unit" else 2  # "forty two" is two digits, "forty" too
            kind = "tens"
        elif word in _DIGIT_HOMOPHONES and after in ("unit", "homophone") and not punct:
            # "for to one nine": a run of homophones counts when it leads into spoken digits
            count += 1
            kind = "homophone"
        elif word in ("hundred", "thousand", "million", "point") and count:
            return None
        else:
            break
        after = kind
    return count or None


def text_kind(text: str, complete_digit_counts: tuple[int, ...] = ()) -> str:
    t = text.strip()
    if not t:
        return "empty"
    if t.endswith(",") and complete_digit_counts and trailing_digit_count(t) in complete_digit_counts:
        # Whisper writes a digit list read one by one as "4, 2, 1, 9," (with 3 s of
        # encoder padding it usually adds the last comma too): that comma is list
        # punctuation, not the speaker trailing off, and the count says whether the
        # number is complete.
        return "number"
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
        # Unless the agent says a number of this length is complete (its order
        # numbers have 4 digits): then the digits say the turn may be over, with
        # or without the "?" (Smart Turn hears a flat question ending in a digit
        # list as unfinished; the digit count is the better evidence).
        if complete_digit_counts and trailing_digit_count(t) in complete_digit_counts:
            return "number"
        if t.endswith("?"):
            return "final"
        return "digits"
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
_TEXT_PRIOR = {"final": 0.9, "number": 0.9, "neutral": 0.5, "empty": 0.5}
_DOUBT_WEIGHT = {"final": 0.15, "number": 0.15, "neutral": 1.0, "empty": 1.0}
_SURE_INCOMPLETE = 0.1

# The decoder's probability of the last word (its lowest token, punctuation left
# out) below which the text rules are not trusted: the words may not be what was
# said ("about um" heard as "about him?", "him" at 0.43; "It is for uh" as "It is
# forever", 0.24; "I think" as "I think met.", ~0.3), so a closed sentence is no
# evidence the turn is over. On the bench's complete sentences the last word is
# at 0.84-1.0 unless Whisper misheard it ("ship to Kada?", 0.14).
TAIL_DOUBT_PROB = 0.5
# What such a turn waits at least, as a share of (max - min) silence: longer than
# a hesitation after a filler or a preposition (0.6-1.2 s), shorter than the
# maximum wait. 0.6 of 200..2000 ms = 1280 ms.
TAIL_DOUBT_WAIT = 0.6
# Both models sure the turn is over (Smart Turn at or above this, a closed
# sentence, a confident last word): the turn may end on less silence than
# min_silence_ms (fast_silence_ms), the commit Pipecat and LiveKit make on a
# confident model.
FAST_AUDIO_PROB = 0.9
FAST_TAIL_PROB = 0.8


def judge(
    p_audio: float,
    text: str,
    *,
    min_silence_ms: int,
    max_silence_ms: int,
    threshold: float,
    tail_prob: float = 1.0,
    complete_digit_counts: tuple[int, ...] = (),
    fast_silence_ms: int | None = None,
) -> Judgement:
    """`p_audio` < 0 means no audio judgement (the turn model failed); `tail_prob`
    is the decoder's probability of the text's last word (1.0: not known);
    `complete_digit_counts` the number lengths complete for this agent;
    `fast_silence_ms` (default min_silence_ms) what a turn both models are sure of
    waits."""
    kind = text_kind(text, complete_digit_counts)
    if kind in ("hold", "digits"):
        # Digit strings: people read numbers in groups with pauses, and a number
        # cut short is the costliest cut-off (a wrong order looked up).
        return Judgement(round(min(p_audio, 0.1), 4) if p_audio >= 0 else 0.0, max_silence_ms, kind)
    prior = _TEXT_PRIOR[kind]
    weight = _DOUBT_WEIGHT[kind]
    uncertain_tail = kind != "empty" and tail_prob < TAIL_DOUBT_PROB
    if uncertain_tail:
        # The text may not be what was said: it is no evidence either way.
        prior, weight = 0.5, 1.0
    if p_audio < 0:
        doubt, p = 0.5, prior
    else:
        doubt = min(1.0, max(0.0, (threshold - p_audio) / max(threshold, 1e-6)))
        p = 0.5 * p_audio + 0.5 * prior
        if kind == "final" and not uncertain_tail and p_audio < _SURE_INCOMPLETE:
            # The audio model is sure the speaker is mid-phrase: a closed sentence is
            # then as likely Whisper making a fragment whole ("I want the" ->
            # "I welcome to that.") as a flat reading of a real question, so the
            # wait grows towards the middle of the range. Not for a number of a
            # length the agent expects: Smart Turn hears the list-like reading of
            # digits as unfinished, and the digit count is the better evidence.
            weight += (0.5 - weight) * (_SURE_INCOMPLETE - p_audio) / _SURE_INCOMPLETE
    required = int(min_silence_ms + (max_silence_ms - min_silence_ms) * weight * doubt)
    if uncertain_tail:
        required = max(required, int(min_silence_ms + (max_silence_ms - min_silence_ms) * TAIL_DOUBT_WAIT))
        return Judgement(round(p, 4), required, "uncertain")
    fast = min_silence_ms if fast_silence_ms is None else min(fast_silence_ms, min_silence_ms)
    if kind == "final" and p_audio >= FAST_AUDIO_PROB and tail_prob >= FAST_TAIL_PROB:
        required = fast
    return Judgement(round(p, 4), required, kind)
