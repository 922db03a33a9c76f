"""Cross-service fixtures: the whole stack as real processes (the same runner
as `make run`), and real test speech."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from voxmesh.testing.speech import say_to_wav


class RunningStack:
    """The `stack` fixture: the processes plus helpers to talk to them."""

    def __init__(self, stack, workdir: pathlib.Path) -> None:
        self.stack = stack
        self.workdir = workdir

    @property
    def edge_url(self) -> str:
        return self.stack.edge_url

    @property
    def metrics_urls(self) -> dict[str, str]:
        return self.stack.metrics_urls

    @property
    def redis_url(self) -> str:
        return self.stack.redis_url

    def call(self, wav, **kw) -> dict:
        from voxmesh_cli.call import call

        return asyncio.run(call(str(wav), url=self.edge_url, **kw))

    def speech(self, text: str, name: str, **kw) -> pathlib.Path:
        kw.setdefault("lead_silence", 1.0)
        kw.setdefault("tail_silence", 0.5)
        return say_to_wav(text, self.workdir / f"{name}.wav", **kw)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    from voxmesh_cli.stack import Stack

    workdir = tmp_path_factory.mktemp("stack")
    s = Stack(workdir)
    try:
        s.start()
    except Exception:
        for name in s.procs:
            print(f"--- {name} ---\n{s.logs(name)}")
        s.stop()
        raise
    yield RunningStack(s, workdir)
    s.stop()
