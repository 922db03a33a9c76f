"""`voxmesh-llm`: the llm service process."""

from __future__ import annotations

from voxmesh.core.service import run
from voxmesh.core.settings import from_env

from voxmesh_llm.server import serve
from voxmesh_llm.settings import LlmSettings


def main() -> None:
    settings = from_env(LlmSettings, "VOXMESH_LLM")
    run("llm", lambda: serve(settings))


if __name__ == "__main__":
    main()
