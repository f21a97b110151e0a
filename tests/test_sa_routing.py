"""The routing helpers of the TUN data planes (aaa_vpn/sa/routing.py): the
node's addresses read over rtnetlink, as ``ip`` lists them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

import pytest

from aaa_vpn.sa.routing import ipv4_addresses

pytestmark = pytest.mark.netns


@pytest.fixture
def namespace(require_tool: Callable[[str], str]) -> Iterator[str]:
    require_tool("ip")
    if os.geteuid() != 0:
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail("AAA_VPN_REQUIRE_TOOLS=1 but network namespaces need root")
        pytest.skip("network namespaces need root")
    name = f"aar_{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True).stdout


def test_ipv4_addresses_are_those_ip_lists(namespace: str) -> None:
    _ip(namespace, "link", "set", "lo", "up")
    _ip(namespace, "link", "add", "d0", "type", "veth", "peer", "name", "d1")  # d1 stays down
    _ip(namespace, "link", "set", "d0", "up")
    _ip(namespace, "addr", "add", "192.0.2.7/24", "dev", "d0")
    _ip(namespace, "addr", "add", "192.0.2.8/24", "dev", "d0")  # secondary
    _ip(namespace, "addr", "add", "198.51.100.10/32", "dev", "lo")
    _ip(namespace, "addr", "add", "10.0.1.1/30", "dev", "d1")
    _ip(namespace, "addr", "add", "2001:db8::1/64", "dev", "d0")  # not IPv4: not listed
    listed = [
        IPv4Address(line.split()[3].split("/")[0])
        for line in _ip(namespace, "-o", "-4", "addr", "show").splitlines()
        if line.strip()
    ]
    found = ipv4_addresses(namespace)
    assert sorted(found) == sorted(listed)
    assert set(found) == {IPv4Address(a) for a in ("127.0.0.1", "192.0.2.7", "192.0.2.8", "198.51.100.10", "10.0.1.1")}
