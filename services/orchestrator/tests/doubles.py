"""Test doubles for the orchestrator's timeline tests (virtual time). The real
SessionStore is tested against a real redis-server in test_store.py; the real
llm in the e2e tests."""

from __future__ import annotations

import asyncio
import json

from voxmesh.v1 import orchestrator_pb2 as opb
from voxmesh.v1 import stt_pb2


class InMemorySessionStoreDouble:
    """Same interface and idempotency semantics as store.SessionStore."""

    def __init__(self) -> None:
        self.histories: dict[str, list[dict]] = {}
        self.turns: dict[str, set[str]] = {}
        self.state: dict[str, dict[str, str]] = {}
        self.tools: dict[str, dict[str, dict]] = {}
        self.meta: dict[str, dict] = {}
        self.events: list[dict] = []
        self.r = self  # for xadd

    async def xadd(self, key, fields, maxlen=None):
        self.events.append({"key": key, **fields})

    async def ensure_session(self, sid, agent):
        existed = sid in self.meta
        self.meta.setdefault(sid, {"agent": agent})
        return existed

    async def history(self, sid):
        return [json.loads(json.dumps(m)) for m in self.histories.get(sid, [])]

    async def take_over(self, sid, replica):
        self.meta.setdefault(sid, {})["orchestrator"] = replica
        self.epochs = getattr(self, "epochs", {})
        self.epochs[sid] = self.epochs.get(sid, 0) + 1
        return self.epochs[sid]

    async def begin_reply(self, sid, reply_turn, epoch=None):
        st = self.state.setdefault(sid, {})
        for f in [f for f in st if f[:2] in ("c:", "p:", "h:")]:
            del st[f]
        st.update(reply_turn=reply_turn, reply_status="generating")

    async def set_reply(self, sid, reply_turn, fields, epoch=None):
        st = self.state.setdefault(sid, {})
        if st.get("reply_turn") != reply_turn:
            return False
        st.update({k: str(v) for k, v in fields.items()})
        return True

    async def commit_message(self, sid, turn_id, message, epoch=None, **state):
        if turn_id in self.turns.setdefault(sid, set()):
            return False
        self.turns[sid].add(turn_id)
        self.histories.setdefault(sid, []).append({**message, "turn_id": turn_id})
        self.state.setdefault(sid, {}).update({k: str(v) for k, v in state.items()})
        return True

    async def is_committed(self, sid, turn_id):
        return turn_id in self.turns.get(sid, set())

    async def cut_assistant(self, sid, turn_id, heard):
        for m in reversed(self.histories.get(sid, [])):
            if m["turn_id"] == turn_id and m["role"] == "assistant":
                m["content"] = heard
                m["interrupted"] = True
                return True
        return False

    async def set_turn_state(self, sid, **fields):
        self.state.setdefault(sid, {}).update({k: str(v) for k, v in fields.items()})

    async def turn_state(self, sid):
        return dict(self.state.get(sid, {}))

    async def save_tool_result(self, sid, key, result):
        self.tools.setdefault(sid, {})[key] = result

    async def tool_result(self, sid, key):
        return self.tools.get(sid, {}).get(key)


class ScriptedLlmDouble:
    """Streams a scripted reply word by word at a fixed token interval; records
    every call and whether it was cancelled."""

    def __init__(self, reply: str, token_s: float = 0.02, route: str = "none") -> None:
        self.reply = reply
        self.token_s = token_s
        self.route = route
        self.calls: list[dict] = []
        self.cancelled = 0

    async def generate(self, sid, messages, **kw):
        self.calls.append({"messages": messages, **kw})
        try:
            for i, word in enumerate(self.reply.split(" ")):
                await asyncio.sleep(self.token_s)
                yield word if i == 0 else " " + word
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def complete(self, sid, messages, **kw):
        self.calls.append({"messages": messages, **kw})
        await asyncio.sleep(self.token_s)
        return self.route


class EdgeDouble:
    """Plays Say clauses like the edge would: after `synth_s` for the first
    clause, at `chars_per_s`, reporting Playback every 100 ms with the heard
    prefix cut at a word; honours Interrupt and Resume."""

    def __init__(self, conv_holder: dict, synth_s: float = 0.15, chars_per_s: float = 15.0) -> None:
        self.holder = conv_holder
        self.synth_s = synth_s
        self.cps = chars_per_s
        self.commands: list[opb.AgentCommand] = []
        self.queue: asyncio.Queue = asyncio.Queue()
        self.paused = asyncio.Event()
        self.paused.set()  # set = playing allowed
        self.stopped_turns: set[str] = set()
        self.seen: set[tuple[str, int]] = set()
        self.held: dict[str, list] = {}
        self.task: asyncio.Task | None = None

    async def send(self, cmd: opb.AgentCommand) -> None:
        self.commands.append(cmd)
        kind = cmd.WhichOneof("command")
        if kind == "say":
            key = (cmd.say.turn_id, cmd.say.clause_id)
            if key in self.seen:
                return  # the edge never says a clause twice
            self.seen.add(key)
            if cmd.say.provisional:
                self.held.setdefault(cmd.say.turn_id, []).append(cmd.say)
                return
            await self._enqueue(cmd.say)
        elif kind == "reply_committed":
            for say in self.held.pop(cmd.reply_committed.turn_id, []):
                await self._enqueue(say)
        elif kind == "reply_discarded":
            self.held.pop(cmd.reply_discarded.turn_id, None)
        elif kind == "interrupt":
            self.stopped_turns.add(cmd.interrupt.turn_id)
            self.paused.set()
        elif kind == "resume":
            self.paused.set()

    async def _enqueue(self, say) -> None:
        await self.queue.put(say)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._play())

    def said(self) -> list[str]:
        """Clauses that were (or are being) played, in order."""
        out = []
        for c in self.commands:
            kind = c.WhichOneof("command")
            if kind == "say" and not c.say.provisional and c.say.text not in out:
                out.append(c.say.text)
            elif kind == "reply_committed":
                out += [c2.say.text for c2 in self.commands if c2.WhichOneof("command") == "say"
                        and c2.say.provisional and c2.say.turn_id == c.reply_committed.turn_id]
        return out

    def pause(self) -> None:
        self.paused.clear()

    async def _play(self) -> None:
        await asyncio.sleep(self.synth_s)
        while not self.queue.empty():
            say = self.queue.get_nowait()
            played = 0.0
            total = len(say.text) / self.cps
            while played < total:
                await self.paused.wait()
                if say.turn_id in self.stopped_turns:
                    return
                await asyncio.sleep(0.1)
                if not self.paused.is_set() or say.turn_id in self.stopped_turns:
                    continue
                played = min(total, played + 0.1)
                pos = int(len(say.text) * played / total)
                cut = say.text.rfind(" ", 0, pos + 1) if played < total else len(say.text)
                heard = max(cut, 0)
                await self.holder["conv"].handle(opb.EdgeEvent(playback=opb.Playback(
                    turn_id=say.turn_id, clause_id=say.clause_id, heard_chars=heard,
                    played_ms=int(played * 1000), clause_done=played >= total)))

    def kinds(self) -> list[str]:
        return [c.WhichOneof("command") for c in self.commands]


def speech(kind: str, utt: int, **fields) -> opb.EdgeEvent:
    inner = {
        "speech_started": stt_pb2.SpeechStarted,
        "speech_stopped": stt_pb2.SpeechStopped,
        "interim": stt_pb2.Interim,
        "final": stt_pb2.Final,
        "end_of_turn": stt_pb2.EndOfTurn,
    }[kind](utterance_id=utt, **fields)
    return opb.EdgeEvent(speech=stt_pb2.TranscribeEvent(**{kind: inner}))
