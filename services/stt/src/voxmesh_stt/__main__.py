"""`voxmesh-stt`: serve voxmesh.v1.Stt on VOXMESH_STT_PORT (default 50051)."""

from __future__ import annotations

from voxmesh.core.service import run

from voxmesh_stt.server import serve
from voxmesh_stt.settings import load


def main() -> None:
    settings = load()
    run("stt", lambda: serve(settings))


if __name__ == "__main__":
    main()
