"""A small lab of network namespaces with one charon each, for the strongswan
backend's tests and ``bench/sa_setup.py``.

``Lab(n)`` makes ``n`` nodes ``aas_<pid>_<k>_<i>`` joined through a bridge in a
hub namespace ``aas_<pid>_<k>_hub``: node ``i`` has 192.0.2.(i+1)/24 on its
veth and loopback up. Everything is removed by :meth:`Lab.close` (charons and
captures stopped by PID first, then the namespaces deleted), also after a
failed start. Traffic never leaves these namespaces.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from aaa_vpn.sa.charon import Charon
from aaa_vpn.sa.strongswan import StrongSwanBackend

PREFIX = "aas_"
_labs = itertools.count()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Capture:
    """tcpdump on one interface of a namespace, writing a pcap; stopped by its PID."""

    def __init__(self, netns: str, interface: str, path: Path) -> None:
        self.path = path
        # `ip netns exec` execs tcpdump: the PID is tcpdump's own.
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", netns, "tcpdump", "-i", interface, "-n", "-U", "--immediate-mode", "-w", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # tcpdump says "listening on ..." on stderr once the capture runs.
        assert self._process.stderr is not None
        line = self._process.stderr.readline()
        if b"listening on" not in line:
            self.stop()
            raise RuntimeError(f"tcpdump did not start: {line!r}")

    def stop(self) -> Path:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stderr is not None:
            self._process.stderr.close()
        return self.path


class LabNode:
    """One namespace with its address, its charon and helpers."""

    def __init__(self, lab: Lab, index: int) -> None:
        self.lab = lab
        self.index = index
        self.netns = f"{lab.name}_{index}"
        self.veth = f"aas{lab.short}{index}"
        self.address = IPv4Address(f"192.0.2.{index + 1}")
        self.charon = Charon(lab.directory / f"n{index}", netns=self.netns, log_keys=lab.log_keys)

    def __repr__(self) -> str:
        return f"LabNode({self.netns}, {self.address})"

    def run(self, *command: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *command], check=check, capture_output=True, text=True, timeout=timeout
        )

    def add_address(self, interface: str | IPv4Interface, device: str = "lo") -> None:
        ip("-n", self.netns, "addr", "add", str(interface), "dev", device)

    def backend(self, **kwargs: Any) -> StrongSwanBackend:
        return StrongSwanBackend(self.address, self.charon.vici_socket, **kwargs)

    def capture(self, name: str = "capture.pcap") -> Capture:
        capture = Capture(self.netns, self.veth, self.lab.directory / f"n{self.index}-{name}")
        self.lab._captures.append(capture)
        return capture


class Lab:
    """``n`` namespaces on one bridge, each with a running charon (see the module docstring)."""

    def __init__(self, n: int, log_keys: bool = False, start_charons: bool = True) -> None:
        number = next(_labs)
        self.short = f"{os.getpid()}{number % 100}"  # interface names: at most 15 characters
        self.name = f"{PREFIX}{os.getpid()}_{number}"
        self.log_keys = log_keys
        # A short directory: the VICI socket path must fit in sockaddr_un (108 octets).
        self.directory = Path(tempfile.mkdtemp(prefix=PREFIX))
        self._namespaces: list[str] = []
        self._captures: list[Capture] = []
        self.nodes: list[LabNode] = []
        try:
            hub = f"{self.name}_hub"
            self._add_netns(hub)
            ip("-n", hub, "link", "add", "br0", "type", "bridge")
            ip("-n", hub, "link", "set", "br0", "up")
            for index in range(n):
                node = LabNode(self, index)
                self._add_netns(node.netns)
                port = f"{node.veth}h"
                ip("link", "add", node.veth, "netns", node.netns, "type", "veth", "peer", "name", port, "netns", hub)
                ip("-n", hub, "link", "set", port, "master", "br0", "up")
                ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", node.veth)
                ip("-n", node.netns, "link", "set", node.veth, "up")
                ip("-n", node.netns, "link", "set", "lo", "up")
                self.nodes.append(node)
            if start_charons:
                for node in self.nodes:
                    node.charon.start()
        except BaseException:
            self.close()
            raise

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)

    def __getitem__(self, index: int) -> LabNode:
        return self.nodes[index]

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every capture and charon (by PID), delete the namespaces and the directory."""
        for capture in self._captures:
            capture.stop()
        for node in self.nodes:
            node.charon.stop()
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._namespaces.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


def wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    """For tests only: poll ``condition()`` (e.g. the peer's list_sas) until true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def tshark_fields(pcap: Path, fields: Sequence[str], display_filter: str | None = None) -> list[list[str]]:
    """Rows of ``fields`` per frame, decoded by tshark with an empty private profile."""
    config = pcap.with_suffix(".wireshark")
    config.mkdir(exist_ok=True)
    command = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|", "-E", "occurrence=a"]
    if display_filter:
        command += ["-Y", display_filter]
    for name in fields:
        command += ["-e", name]
    result = subprocess.run(
        command, check=True, capture_output=True, text=True, env=dict(os.environ, WIRESHARK_CONFIG_DIR=str(config))
    )
    return [line.split("|") for line in result.stdout.splitlines() if line]
