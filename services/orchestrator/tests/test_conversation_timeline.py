"""The conversation state machine on scripted timelines in virtual time
(looptime): the turn commit, clause streaming, and every interruption path."""

from __future__ import annotations

import asyncio

import pytest

from doubles import EdgeDouble, InMemorySessionStoreDouble, ScriptedLlmDouble, speech
from voxmesh_orchestrator.agent import load_agent
from voxmesh_orchestrator.conversation import Conversation
from voxmesh_orchestrator.tools import build_tools

pytestmark = pytest.mark.looptime

FOUR_CLAUSES = "Your order is out for delivery. It left the depot at nine. The driver is two stops away. It should arrive before six."


async def setup(reply=FOUR_CLAUSES, route="none", **edge_kw):
    agent = load_agent("support")
    store = InMemorySessionStoreDouble()
    llm = ScriptedLlmDouble(reply, route=route)
    holder: dict = {}
    edge = EdgeDouble(holder, **edge_kw)
    conv = Conversation("s1", agent, build_tools(agent.tools, agent.orders_path), store, llm, edge.send)
    holder["conv"] = conv
    await conv.start(resumed=False)
    return conv, store, llm, edge


async def user_says(conv, utt: int, text: str) -> None:
    await conv.handle(speech("speech_started", utt))
    await conv.handle(speech("final", utt, text=text))
    await conv.handle(speech("end_of_turn", utt, probability=0.9))


async def user_speaks_over_reply(conv, edge, utt: int = 2) -> None:
    """The user starts talking over the agent: the edge pauses by itself, stt's
    SpeechStarted follows."""
    edge.pause()
    await conv.handle(speech("speech_started", utt))


async def test_committed_turn_is_answered_in_clauses_and_stored():
    conv, store, llm, edge = await setup()
    await user_says(conv, 1, "Hello there")
    await asyncio.sleep(15)
    says = [c.say.text for c in edge.commands if c.WhichOneof("command") == "say"]
    assert says == [
        "Your order is out for delivery.", "It left the depot at nine.", "The driver is two stops away.", "It should arrive before six.",
    ]
    assert edge.kinds()[0] == "user_turn" and "end_of_reply" in edge.kinds()
    hist = await store.history("s1")
    assert [(m["role"], m["content"]) for m in hist] == [("user", "Hello there"), ("assistant", FOUR_CLAUSES)]
    assert conv.reply is None  # fully played


async def test_interrupt_650ms_into_reply_keeps_exactly_the_heard_prefix():
    conv, store, llm, edge = await setup()
    await user_says(conv, 1, "Hello there")
    # wait until the first audio starts, then 650 ms more
    while not any(c.WhichOneof("command") == "say" for c in edge.commands):
        await asyncio.sleep(0.01)
    await asyncio.sleep(edge.synth_s + 0.65)
    await user_speaks_over_reply(conv, edge)
    await conv.handle(speech("interim", 2, text="wait stop"))
    assert "interrupt" in edge.kinds()
    hist = await store.history("s1")
    assistant = [m for m in hist if m["role"] == "assistant"]
    assert len(assistant) == 1 and assistant[0]["interrupted"]
    heard = assistant[0]["content"]
    # 0.6 s at 15 chars/s heard of the first clause, cut at a word boundary
    assert heard and FOUR_CLAUSES.startswith(heard)
    assert len(heard) <= 0.7 * 15 + 1
    # the last report came at 0.6 s = 9 chars ("Your orde"): "order" was not heard whole
    assert heard == "Your"
    assert llm.cancelled == 1 or llm.calls  # generation was cancelled or had finished


async def test_interrupt_before_any_audio_played_stores_empty_heard_text():
    conv, store, llm, edge = await setup(synth_s=2.0)
    await user_says(conv, 1, "Hello there")
    await asyncio.sleep(0.1)  # generating, nothing played yet
    await conv.handle(speech("speech_started", 2))
    await conv.handle(speech("interim", 2, text="actually never mind"))
    hist = await store.history("s1")
    assert [m["role"] for m in hist] == ["user", "assistant"]
    assert hist[1]["content"] == "" and hist[1]["interrupted"]
    assert llm.cancelled == 1


async def test_false_interruption_resumes_and_loses_no_audio():
    conv, store, llm, edge = await setup()
    await user_says(conv, 1, "Hello there")
    await asyncio.sleep(0.5)
    await user_speaks_over_reply(conv, edge)
    await asyncio.sleep(0.3)  # a cough
    await conv.handle(speech("speech_stopped", 2))
    await asyncio.sleep(1.4)  # quiet, but not yet for the 1.5 s timeout
    assert "resume" not in edge.kinds()
    await asyncio.sleep(0.2)  # no words within 1.5 s of the end of the sound
    assert "resume" in edge.kinds() and "interrupt" not in edge.kinds()
    await asyncio.sleep(15)
    hist = await store.history("s1")
    assert hist[-1]["content"] == FOUR_CLAUSES and not hist[-1].get("interrupted")


async def test_an_interruption_still_being_spoken_is_not_talked_over_while_its_words_are_late():
    conv, store, llm, edge = await setup()
    await user_says(conv, 1, "Hello there")
    await asyncio.sleep(0.5)
    await user_speaks_over_reply(conv, edge)
    await asyncio.sleep(3.0)  # the user talks on; stt's first words are slow
    assert "resume" not in edge.kinds()
    await conv.handle(speech("interim", 2, text="no wait I meant"))
    assert "interrupt" in edge.kinds() and "resume" not in edge.kinds()
    hist = await store.history("s1")
    assert hist[-1]["role"] == "assistant" and hist[-1]["interrupted"]


async def test_backchannel_is_recorded_not_an_interruption():
    conv, store, llm, edge = await setup()
    await user_says(conv, 1, "Hello there")
    await asyncio.sleep(0.5)
    await user_speaks_over_reply(conv, edge)
    await conv.handle(speech("interim", 2, text="mm-hm"))
    await conv.handle(speech("final", 2, text="Mm-hm."))
    await conv.handle(speech("end_of_turn", 2))
    assert "resume" in edge.kinds() and "interrupt" not in edge.kinds()
    assert store.events and store.events[0]["type"] == "backchannel"
    await asyncio.sleep(15)
    hist = await store.history("s1")
    assert [m["role"] for m in hist] == ["user", "assistant"] and hist[1]["content"] == FOUR_CLAUSES


async def test_interrupt_during_an_interrupt_is_handled_once_and_new_turn_answered_once():
    conv, store, llm, edge = await setup()
    await user_says(conv, 1, "Hello there")
    await asyncio.sleep(1.0)
    await user_speaks_over_reply(conv, edge)
    await conv.handle(speech("interim", 2, text="no wait"))
    await conv.handle(speech("interim", 2, text="no wait I"))  # second confirm: no-op
    await conv.handle(speech("speech_started", 2))  # the user pauses and talks again
    await conv.handle(speech("final", 2, text="No wait, I have another question."))
    await conv.handle(speech("end_of_turn", 2))
    await conv.handle(speech("end_of_turn", 2))  # a replayed EndOfTurn is ignored
    await asyncio.sleep(15)
    assert edge.kinds().count("interrupt") == 1
    hist = await store.history("s1")
    assert [m["role"] for m in hist] == ["user", "assistant", "user", "assistant"]
    assert hist[2]["content"] == "No wait, I have another question."
    assert len(llm.calls) == 2


async def test_completed_tool_call_survives_interruption_and_is_not_repeated():
    conv, store, llm, edge = await setup(route="lookup_order(order_id=4219)")
    calls = []
    tool = conv.tools[0]
    real = tool.handler

    async def counting(**kw):
        calls.append(kw)
        return await real(**kw)

    tool.handler = counting
    await user_says(conv, 1, "Where is my order 4219?")
    await asyncio.sleep(1.0)
    await user_speaks_over_reply(conv, edge)
    await conv.handle(speech("interim", 2, text="sorry what"))
    await user_says(conv, 3, "Sorry, where is order 4219 again?")
    await asyncio.sleep(15)
    # the demonstration uses the store too; count only the real call
    assert [c for c in calls if c["order_id"] == "4219"] == [{"order_id": "4219"}]
    assert any("out for delivery" in m["content"] for c in llm.calls for m in c["messages"] if m["role"] == "system")


async def test_preemptive_reply_is_adopted_when_the_final_text_matches():
    conv, store, llm, edge = await setup()
    await conv.handle(speech("speech_started", 1))
    await conv.handle(speech("speech_stopped", 1))
    await conv.handle(speech("interim", 1, text="Hello there."))  # user silent: speculate
    await asyncio.sleep(0.5)  # the end-of-turn model is still deciding
    says = [c.say for c in edge.commands if c.WhichOneof("command") == "say"]
    assert [(s.clause_id, s.provisional) for s in says] == [(0, True)], "only the first clause, to synthesize, not to play"
    assert edge.queue.empty() and edge.task is None, "nothing is played before the commit"
    assert await store.history("s1") == [], "nothing is stored before the commit"
    await conv.handle(speech("final", 1, text="Hello there"))
    await conv.handle(speech("end_of_turn", 1))
    await asyncio.sleep(0.01)
    assert edge.kinds()[-2:] == ["user_turn", "reply_committed"] or "reply_committed" in edge.kinds()
    assert edge.said()[0] == "Your order is out for delivery.", "the pre-synthesized first clause plays at once"
    await asyncio.sleep(15)
    assert len(llm.calls) == 1 and llm.cancelled == 0
    hist = await store.history("s1")
    assert [m["role"] for m in hist] == ["user", "assistant"] and hist[1]["content"] == FOUR_CLAUSES


async def test_preemptive_reply_is_discarded_when_the_user_goes_on():
    conv, store, llm, edge = await setup()
    await conv.handle(speech("speech_started", 1))
    await conv.handle(speech("speech_stopped", 1))
    await conv.handle(speech("interim", 1, text="Cancel my order"))
    await asyncio.sleep(0.3)  # its first clause is out, to be synthesized
    await conv.handle(speech("speech_started", 1))  # "...can you tell me about it"
    await asyncio.sleep(0.01)
    assert llm.cancelled == 1
    assert edge.kinds()[-1] == "reply_discarded", "the pre-synthesized clause is dropped at the edge"
    await conv.handle(speech("speech_stopped", 1))
    await conv.handle(speech("final", 1, text="Cancel my order? No, can you tell me about my order"))
    await conv.handle(speech("end_of_turn", 1))
    await asyncio.sleep(15)
    assert len(llm.calls) == 2
    hist = await store.history("s1")
    assert [m["role"] for m in hist] == ["user", "assistant"]


def count_calls(conv, name):
    tool = next(t for t in conv.tools if t.name == name)
    calls = []
    real = tool.handler

    async def counting(**kw):
        calls.append(kw)
        return await real(**kw)

    tool.handler = counting
    return calls


async def test_a_cancel_heard_only_in_a_partial_never_cancels_and_the_prefetch_is_reused():
    conv, store, llm, edge = await setup(route="cancel_order(order_id=4219)")
    cancels, lookups = count_calls(conv, "cancel_order"), count_calls(conv, "lookup_order")
    await conv.handle(speech("speech_started", 1))
    await conv.handle(speech("interim", 1, text="cancel my order four two one nine"))
    await asyncio.sleep(0.3)
    assert lookups == [{"order_id": "4219"}], "the read-only lookup is prefetched on the partial"
    await conv.handle(speech("interim", 1, text="can you tell me about my order four two one nine"))
    await conv.handle(speech("speech_stopped", 1))
    await conv.handle(speech("final", 1, text="Can you tell me about my order four two one nine?"))
    await conv.handle(speech("end_of_turn", 1))
    await asyncio.sleep(15)
    assert cancels == []
    # (the prompt's worked demonstration looks up 5530; count only 4219)
    assert [c for c in lookups if c["order_id"] == "4219"] == [{"order_id": "4219"}], "the committed turn reused the prefetch"
    prompt = llm.calls[-1]["messages"]
    assert any("out for delivery" in m["content"] for m in prompt if m["role"] == "system")


async def test_side_effecting_tool_runs_only_after_a_spoken_yes():
    conv, store, llm, edge = await setup(route="cancel_order(order_id=4219)")
    cancels = count_calls(conv, "cancel_order")
    await user_says(conv, 1, "Please cancel my order 4219.")
    await asyncio.sleep(5)
    says = [c.say.text for c in edge.commands if c.WhichOneof("command") == "say"]
    assert says == ["Just to confirm, do you want me to cancel order 4 2 1 9?", "Please say yes or no."]
    assert cancels == []
    await user_says(conv, 2, "Yes, please.")
    await asyncio.sleep(15)
    assert cancels == [{"order_id": "4219"}]
    last_prompt = llm.calls[-1]["messages"]
    assert any("now cancelled" in m["content"] for m in last_prompt if m["role"] == "system")


async def test_side_effecting_tool_is_dropped_on_no():
    conv, store, llm, edge = await setup(route="cancel_order(order_id=4219)")
    cancels = count_calls(conv, "cancel_order")
    await user_says(conv, 1, "Cancel order 4219")
    await asyncio.sleep(5)
    await user_says(conv, 2, "No, don't.")
    await asyncio.sleep(15)
    assert cancels == []
    assert any("said no" in m["content"] for m in llm.calls[-1]["messages"] if m["role"] == "system")


async def test_a_long_history_is_trimmed_to_the_budget_but_kept_in_redis():
    conv, store, llm, edge = await setup()
    for i in range(200):
        await store.commit_message("s1", f"u{i}", {"role": "user", "content": f"question number {i} " + "x" * 80})
        await store.commit_message("s1", f"a{i}", {"role": "assistant", "content": f"answer number {i} " + "y" * 80})
    await user_says(conv, 1000, "And the last one?")
    await asyncio.sleep(15)
    prompt = llm.calls[-1]["messages"]
    history_chars = sum(len(m["content"]) for m in prompt if m["role"] in ("user", "assistant"))
    assert history_chars <= conv.agent.llm.history_chars + 500  # + the demonstration
    assert prompt[-1]["content"] == "And the last one?"
    assert "answer number 199" in prompt[-2]["content"]
    assert len(await store.history("s1")) == 402
