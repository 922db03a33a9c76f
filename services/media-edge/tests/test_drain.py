"""The order in which a draining edge moves its clients, on a scripted timeline
(virtual time): between turns first; near the end of the grace also while the
agent speaks, but never while the user is mid-utterance (the words not yet
transcribed would be lost with this edge); at the grace's end, everyone.

The sessions are TEST DOUBLES that say what their conversation is doing at each
moment; the drain itself is the real `Edge._drain`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from voxmesh_edge.app import Edge
from voxmesh_edge.settings import EdgeSettings

pytestmark = pytest.mark.looptime


@dataclass
class ScriptedSession:
    """A session double: `agent_speaks` and `user_speaks` are (start, end)
    seconds of the drain's timeline; the edge drain asks it what is going on."""

    id: str
    agent_speaks: tuple[float, float] = (0.0, 0.0)
    user_speaks: tuple[float, float] = (0.0, 0.0)
    t0: float = 0.0
    moved_at: float | None = None
    closed_at: float | None = None
    edge: Edge | None = None
    sent: list[dict] = field(default_factory=list)

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    def _during(self, span: tuple[float, float]) -> bool:
        return span[0] <= self._now() < span[1]

    def user_mid_turn(self) -> bool:
        return self._during(self.user_speaks)

    def idle(self) -> bool:
        return not self.user_mid_turn() and not self._during(self.agent_speaks)

    def send_client(self, msg: dict) -> None:
        self.sent.append(msg)
        if msg.get("type") == "move" and self.moved_at is None:
            self.moved_at = round(self._now(), 1)

    async def close(self) -> None:
        self.closed_at = round(self._now(), 1)
        assert self.edge is not None
        self.edge.sessions.pop(self.id, None)


async def drain(grace_s: float, mid_reply_s: float, *sessions: ScriptedSession) -> dict[str, float | None]:
    edge = Edge(EdgeSettings(drain_grace_s=grace_s, drain_mid_reply_s=mid_reply_s))
    t0 = asyncio.get_running_loop().time()
    for s in sessions:
        s.t0, s.edge = t0, edge
        edge.sessions[s.id] = s  # type: ignore[assignment]
    await edge._drain()
    assert not edge.sessions and all(s.sent == [{"type": "move", "reason": "edge draining"}] for s in sessions)
    assert all(s.closed_at == pytest.approx(s.moved_at + 0.5, abs=0.11) for s in sessions)  # the move message leaves first
    return {s.id: s.moved_at for s in sessions}


async def test_clients_move_between_turns_then_mid_reply_near_the_end_then_all():
    moved = await drain(
        10.0, 4.0,
        ScriptedSession("quiet-at-2", agent_speaks=(0, 2)),
        # The agent talks on and on; the user is quiet: moved when the last 4 s begin.
        ScriptedSession("long-reply", agent_speaks=(0, 60)),
        # The user talks over the agent from 5 s to 7.5 s: not moved mid-utterance,
        # but as soon as it ends (the reply itself no longer holds it).
        ScriptedSession("user-talks-over", agent_speaks=(0, 60), user_speaks=(5, 7.5)),
        # A user who never stops (or an unconfirmed turn that never is): the end of the grace.
        ScriptedSession("user-never-stops", agent_speaks=(0, 60), user_speaks=(1, 60)),
    )
    assert moved == {"quiet-at-2": 2.0, "long-reply": 6.0, "user-talks-over": 7.5, "user-never-stops": 10.0}


async def test_the_mid_reply_window_is_at_most_half_the_grace():
    # A 10 s mid-reply window in a 4 s grace: the first 2 s still wait for a pause.
    moved = await drain(4.0, 10.0, ScriptedSession("reply", agent_speaks=(0, 60)),
                        ScriptedSession("pause-at-1", agent_speaks=(0, 1), user_speaks=(3, 60)))
    assert moved == {"reply": 2.0, "pause-at-1": 1.0}


async def test_without_a_mid_reply_window_only_a_pause_or_the_grace_s_end_moves_a_client():
    moved = await drain(10.0, 0.0, ScriptedSession("reply", agent_speaks=(0, 60)),
                        ScriptedSession("pause-at-3", agent_speaks=(0, 3)))
    assert moved == {"reply": 10.0, "pause-at-3": 3.0}
