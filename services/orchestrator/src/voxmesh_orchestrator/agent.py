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
