"""`voxmesh-tts`: the tts service process."""

from __future__ import annotations

from voxmesh.core.service import run
from voxmesh.core.settings import from_env

from voxmesh_tts.server import serve
from voxmesh_tts.settings import TtsSettings


def main() -> None:
    settings = from_env(TtsSettings, "VOXMESH_TTS")
    run("tts", lambda: serve(settings))


if __name__ == "__main__":
    main()
