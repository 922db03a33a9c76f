"""A quick structural check of GBNF text, for error messages.

llama.cpp only answers "failed to parse grammar" (its detail goes to stderr), which
tells a caller nothing. This lint finds the usual mistakes so INVALID_ARGUMENT can
say what is wrong; llama.cpp stays the judge of validity.
"""

from __future__ import annotations

import re

_RULE_DEF = re.compile(r"^\s*([a-zA-Z0-9_-]+)\s*::=", re.M)
_IDENT = re.compile(r"[a-zA-Z_][a-zA-Z0-9_-]*")


def lint(text: str, root: str = "root") -> list[str]:
    problems: list[str] = []
    if not text.strip():
        return ["the grammar is empty"]
    defined = set(_RULE_DEF.findall(text))
    if root not in defined:
        problems.append(f"no '{root}' rule (a grammar starts at `{root} ::= ...`)")
    referenced: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#":  # comment to end of line
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif ch in "\"[":
            close = '"' if ch == '"' else "]"
            j = i + 1
            while j < n and text[j] != close:
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                line = text.count("\n", 0, i) + 1
                problems.append(f"unterminated {'string' if ch == chr(34) else 'character class'} on line {line}")
                break
            i = j + 1
        elif ch == "{":  # repetition count {m,n}
            j = text.find("}", i)
            i = n if j < 0 else j + 1
        else:
            m = _IDENT.match(text, i)
            if m:
                rest = text[m.end():]
                if not re.match(r"\s*::=", rest):
                    referenced.append(m.group(0))
                i = m.end()
            else:
                i += 1
    undefined = sorted({r for r in referenced if r not in defined})
    if undefined:
        problems.append("undefined rule(s): " + ", ".join(undefined))
    return problems
