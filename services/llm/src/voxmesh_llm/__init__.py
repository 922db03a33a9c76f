"""voxmesh llm: streaming generation with prompt-prefix reuse and prompt cancellation."""
