"""The agent config's turn settings, as the edge hands them to stt."""

import pytest

from voxmesh_orchestrator.agent import AgentConfigError, load_agent


def test_the_support_agent_ends_a_turn_on_a_four_digit_order_number():
    turn = load_agent("support").turn
    assert turn.complete_digit_counts == (4,)
    msg = turn.to_proto()  # voxmesh.v1.TurnSettings in SessionConfig.turn
    assert list(msg.complete_digit_counts) == [4]
    assert msg.min_silence_ms == turn.min_silence_ms and msg.max_silence_ms == turn.max_silence_ms


def test_complete_digit_counts_must_be_digit_counts(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("instructions: hi\nturn:\n  complete_digit_counts: four\n")
    with pytest.raises(AgentConfigError, match="complete_digit_counts"):
        load_agent(str(path))
    path.write_text("instructions: hi\nturn:\n  complete_digit_counts: [0]\n")
    with pytest.raises(AgentConfigError):
        load_agent(str(path))
    path.write_text("instructions: hi\n")
    assert load_agent(str(path)).turn.to_proto().complete_digit_counts == []
