"""Unit tests without a model: request validation, GBNF lint, stop-string holdback."""

from __future__ import annotations

import pytest

from voxmesh.v1 import common_pb2, llm_pb2

from voxmesh_llm.backends.base import InvalidRequest
from voxmesh_llm.backends.gbnf import lint
from voxmesh_llm.backends.llama_cpp import _stop_prefix_len
from voxmesh_llm.server import to_params
from voxmesh_llm.settings import LlmSettings


def req(**kw) -> llm_pb2.GenerateRequest:
    kw.setdefault("messages", [common_pb2.ChatMessage(role="user", content="hi")])
    return llm_pb2.GenerateRequest(**kw)


def test_defaults_apply_to_zero_fields():
    s = LlmSettings()
    p = to_params(req(), s, 1.0)
    assert p.max_tokens == s.default_max_tokens and p.top_p == s.default_top_p
    assert p.temperature == 0.0 and p.seed is None
    p = to_params(req(max_tokens=7, top_p=0.5, seed=3, stop=["", "x"]), s, 1.0)
    assert (p.max_tokens, p.top_p, p.seed, p.stop) == (7, 0.5, 3, ("x",))


@pytest.mark.parametrize(
    "bad, words",
    [
        (dict(messages=[]), "messages is empty"),
        (dict(messages=[common_pb2.ChatMessage(role="robot", content="x")]), "role"),
        (dict(max_tokens=-1), "max_tokens"),
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(grammar='root ::= "a"', json_schema="{}"), "not both"),
    ],
)
def test_invalid_requests_say_why(bad, words):
    with pytest.raises(InvalidRequest, match=words):
        to_params(req(**bad), LlmSettings(), 1.0)


def test_gbnf_lint_finds_common_mistakes():
    assert lint('root ::= "a" b\nb ::= [0-9]+ # digits') == []
    assert lint('root ::= "{" ws "}"\nws ::= [ \\t]*') == []
    assert any("undefined" in p and "foo" in p for p in lint("root ::= foo"))
    assert any("no 'root'" in p for p in lint('x ::= "a"'))
    assert any("unterminated string" in p for p in lint('root ::= "a'))
    assert any("unterminated character class" in p for p in lint("root ::= [0-9"))
    assert lint("   ") == ["the grammar is empty"]
    assert lint('root ::= [0-9]{4} "x"{1,2}') == []


def test_stop_prefix_holdback():
    assert _stop_prefix_len("hello wor", ["world"]) == 3
    assert _stop_prefix_len("hello", ["world"]) == 0
    assert _stop_prefix_len("a\nUs", ["\nUser:", "xyz"]) == 3
    assert _stop_prefix_len("abc", []) == 0
