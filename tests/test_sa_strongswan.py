"""The strongswan SA backend's daemon runner (:mod:`aaa_vpn.sa.charon`): its
configuration, and one charon-systemd started in a network namespace that the
test makes and removes (``tests/sswan_lab.py``), stopped by PID."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import vici

from aaa_vpn.sa.charon import Charon, CharonError, render_config
from tests.sswan_lab import Lab


def _need_root_and_tools(require_tool: Callable[[str], str]) -> None:
    for tool in ("charon-systemd", "swanctl", "ip"):
        require_tool(tool)
    if not os.path.exists("/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"):
        require_tool("kernel-libipsec plugin (libcharon-extra-plugins)")
    if os.geteuid() != 0:
        message = "network namespaces need root"
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"AAA_VPN_REQUIRE_TOOLS=1 but {message}")
        pytest.skip(message)


# -- the daemon ------------------------------------------------------------------------------


def test_config_puts_libipsec_first_and_logs_no_keys_by_default(tmp_path: Path) -> None:
    conf = render_config(tmp_path / "s.vici", tmp_path / "c.log")
    assert conf.index("kernel-libipsec") < conf.index("kernel-netlink")
    assert f"socket = unix://{tmp_path / 's.vici'}" in conf
    assert "allow_peer_ts = yes" in conf and "fwmark = !0x42" in conf and "fwmark = 0x42" in conf
    assert "chd" not in conf
    assert "chd = 4" in render_config(tmp_path / "s.vici", tmp_path / "c.log", log_keys=True)


def test_a_daemon_that_exits_at_once_is_reported(tmp_path: Path) -> None:
    charon = Charon(tmp_path / "c", binary="/bin/false")
    with pytest.raises(CharonError, match="exited with status 1 while starting"):
        charon.start()
    assert charon.pid is None and charon.stop() is None


@pytest.mark.netns
@pytest.mark.strongswan
def test_charon_runs_in_its_namespace_and_stops_by_pid(require_tool: Callable[[str], str]) -> None:
    _need_root_and_tools(require_tool)
    with Lab(1, start_charons=False) as lab:
        node = lab[0]
        charon = node.charon
        charon.directory.mkdir(parents=True)
        stale = socket.socket(socket.AF_UNIX)  # a socket left by a daemon that died
        stale.bind(str(charon.vici_socket))
        stale.close()
        charon.start()
        pid = charon.pid
        assert pid is not None and charon.running
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{node.netns}").st_ino
        assert os.readlink(f"/proc/{pid}/exe") == "/usr/sbin/charon-systemd"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(charon.vici_socket))
            assert vici.Session(sock).version()["daemon"] == b"charon-systemd"
        assert "ipsec0" in node.run("ip", "-o", "link").stdout  # kernel-libipsec's TUN device, in the namespace
        assert "loaded plugins: charon-systemd" in charon.log_path.read_text()
        with pytest.raises(CharonError, match="already started"):
            charon.start()
        assert charon.stop() == 0  # SIGTERM: a clean exit
        assert not os.path.exists(f"/proc/{pid}") and not charon.vici_socket.exists()
        assert charon.stop() is None
