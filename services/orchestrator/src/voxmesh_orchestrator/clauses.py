"""Cut a streaming LLM reply into short speakable clauses.

The first clause goes out as early as it is safe to speak (a comma or a
sentence end after a few words), so synthesis starts while the model is still
generating; later clauses end at sentence boundaries so the voice keeps a
natural prosody. Markdown, emoji and list markers never reach the voice.
"""

from __future__ import annotations

import re

_MARKDOWN = [
    (re.compile(r"```.*?```", re.S), " "),
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), " "),
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),
    (re.compile(r"[*_~#>|]+"), " "),
    (re.compile(r"(^|\n)\s*(?:[-+•]|\d+[.)])\s+"), r"\1"),
    (re.compile(r"[\U0001F000-\U0001FAFF\u2600-\u27BF]"), " "),
]
_SENTENCE_END = re.compile(r"[.!?;:](?=\s)|\n")
_SOFT_BREAK = re.compile(r",(?=\s)")


def speakable(text: str) -> str:
    for pattern, repl in _MARKDOWN:
        text = pattern.sub(repl, text)
    return re.sub(r"\s+", " ", text).strip()


class ClauseChunker:
    def __init__(self, first_min_words: int = 3, min_words: int = 6, max_words: int = 30) -> None:
        self.first_min_words = first_min_words
        self.min_words = min_words
        self.max_words = max_words
        self._buf = ""
        self._emitted = 0

    def push(self, piece: str) -> list[str]:
        """Feed generated text; returns the clauses that are complete."""
        self._buf += piece
        out: list[str] = []
        while True:
            clause = self._take()
            if clause is None:
                return out
            if clause:
                out.append(clause)

    def flush(self) -> list[str]:
        rest = speakable(self._buf)
        self._buf = ""
        if rest:
            self._emitted += 1
            return [rest]
        return []

    def _take(self) -> str | None:
        want = self.first_min_words if self._emitted == 0 else self.min_words
        for match in _SENTENCE_END.finditer(self._buf):
            cut = match.end()
            head = self._buf[:cut]
            if len(head.split()) >= min(want, 2) or match.group() == "\n":
                return self._cut(cut)
        if self._emitted == 0:
            for match in _SOFT_BREAK.finditer(self._buf):
                if len(self._buf[: match.end()].split()) >= want:
                    return self._cut(match.end())
        words = self._buf.split(" ")
        if len(words) > self.max_words:  # a run-on: cut at a word boundary
            return self._cut(len(" ".join(words[: self.max_words])))
        return None

    def _cut(self, at: int) -> str:
        head, self._buf = self._buf[:at], self._buf[at:]
        text = speakable(head)
        if text:
            self._emitted += 1
        return text
