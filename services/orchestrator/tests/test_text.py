"""Clause cutting, markdown stripping, digit extraction and tool routing grammar."""

from voxmesh_orchestrator.clauses import ClauseChunker, speakable
from voxmesh_orchestrator.tools import ToolCall, digit_strings, parse_call, render_call, routing_grammar, build_tools
from voxmesh_orchestrator.agent import load_agent


def stream(text: str, chunker: ClauseChunker) -> list[str]:
    out = []
    for i in range(0, len(text), 3):  # token-ish pieces
        out += chunker.push(text[i : i + 3])
    return out + chunker.flush()


def test_first_clause_is_cut_early_and_the_rest_at_sentences():
    out = stream("Sure, let me check that for you, one moment. Your order is out for delivery. It arrives today.", ClauseChunker())
    assert out[0] == "Sure, let me check that for you,"
    assert out[1:] == ["one moment.", "Your order is out for delivery.", "It arrives today."]


def test_markdown_never_reaches_the_voice():
    assert speakable("**Order** `4219`:\n- status: *shipped* 📦 [track](http://x)") == "Order 4219: status: shipped track"
    out = stream("# Status\n1. **Shipped** today.\n2. Arrives _Friday_.", ClauseChunker())
    assert all(ch not in "".join(out) for ch in "#*_`")


def test_run_on_text_is_cut_at_a_word_boundary():
    out = stream(" ".join(["word"] * 70), ClauseChunker(max_words=30))
    assert all(len(c.split()) <= 30 for c in out) and sum(len(c.split()) for c in out) == 70


def test_digit_strings_however_the_recognizer_wrote_them():
    assert digit_strings("Where is my order four two one nine?") == ["4219"]
    assert digit_strings("Where is my order 4219?") == ["4219"]
    assert digit_strings("order 4-2-1-9 please") == ["4219"]
    assert digit_strings("it's 4, 2, 1, 9") == ["4219"]
    assert digit_strings("I want to go for a walk") == []
    assert "4219" in digit_strings("my order for 4219")


def test_routing_grammar_offers_only_calls_with_what_was_said():
    agent = load_agent("support")
    tools = build_tools(agent.tools, agent.orders_path)
    assert routing_grammar(tools, "hello how are you") is None  # no model call at all
    grammar, options = routing_grammar(tools, "where is order four two one nine")
    assert options == [ToolCall("lookup_order", {"order_id": "4219"})]
    assert '"lookup_order(order_id=4219)"' in grammar and '"none"' in grammar
    assert parse_call(render_call(options[0]), options) == options[0]
    assert parse_call("none", options) is None
