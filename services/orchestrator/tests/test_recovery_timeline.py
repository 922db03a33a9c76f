"""A replica takes a conversation over from the store (virtual time): the
turn in flight is answered exactly once, whatever moment the previous replica
died at. The previous replica's death is `close()` (its tasks cancelled, its
memory gone); the store is all the successor gets. One test (at least) per row
of the table in docs/recovery.md, "Orchestrator loss"."""

from __future__ import annotations

import asyncio

import pytest

from doubles import EdgeDouble, InMemorySessionStoreDouble, ScriptedLlmDouble, speech
from voxmesh.v1 import orchestrator_pb2 as opb
from voxmesh_orchestrator.agent import load_agent
from voxmesh_orchestrator.conversation import Conversation
from voxmesh_orchestrator.llm_client import PrefixUnsupported
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


class ContinuingLlmDouble(ScriptedLlmDouble):
    """The llm client's contract for `assistant_prefix`: stream only what follows
    the prefix in the scripted reply (which must start with it), as the llm
    service continues the assistant turn. `continues=False` is an llm replica
    that predates the field: PrefixUnsupported before any text."""

    def __init__(self, reply: str, token_s: float = 0.02, continues: bool = True) -> None:
        super().__init__(reply, token_s)
        self.continues = continues
        self.pieces = 0  # pieces yielded over all calls

    async def generate(self, sid, messages, **kw):
        prefix = kw.get("assistant_prefix", "")
        if not prefix:
            async for piece in super().generate(sid, messages, **kw):
                self.pieces += 1
                yield piece
            return
        self.calls.append({"messages": messages, **kw})
        await asyncio.sleep(self.token_s)  # the prefill
        if not self.continues:
            raise PrefixUnsupported("llm double: no assistant_prefix")
        assert self.reply.startswith(prefix), (self.reply, prefix)
        try:
            for word in self.reply[len(prefix):].split(" ")[1:]:
                await asyncio.sleep(self.token_s)
                self.pieces += 1
                yield " " + word
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise


def new_conv(store, llm, edge, holder) -> Conversation:
    agent = load_agent("support")
    conv = Conversation("s1", agent, build_tools(agent.tools, agent.orders_path), store, llm, edge.send, replica="r")
    holder["conv"] = conv
    return conv


async def first_replica(llm, **edge_kw) -> tuple:
    """A new session's store and edge and the first replica's conversation on
    them, started: (store, holder, edge, conv)."""
    store, holder = InMemorySessionStoreDouble(), {}
    edge = ResumingEdge(holder, **edge_kw)
    conv = new_conv(store, llm, edge, holder)
    await conv.start(resumed=False)
    return store, holder, edge, conv


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


async def die_after_two_clauses(llm2) -> tuple:
    """A replica answers "Where is my order?" with FOUR and dies once two clauses
    are said (the rest never generated); a successor with `llm2` takes the
    session over and gets 20 s. Returns (store, edge, first llm, successor)."""
    llm = ScriptedLlmDouble(FOUR, token_s=0.3)
    store, holder, edge, conv = await first_replica(llm)
    await user_says(conv, 1, "Where is my order?")
    await wait_for(lambda: len(says(edge)) == 2)
    await conv.close()
    assert not await store.is_committed("s1", "a1")
    conv2 = new_conv(store, llm2, edge, holder)
    await conv2.start(resumed=True)
    await asyncio.sleep(20)
    return store, edge, llm, conv2


@pytest.mark.parametrize("before_death", [
    ["speech_started", "interim"],  # the user was speaking
    ["speech_started", "final", "end_of_turn_lost"],  # EndOfTurn sent, never committed
])
async def test_a_turn_not_yet_committed_is_answered_once_from_the_edge_replay(before_death):
    store, holder, edge, conv = await first_replica(ScriptedLlmDouble(FOUR, token_s=0.3))
    for kind in before_death:
        if kind == "speech_started":
            await conv.handle(speech("speech_started", 1))
        elif kind in ("interim", "final"):
            await conv.handle(speech(kind, 1, text="Where is my order?"))
        # end_of_turn_lost: the edge sent it, the replica died before reading it
    await asyncio.sleep(0.1)
    await conv.close()
    assert await store.history("s1") == []
    llm2 = ScriptedLlmDouble(FOUR, token_s=0.02)
    conv2 = new_conv(store, llm2, edge, holder)
    await conv2.start(resumed=True)
    await user_says(conv2, 1, "Where is my order?")  # the edge replays the unconfirmed turn
    await user_says(conv2, 1, "Where is my order?")  # and a second reconnect would replay it again
    await asyncio.sleep(20)
    assert [t for _, _, t in edge.played_says] == CLAUSES
    hist = await store.history("s1")
    assert [(m["role"], m["content"]) for m in hist] == [("user", "Where is my order?"), ("assistant", FOUR)]
    assert [c.user_turn.turn_id for c in edge.commands if c.WhichOneof("command") == "user_turn"] == ["u1"]


async def test_turn_committed_before_any_clause_is_answered_once_by_the_successor():
    llm = ScriptedLlmDouble(FOUR, token_s=0.5)
    store, holder, edge, conv = await first_replica(llm)
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
    llm2 = ContinuingLlmDouble(FOUR, token_s=0.02)
    store, edge, llm, conv2 = await die_after_two_clauses(llm2)
    # every clause played once, in order: the successor sent only clauses 2 and 3
    assert [t for _, _, t in edge.played_says] == CLAUSES
    assert [(tid, cid) for tid, cid, _ in edge.played_says] == [("a1", 0), ("a1", 1), ("a1", 2), ("a1", 3)]
    hist = await store.history("s1")
    assert [(m["role"], m["content"]) for m in hist] == [("user", "Where is my order?"), ("assistant", FOUR)]
    assert sorted(store.turns["s1"]) == ["a1", "u1"]
    # the llm continued after the recorded text (same prompt): it generated
    # only the two missing clauses, not the reply again
    assert len(llm2.calls) == 1 and llm2.calls[0]["assistant_prefix"] == " ".join(CLAUSES[:2])
    assert llm2.calls[0]["messages"] == llm.calls[0]["messages"]
    assert llm2.pieces == len(" ".join(CLAUSES[2:]).split())
    assert conv2.reply is None and (await store.turn_state("s1"))["reply_status"] == "played"


async def test_a_pre_synthesized_first_clause_is_recorded_before_it_plays():
    """A preemptive reply's first clause is synthesized ahead and played on
    ReplyCommitted. The replica dies right after sending ReplyCommitted: the
    clause the caller hears is in the record, so the successor continues after
    it (it does not answer from the start with a first clause the edge would
    ignore and history would hold unheard)."""
    llm = ScriptedLlmDouble(FOUR, token_s=0.02)
    store, holder, edge, conv = await first_replica(llm)
    await conv.handle(speech("speech_started", 1))
    await conv.handle(speech("final", 1, text="Where is my order?"))
    await wait_for(lambda: any(c.WhichOneof("command") == "say" and c.say.provisional for c in edge.commands))
    died = asyncio.Event()
    send = edge.send

    async def send_then_die(cmd):
        await send(cmd)
        if cmd.WhichOneof("command") == "reply_committed":
            died.set()
            await asyncio.sleep(3600)  # the replica is gone: nothing after this

    conv.send = send_then_die
    await conv.handle(speech("end_of_turn", 1, probability=0.9))
    await asyncio.wait_for(died.wait(), 5)
    await conv.close()
    llm2 = ContinuingLlmDouble(FOUR, token_s=0.02)
    conv2 = new_conv(store, llm2, edge, holder)
    await conv2.start(resumed=True)
    await asyncio.sleep(20)
    assert len(llm2.calls) == 1 and llm2.calls[0]["assistant_prefix"] == CLAUSES[0]
    assert edge.said() == CLAUSES
    hist = await store.history("s1")
    assert [(m["role"], m["content"]) for m in hist] == [("user", "Where is my order?"), ("assistant", FOUR)]


async def test_a_continuation_that_ends_at_once_leaves_the_recorded_clauses_as_the_reply():
    """The predecessor died after recording the reply's last clause, before its
    commit: the continuation is empty (end of turn at once), and the recorded
    clauses are committed as the reply, once."""
    llm2 = ContinuingLlmDouble(" ".join(CLAUSES[:2]), token_s=0.02)  # nothing after the prefix
    store, edge, _, conv2 = await die_after_two_clauses(llm2)
    assert [t for _, _, t in edge.played_says] == CLAUSES[:2]
    assert len(llm2.calls) == 1 and llm2.pieces == 0
    hist = await store.history("s1")
    assert [(m["role"], m["content"]) for m in hist] == [("user", "Where is my order?"), ("assistant", " ".join(CLAUSES[:2]))]
    assert edge.kinds().count("end_of_reply") == 1
    assert conv2.reply is None and (await store.turn_state("s1"))["reply_status"] == "played"


async def test_an_llm_that_cannot_continue_regenerates_and_sends_only_the_later_clauses():
    """An llm replica built before assistant_prefix: the successor regenerates the
    reply from the start (same prompt and seed, so the same text), checks it
    against the record and sends only the clauses after it."""
    llm2 = ContinuingLlmDouble(FOUR, token_s=0.02, continues=False)
    store, edge, llm, _ = await die_after_two_clauses(llm2)
    assert [(cid, t) for _, cid, t in edge.played_says] == list(enumerate(CLAUSES))
    assert [c.get("assistant_prefix", "") for c in llm2.calls] == [" ".join(CLAUSES[:2]), ""]
    assert llm2.calls[1]["seed"] == llm.calls[0]["seed"]  # regenerated reproducibly
    hist = await store.history("s1")
    assert [(m["role"], m["content"]) for m in hist] == [("user", "Where is my order?"), ("assistant", FOUR)]


async def test_a_new_edge_gets_the_unplayed_clauses_of_a_finished_reply():
    """Edge loss: the reply was generated and committed; the user heard the first
    clause whole and part of the second. The new edge gets clauses 1..3 (the
    partly heard one from its start); nothing is generated again."""
    llm = ScriptedLlmDouble(FOUR, token_s=0.01)
    store, holder, edge, conv = await first_replica(llm, chars_per_s=15)
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
    store, holder, edge, conv = await first_replica(ScriptedLlmDouble(FOUR, token_s=0.01))
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
    """Same, but the regenerated text differs from the record: the recorded
    clauses are the reply, nothing more is said."""
    llm2 = ContinuingLlmDouble("Your order is lost. Sorry about that. We will refund you.", token_s=0.02, continues=False)
    store, edge, _, conv2 = await die_after_two_clauses(llm2)
    assert [t for _, _, t in edge.played_says] == CLAUSES[:2]
    hist = await store.history("s1")
    assert hist[1]["content"] == " ".join(CLAUSES[:2])
    assert llm2.cancelled == 1  # stopped at the divergence
    assert conv2.reply is None
