"""The conversation brain: one state machine per session, state in Redis."""
