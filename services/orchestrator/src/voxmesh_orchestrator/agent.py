"""Agent configuration: one YAML file says who the agent is (instructions,
voice), how turns are taken, how interruptions are judged and which tools it
may call. Packaged agents live in agents/; a path to any YAML file works too."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from importlib import resources

import yaml


@dataclass(frozen=True)
class TurnConfig:
    vad_threshold: float = 0.5
    min_speech_ms: int = 120
    min_silence_ms: int = 250
    max_silence_ms: int = 1200
    eou_threshold: float = 0.5
    # Lengths (in digits) of a number that is complete for this agent, e.g. (4,)
    # when its order numbers have 4 digits: a turn ending in such a number is
    # judged like a sentence instead of held to max_silence_ms; other digit runs
    # still hold (numbers read in groups). Empty: every trailing digit run holds.
    complete_digit_counts: tuple[int, ...] = ()

    def to_proto(self):
        """The stt TurnSettings the edge opens its stt stream with."""
        from voxmesh.v1 import stt_pb2

        return stt_pb2.TurnSettings(
            vad_threshold=self.vad_threshold, min_speech_ms=self.min_speech_ms, min_silence_ms=self.min_silence_ms,
            max_silence_ms=self.max_silence_ms, eou_threshold=self.eou_threshold,
            complete_digit_counts=list(self.complete_digit_counts),
        )


@dataclass(frozen=True)
class InterruptionConfig:
    min_words: int = 1
    false_interruption_timeout_ms: int = 1500
    backchannels: tuple[str, ...] = ("mm-hm", "mhm", "uh-huh", "yeah", "okay", "ok", "right")


@dataclass(frozen=True)
class LlmConfig:
    max_tokens: int = 80
    temperature: float = 0.0
    # Start generating when the user stops speaking, before the turn is
    # committed; adopted if the committed text is the same, else discarded.
    preemptive: bool = True
    # Characters of recent history sent with each request (about 4 per token;
    # the default fits SmolLM2's 4096-token context with room for the reply).
    history_chars: int = 8000


@dataclass(frozen=True)
class AgentConfig:
    name: str
    instructions: str
    voice: str = ""
    greeting: str = ""
    llm: LlmConfig = field(default_factory=LlmConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    interruptions: InterruptionConfig = field(default_factory=InterruptionConfig)
    tools: tuple[str, ...] = ()
    orders_path: pathlib.Path | None = None


class AgentConfigError(ValueError):
    pass


def _section(cls, raw: dict | None, where: str):
    raw = raw or {}
    known = {f for f in cls.__dataclass_fields__}
    unknown = set(raw) - known
    if unknown:
        raise AgentConfigError(f"{where}: unknown keys {sorted(unknown)}")
    if "backchannels" in raw:
        raw = {**raw, "backchannels": tuple(raw["backchannels"])}
    if "complete_digit_counts" in raw:
        counts = raw["complete_digit_counts"] or ()
        if not isinstance(counts, (list, tuple)) or not all(isinstance(n, int) and 0 < n <= 64 for n in counts):
            raise AgentConfigError(f"{where}: complete_digit_counts must be a list of digit counts, e.g. [4]")
        raw = {**raw, "complete_digit_counts": tuple(counts)}
    return cls(**raw)


def load_agent(name_or_path: str) -> AgentConfig:
    path = pathlib.Path(name_or_path)
    if not path.suffix:
        path = pathlib.Path(str(resources.files("voxmesh_orchestrator") / "agents" / f"{name_or_path}.yaml"))
    if not path.is_file():
        raise AgentConfigError(f"agent config not found: {name_or_path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not raw.get("instructions"):
        raise AgentConfigError(f"{path}: 'instructions' is required")
    orders = raw.get("orders")
    return AgentConfig(
        name=raw.get("name", path.stem),
        instructions=" ".join(str(raw["instructions"]).split()),
        voice=raw.get("voice", "") or "",
        greeting=raw.get("greeting", "") or "",
        llm=_section(LlmConfig, raw.get("llm"), f"{path}: llm"),
        turn=_section(TurnConfig, raw.get("turn"), f"{path}: turn"),
        interruptions=_section(InterruptionConfig, raw.get("interruptions"), f"{path}: interruptions"),
        tools=tuple(raw.get("tools") or ()),
        orders_path=(path.parent / orders) if orders else None,
    )
