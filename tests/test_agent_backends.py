"""The agents on the production SA backends (docs/sa-backends.md): what a
registration does when a backend refuses, at the agent level.

The xfrm backend on this build machine: the kernel takes policies but has no
ESP, so every SA is refused; the registration must fail with the proper reply
code, say why, and leave nothing in the kernel or on any other node.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn.sa.xfrm import XfrmBackend
from aaa_vpn.service.agents import SaExecutor

from .mobility import HA, Network
from .test_flows import register, table


@pytest.fixture
def netns(require_tool: Callable[[str], str]) -> Iterator[str]:
    """A fresh network namespace of this test (unique prefix), deleted afterwards."""
    ip = require_tool("ip")
    name = f"aab_{os.getpid()}"
    subprocess.run([ip, "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=False)


def kernel_tables(netns: str) -> tuple[str, str]:
    state = subprocess.run(["ip", "-n", netns, "xfrm", "state", "list"], capture_output=True, text=True, check=True)
    policy = subprocess.run(["ip", "-n", netns, "xfrm", "policy", "list"], capture_output=True, text=True, check=True)
    return state.stdout.strip(), policy.stdout.strip()


def test_an_ha_on_a_kernel_without_esp_denies_with_130_and_leaves_nothing(tmp_path: Path, netns: str) -> None:
    net = Network(tmp_path)
    net.standard()
    try:
        node = net.nodes["ha"]
        node.backend = XfrmBackend(IPv4Address(HA), netns=netns)  # type: ignore[assignment]
        node.executor = SaExecutor(node.backend, "ha")
        done = register(net)
        assert done.code == 130, done
        ha_done = net.nodes["ha"].done()[-1]
        assert "kernel without rfc4106(gcm(aes))" in ha_done.detail, ha_done  # names what is missing
        assert kernel_tables(netns) == ("", "")  # no SA, no policy, no larval state
        assert node.backend.paths() == []
        # the FA rolled its side back too, and no gateway was told anything
        assert table(net, "fa1") == [] and table(net, "gw-static") == [] and table(net, "gw-dynamic") == []
        node.backend.close()
    finally:
        net.close()
