"""voxmesh tts: streams clause text in, PCM chunks with text spans out."""
