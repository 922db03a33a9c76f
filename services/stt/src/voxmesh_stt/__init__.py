"""voxmesh stt: VAD, end of turn and streaming ASR for one audio stream per call."""
