import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).parent))


import pytest  # noqa: E402

from voxmesh.testing.servers import redis_server  # noqa: E402
from voxmesh_orchestrator.store import SessionStore  # noqa: E402


@pytest.fixture
async def store(tmp_path):
    """The real SessionStore on a throwaway redis-server."""
    with redis_server(tmp_path / "redis") as url:
        s = SessionStore.from_url(url, ttl_s=60)
        yield s
        await s.close()
