"""Shared pytest fixtures.

* ``require_tool``: a callable ``require_tool(name) -> str`` giving the path of
  an external program (radclient, tshark, freeradius). If it is missing the test is
  skipped, or fails when ``AAA_VPN_REQUIRE_TOOLS=1`` (CI sets it so interop
  tests cannot silently vanish).
* ``postgres_cluster``: one throw-away PostgreSQL cluster for the whole run
  (tests/postgres.py), the same skip-or-fail rule when PostgreSQL is missing;
  ``pg_url``: a fresh empty database in it for one test, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from .postgres import Cluster


def _require_tool(name: str) -> str:
    # Daemons (freeradius) live in /usr/sbin, which is not on every PATH.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{name} is not installed (see reference/test-environment.md section 0)"
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"AAA_VPN_REQUIRE_TOOLS=1 but {message}")
        pytest.skip(message)
    return path


@pytest.fixture
def require_tool() -> Callable[[str], str]:
    """``require_tool("radclient")`` -> its path; skip (or fail under
    ``AAA_VPN_REQUIRE_TOOLS=1``) if it is not installed."""
    return _require_tool


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    try:
        cluster = Cluster()
    except (FileNotFoundError, RuntimeError) as exc:
        message = f"no PostgreSQL cluster for the tests: {exc}"
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"AAA_VPN_REQUIRE_TOOLS=1 but {message}")
        pytest.skip(message)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres_cluster: Cluster) -> Iterator[str]:
    url = postgres_cluster.create_database()
    try:
        yield url
    finally:
        postgres_cluster.drop_database(url)
