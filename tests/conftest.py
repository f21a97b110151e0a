"""Shared pytest fixtures.

* ``require_tool``: a callable ``require_tool(name) -> str`` giving the path of
  an external program (radclient, tshark, freeradius). If it is missing the test is
  skipped, or fails when ``AAA_VPN_REQUIRE_TOOLS=1`` (CI sets it so interop
  tests cannot silently vanish).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest


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
