"""A replica takes a conversation over from the store (virtual time): the
turn in flight is answered exactly once, whatever moment the previous replica
died at. The previous replica's death is `close()` (its tasks cancelled, its
memory gone); the store is all the successor gets."""

from __future__ import annotations

import asyncio

import pytest

from doubles import EdgeDouble, InMemorySessionStoreDouble, ScriptedLlmDouble, speech
from voxmesh.v1 import orchestrator_pb2 as opb
from voxmesh_orchestrator.agent import load_agent
from voxmesh_orchestrator.conversation import Conversation
from voxmesh_orchestrator.tools import build_tools

pytestmark = pytest.mark.looptime

FOUR = "Your order is out for delivery. It left the depot at nine. The driver is two stops away. It should arrive before six."
CLAUSES = ["Your order is out for delivery.", "It left the depot at nine.", "The driver is two stops away.", "It should arrive before six."]


class ResumingEdge(EdgeDouble):
    """Like the real edge: a Say for a clause it already has is ignored (a
    successor re-sends what it cannot know was received), EndOfReply twice too."""

    def __init__(self, holder: dict, **kw) -> None:
        super().__init__(holder, **kw)
        self.played_says: list[tuple[str, int, str]] = []

    async def send(self, cmd: opb.AgentCommand) -> None:
        if cmd.WhichOneof("command") == "say" and not cmd.say.provisional:
            key = (cmd.say.turn_id, cmd.say.clause_id)
            if key not in self.seen:
                self.played_says.append((*key, cmd.say.text))
        await super().send(cmd)  # EdgeDouble ignores a clause it already has


def new_conv(store, llm, edge, holder) -> Conversation:
    agent = load_agent("support")
    conv = Conversation("s1", agent, build_tools(agent.tools, agent.orders_path), store, llm, edge.send, replica="r")
    holder["conv"] = conv
    return conv


async def user_says(conv, utt: int, text: str) -> None:
    await conv.handle(speech("speech_started", utt))
    await conv.handle(speech("final", utt, text=text))
    await conv.handle(speech("end_of_turn", utt, probability=0.9))


def says(edge) -> list[str]:
    return [c.say.text for c in edge.commands if c.WhichOneof("command") == "say"]


async def wait_for(cond, limit: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_turn_committed_before_any_clause_is_answered_once_by_the_successor():
    store, holder = InMemorySessionStoreDouble(), {}
    edge = ResumingEdge(holder)
    llm = ScriptedLlmDouble(FOUR, token_s=0.5)
    conv = new_conv(store, llm, edge, holder)
    await conv.start(resumed=False)
    await user_says(conv, 1, "Where is my order?")
    await asyncio.sleep(0.1)  # generating, nothing said yet
    await conv.close()  # the replica dies
    assert says(edge) == []
    conv2 = new_conv(store, ScriptedLlmDouble(FOUR, token_s=0.02), edge, holder)
    await conv2.start(resumed=True)
    # the edge replays what it could not confirm: the same turn again
    await user_says(conv2, 1, "Where is my order?")
    await asyncio.sleep(20)
    assert [t for _, _, t in edge.played_says] == CLAUSES
    hist = await store.history("s1")
    assert [(m["role"], m["content"]) for m in hist] == [("user", "Where is my order?"), ("assistant", FOUR)]
    assert conv2.reply is None and (await store.turn_state("s1"))["reply_status"] == "played"


async def test_reply_cut_mid_generation_is_continued_not_repeated():
    store, holder = InMemorySessionStoreDouble(), {}
    edge = ResumingEdge(holder)
    llm = ScriptedLlmDouble(FOUR, token_s=0.3)
    conv = new_conv(store, llm, edge, holder)
    await conv.start(resumed=False)
    await user_says(conv, 1, "Where is my order?")
    await wait_for(lambda: len(says(edge)) == 2)
    await conv.close()  # two clauses said (the edge is playing them), the rest never generated
    assert not await store.is_committed("s1", "a1")
    llm2 = ScriptedLlmDouble(FOUR, token_s=0.02)
    conv2 = new_conv(store, llm2, edge, holder)
    await conv2.start(resumed=True)
    await asyncio.sleep(20)
    # every clause played once, in order: the successor sent only clauses 2 and 3
    assert [t for _, _, t in edge.played_says] == CLAUSES
    assert [(tid, cid) for tid, cid, _ in edge.played_says] == [("a1", 0), ("a1", 1), ("a1", 2), ("a1", 3)]
    hist = await store.history("s1")
    assert [(m["role"], m["content"]) for m in hist] == [("user", "Where is my order?"), ("assistant", FOUR)]
    assert len(llm2.calls) == 1 and llm2.calls[0]["seed"]  # regenerated once, reproducibly
    assert llm2.calls[0]["seed"] == llm.calls[0]["seed"]


async def test_a_new_edge_gets_the_unplayed_clauses_of_a_finished_reply():
    """Edge loss: the reply was generated and committed; the user heard the first
    clause whole and part of the second. The new edge gets clauses 1..3 (the
    partly heard one from its start); nothing is generated again."""
    store, holder = InMemorySessionStoreDouble(), {}
    edge = ResumingEdge(holder, chars_per_s=15)
    llm = ScriptedLlmDouble(FOUR, token_s=0.01)
    conv = new_conv(store, llm, edge, holder)
    await conv.start(resumed=False)
    await user_says(conv, 1, "Where is my order?")
    await wait_for(lambda: 0 in conv.reply.played if conv.reply else False)
    await asyncio.sleep(0.5)
    assert await store.is_committed("s1", "a1")
    await conv.close()
    edge.task.cancel()  # the edge dies with its audio
    edge2 = ResumingEdge(holder, chars_per_s=15)
    llm2 = ScriptedLlmDouble("something else entirely.", token_s=0.01)
    conv2 = new_conv(store, llm2, edge2, holder)
    await conv2.start(resumed=True)
    await asyncio.sleep(20)
    assert [cid for _, cid, _ in edge2.played_says] == [1, 2, 3]
    assert "end_of_reply" in edge2.kinds() and llm2.calls == []
    hist = await store.history("s1")
    assert [m["role"] for m in hist] == ["user", "assistant"] and hist[1]["content"] == FOUR
    assert conv2.reply is None


async def test_a_reply_heard_whole_or_interrupted_is_left_alone():
    store, holder = InMemorySessionStoreDouble(), {}
    edge = ResumingEdge(holder)
    conv = new_conv(store, ScriptedLlmDouble(FOUR, token_s=0.01), edge, holder)
    await conv.start(resumed=False)
    await user_says(conv, 1, "Where is my order?")
    await asyncio.sleep(20)
    assert conv.reply is None
    await conv.close()
    # an interruption of the second reply
    conv = new_conv(store, ScriptedLlmDouble(FOUR, token_s=0.01), edge, holder)
    await conv.start(resumed=True)
    await user_says(conv, 2, "And the other one?")
    await wait_for(lambda: len(edge.played_says) >= 5)
    await asyncio.sleep(1.0)
    edge.pause()
    await conv.handle(speech("speech_started", 3))
    await conv.handle(speech("interim", 3, text="no wait"))
    assert "interrupt" in edge.kinds()
    await conv.close()
    n = len(edge.commands)
    llm = ScriptedLlmDouble(FOUR, token_s=0.01)
    conv = new_conv(store, llm, edge, holder)
    await conv.start(resumed=True)
    await asyncio.sleep(5)
    assert edge.commands[n:] == [] and llm.calls == []
    hist = await store.history("s1")
    assert [m["role"] for m in hist] == ["user", "assistant", "user", "assistant"]
    assert hist[3]["interrupted"]


async def test_a_regenerated_reply_that_differs_ends_at_the_recorded_clauses():
    store, holder = InMemorySessionStoreDouble(), {}
    edge = ResumingEdge(holder)
    conv = new_conv(store, ScriptedLlmDouble(FOUR, token_s=0.3), edge, holder)
    await conv.start(resumed=False)
    await user_says(conv, 1, "Where is my order?")
    await wait_for(lambda: len(says(edge)) == 2)
    await conv.close()
    llm2 = ScriptedLlmDouble("Your order is lost. Sorry about that. We will refund you.", token_s=0.02)
    conv2 = new_conv(store, llm2, edge, holder)
    await conv2.start(resumed=True)
    await asyncio.sleep(20)
    assert [t for _, _, t in edge.played_says] == CLAUSES[:2]
    hist = await store.history("s1")
    assert hist[1]["content"] == " ".join(CLAUSES[:2])
    assert llm2.cancelled == 1  # stopped at the divergence
    assert conv2.reply is None
