"""Tools the agent may call, and how a small model calls them reliably.

A tool declares whether it is read-only (safe to run on an interim transcript
and to prefetch) or side-effecting (only on a committed turn, and after a
spoken confirmation when it says so). Arguments are typed; for typed arguments
the candidate values are extracted from what the user said, and the model
chooses among them under a grammar (constrained decoding). A 135M-parameter
model cannot be trusted to copy "four two one nine" into JSON; it can be
trusted to pick between "call lookup_order with 4219" and "no tool".
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

_DIGIT_WORDS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "to": "2", "too": "2", "three": "3",
    "four": "4", "for": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "ate": "8", "nine": "9",
}
_TOKEN = re.compile(r"[a-z]+|\d+")


_NUMERALS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


def digit_strings(text: str, min_len: int = 3) -> list[str]:
    """Digit strings a caller said, however the recognizer wrote them:
    "4219", "4-2-1-9", "4, 2, 1, 9", "four two one nine", "order for 2 1 9"."""
    runs: list[list[tuple[str, bool]]] = [[]]  # (digits, came from a homophone like "for")
    for tok in _TOKEN.findall(text.lower()):
        run = runs[-1]
        if tok.isdigit():
            run.append((tok, False))
        elif tok in _NUMERALS:
            run.append((_DIGIT_WORDS[tok], False))
        elif tok in _DIGIT_WORDS and run:
            # Homophones ("for", "to", "oh") count only inside a run of digits.
            run.append((_DIGIT_WORDS[tok], True))
        elif tok in _DIGIT_WORDS:
            run.append((_DIGIT_WORDS[tok], True))
        else:
            runs.append([])
    out: list[str] = []
    for run in runs:
        while run and run[-1][1]:  # a trailing homophone is a word ("order 42 for")
            run.pop()
        if not any(not homophone for _, homophone in run):
            continue
        digits = "".join(d for d, _ in run)
        if len(digits) >= min_len:
            out.append(digits)
        if run[0][1]:  # "for 4219": the leading "for" was probably the word
            rest = "".join(d for d, _ in run[1:])
            if len(rest) >= min_len:
                out.append(rest)
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "digits": a number the caller says
    description: str = ""


@dataclass
class Tool:
    name: str
    description: str
    params: tuple[Param, ...]
    handler: Callable[..., Awaitable[dict]]
    read_only: bool = True
    requires_confirmation: bool = False
    examples: tuple[tuple[str, dict | None], ...] = field(default=())
    # One worked exchange (caller text, the call, the reply from its result),
    # shown to the model before a real result: a small model follows a
    # demonstration far better than an instruction.
    demonstration: tuple[str, dict, str] | None = None

    # How tool results are introduced to the model ("Order system: ...").
    source: str = "Tool result"
    # Side-effecting tools are offered only when the caller said one of these
    # words (a deterministic guard before the model, which is weak at
    # negation: "don't cancel it" must not become a cancel).
    triggers: tuple[str, ...] = ()
    # Asked before a side-effecting call that requires confirmation.
    confirm_question: str = ""

    def offered(self, user_text: str) -> bool:
        if self.read_only or not self.triggers:
            return True
        words = set(re.findall(r"[a-z']+", user_text.lower()))
        return any(t in words for t in self.triggers)

    def calls(self, user_text: str) -> list["ToolCall"]:
        """Every call whose arguments the caller actually said."""
        cands = self.candidates(user_text)
        if any(not v for v in cands.values()):
            return []
        combos: list[dict] = [{}]
        for name, values in cands.items():
            combos = [{**c, name: v} for c in combos for v in values]
        return [ToolCall(self.name, c) for c in combos]

    def candidates(self, user_text: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in self.params:
            if p.kind == "digits":
                out[p.name] = digit_strings(user_text)
            else:
                raise ValueError(f"unsupported parameter kind {p.kind}")
        return out


@dataclass(frozen=True)
class ToolCall:
    tool: str
    args: dict

    def key(self) -> str:
        return json.dumps([self.tool, self.args], sort_keys=True)


def _gbnf_literal(s: str) -> str:
    return json.dumps(s)


def routing_grammar(tools: list[Tool], user_text: str, only: list[ToolCall] | None = None) -> tuple[str, list[ToolCall]] | None:
    """A GBNF grammar whose sentences are exactly the possible tool calls for
    this utterance (or `only` those) plus "none". None when no tool can apply
    (no candidate arguments), so no model call is needed at all."""
    options = only if only is not None else [c for tool in tools if tool.offered(user_text) for c in tool.calls(user_text)]
    if not options:
        return None
    alts = [_gbnf_literal(render_call(c)) for c in options] + [_gbnf_literal("none")]
    return "root ::= " + " | ".join(alts), options


def render_call(call: ToolCall) -> str:
    args = ", ".join(f"{k}={v}" for k, v in call.args.items())
    return f"{call.tool}({args})"


def parse_call(text: str, options: list[ToolCall]) -> ToolCall | None:
    text = text.strip()
    for c in options:
        if render_call(c) == text:
            return c
    return None


def routing_prompt(tools: list[Tool], history_text: str, user_text: str) -> list[dict]:
    lines = ["Decide if a tool is needed to answer the caller. Reply with one tool call or none.", "Tools:"]
    for t in tools:
        params = ", ".join(p.name for p in t.params)
        lines.append(f"- {t.name}({params}): {t.description}")
    shots: list[dict] = [{"role": "system", "content": "\n".join(lines)}]
    for t in tools:
        for said, args in t.examples:
            shots.append({"role": "user", "content": said})
            shots.append({"role": "assistant", "content": render_call(ToolCall(t.name, args)) if args else "none"})
    if history_text:
        shots.append({"role": "system", "content": f"Conversation so far: {history_text}"})
    shots.append({"role": "user", "content": user_text})
    return shots


class OrderStore:
    """The small order store that ships with the default agent. Cancelling
    changes this process's copy; the call itself is recorded per session in
    Redis (Conversation._run_tool), so it is never repeated."""

    def __init__(self, path: pathlib.Path) -> None:
        self.orders: dict[str, dict] = json.loads(path.read_text())

    async def cancel_order(self, order_id: str) -> dict:
        order = self.orders.get(str(order_id))
        if order is None:
            return {"order_id": order_id, "found": False}
        if order["status"] in ("delivered", "cancelled"):
            return {"order_id": order_id, "found": True, "cancelled": False, "status": order["status"]}
        order["status"] = "cancelled"
        return {"order_id": order_id, "found": True, "cancelled": True, "status": "cancelled"}

    async def lookup_order(self, order_id: str) -> dict:
        order = self.orders.get(str(order_id))
        if order is None:
            return {"order_id": order_id, "found": False}
        return {"order_id": order_id, "found": True, **order}


def describe_result(call: ToolCall, result: dict) -> str:
    """Tool results in plain words: a small model repeats a sentence far more
    faithfully than it reads JSON."""
    if call.tool == "lookup_order":
        oid = " ".join(result["order_id"])
        if not result.get("found"):
            return f"There is no order with number {oid}. Ask the caller to check the number."
        return (
            f"Order {oid} is {result['status']}. It contains {result['item']}, "
            f"shipped with {result['carrier']}, expected {result['eta']}."
        )
    if call.tool == "cancel_order":
        oid = " ".join(result["order_id"])
        if not result.get("found"):
            return f"There is no order with number {oid}. Nothing was cancelled."
        if result.get("cancelled"):
            return f"Order {oid} is now cancelled. The caller will not be charged."
        return f"Order {oid} cannot be cancelled because it is {result['status']}."
    return json.dumps(result)


def spoken_number(digits: str) -> str:
    return " ".join(digits)


def build_tools(names: tuple[str, ...], orders_path: pathlib.Path | None) -> list[Tool]:
    tools: list[Tool] = []
    store = None
    for name in names:
        if name in ("lookup_order", "cancel_order") and store is None:
            if orders_path is None:
                raise ValueError(f"{name} needs an order store (agent config 'orders')")
            store = OrderStore(orders_path)
        if name == "cancel_order":
            tools.append(
                Tool(
                    name="cancel_order",
                    description="cancel an order (only when the caller clearly asks to cancel it)",
                    params=(Param("order_id", "digits", "the order number"),),
                    handler=store.cancel_order,
                    read_only=False,
                    requires_confirmation=True,
                    source="Order system",
                    triggers=("cancel", "cancelled", "cancellation"),
                    confirm_question="Just to confirm, do you want me to cancel order {order_id}? Please say yes or no.",
                    examples=(
                        ("Please cancel order 1187.", {"order_id": "1187"}),
                        ("I want to cancel my order number 9041", {"order_id": "9041"}),
                    ),
                )
            )
            continue
        if name == "lookup_order":
            tools.append(
                Tool(
                    name="lookup_order",
                    description="look up the delivery status of an order by its number",
                    params=(Param("order_id", "digits", "the order number"),),
                    handler=store.lookup_order,
                    read_only=True,
                    source="Order system",
                    examples=(
                        ("Hi, where is my order 5530?", {"order_id": "5530"}),
                        ("What's the status of order 1 1 8 7", {"order_id": "1187"}),
                        ("My phone number is 555 1234, thanks for your help", None),
                    ),
                    demonstration=(
                        "Where is my order 5530?",
                        {"order_id": "5530"},
                        "Your order 5 5 3 0 is in transit with Parcelly Ground. It should arrive Friday.",
                    ),
                )
            )
        else:
            raise ValueError(f"unknown tool {name!r}")
    return tools
