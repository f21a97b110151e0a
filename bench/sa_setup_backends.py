#!/usr/bin/env python3
"""SA set-up and teardown time of every SA backend, for one path at both ends.

The path is an FA-HA path of a mobile node (FA 192.0.2.1 with the node's home
address 198.51.100.10/32 as local selector, HA 192.0.2.2 with 0.0.0.0/0),
AES-GCM-16-128, fresh SPIs and fresh keys every run, as the home AAA issues
them. Per run:

* ``setup``: ``install`` on the FA (the near end, which installs first in
  every flow), then on the HA; ``near`` and ``far`` are the two calls alone;
* ``teardown``: ``delete`` on the HA, then on the FA (``far del``, ``near del``).

Backends (each in its own setting; one warm-up run, then ``-n`` measured):

* ``memory``: two :class:`~aaa_vpn.sa.memory.MemoryBackend` in this process
  (the SAD in a dict, ESP contexts built; no kernel, no I/O).
* ``userspace``: two :class:`~aaa_vpn.sa.userspace.UserspaceBackend` in two
  network namespaces joined by a veth (``aab<pid>s_a``/``_b``), driven from this
  process as in tests/test_sa_userspace.py; an install adds the path's
  policy-routing rule and route into the TUN device (one ``ip -batch``
  process), a delete removes them.
* ``strongswan``: bench/sa_setup.py's measurement (its ``run``), unchanged:
  a charon-systemd with kernel-libipsec in each of two namespaces on a bridge
  (tests/sswan_lab.py, here with the namespace prefix ``aab_``); the far end's
  install is the initiator's (IKE_SA_INIT + IKE_AUTH, the CHILD_SA installed),
  ``setup`` runs until the near end lists its CHILD_SA INSTALLED and
  ``teardown`` until the near end has no SA left (DELETE exchange, unload).
* ``xfrm``: **policies only**. This kernel has no ESP, so no SA can be
  installed (a real :class:`~aaa_vpn.sa.xfrm.XfrmBackend` install raises
  SaUnsupported; checked and reported). Measured instead: the backend's
  install/delete with its SA requests answered by the tests' fake SAD
  (tests/test_sa_xfrm.py ``SplitTransport``) and every policy request going
  to the real kernel of a namespace (``aab<pid>x_a``/``_b``: 3 policies per
  end, out/in/fwd), and ``xfrm-spd``: the bare kernel part, 3 NEWPOLICY and 3
  DELPOLICY per end over NETLINK_XFRM, without the backend.

Every namespace is deleted and every charon stopped by PID at the end, also
on Ctrl-C / SIGTERM. Needs root.

Usage (from the repository root):

    .venv/bin/python bench/sa_setup_backends.py --quick          # n = 10, < 60 s
    .venv/bin/python bench/sa_setup_backends.py -n 200
    .venv/bin/python bench/sa_setup_backends.py -n 100 --backends memory,xfrm --json /tmp/sa.json

Prints a markdown table (ms: median, p90, min, max per step and backend).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import FrameType
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from netns_cleanup import shield, sweep  # noqa: E402  (bench/netns_cleanup.py)

from aaa_vpn.model import EspTransform, KeyMode  # noqa: E402
from aaa_vpn.sa import xfrm as x  # noqa: E402
from aaa_vpn.sa import xfrm_codec as xc  # noqa: E402
from aaa_vpn.sa.base import SaUnsupported  # noqa: E402
from aaa_vpn.sa.memory import MemoryBackend  # noqa: E402
from aaa_vpn.sa.netlink import NETLINK_XFRM, NetlinkSocket, open_transport  # noqa: E402
from aaa_vpn.sa.userspace import UserspaceBackend  # noqa: E402
from aaa_vpn.secret import Secret  # noqa: E402
from aaa_vpn.wire.profile import PathProfile, PathRole  # noqa: E402

FA, HA = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
MN = IPv4Network("198.51.100.10/32")
ANY = IPv4Network("0.0.0.0/0")
TRANSFORM = EspTransform.AES_GCM_16_128
STEPS = ("near", "far", "setup", "far del", "near del", "teardown")
Times = dict[str, list[float]]


def views(i: int) -> tuple[PathProfile, PathProfile]:
    """(FA's view, HA's view) of run ``i``'s FA-HA path: fresh SPIs and keys."""
    n = TRANSFORM.keymat_length
    up, down = Secret(os.urandom(n)), Secret(os.urandom(n))
    fa = PathProfile(
        role=PathRole.FA_HA,
        local=FA,
        peer=HA,
        local_ts=(MN,),
        remote_ts=(ANY,),
        key_mode=KeyMode.MANUAL,
        esp_transform=TRANSFORM,
        spi_in=0x10000 + i,
        spi_out=0x20000 + i,
        key_in=down,
        key_out=up,
        lifetime=600,
    )
    ha = dataclasses.replace(
        fa, local=HA, peer=FA, local_ts=(ANY,), remote_ts=(MN,), spi_in=0x20000 + i, spi_out=0x10000 + i
    )
    return fa, dataclasses.replace(ha, key_in=up, key_out=down)


class Installer(Protocol):
    def install(self, path: PathProfile, owner: str) -> object: ...

    def delete(self, owner: str) -> int: ...


def cycle(near: Installer, far: Installer, n: int) -> Times:
    """install near, install far, delete far, delete near; ``n`` runs after a warm-up."""
    times: Times = {step: [] for step in STEPS}
    clock = time.perf_counter
    for i in range(n + 1):
        near_view, far_view = views(i)
        owner = f"s{i}/FA_HA"
        t0 = clock()
        near.install(near_view, owner)
        t1 = clock()
        far.install(far_view, owner)
        t2 = clock()
        assert far.delete(owner) == 1
        t3 = clock()
        assert near.delete(owner) == 1
        t4 = clock()
        if i:
            for step, value in zip(STEPS, (t1 - t0, t2 - t1, t2 - t0, t3 - t2, t4 - t3, t4 - t2), strict=True):
                times[step].append(value)
    return times


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def two_namespaces(prefix: str, link: bool) -> Iterator[tuple[str, str]]:
    """``prefix``a (FA, 192.0.2.1) and ``prefix``b (HA, 192.0.2.2), joined by a veth if ``link``."""
    a, b = prefix + "a", prefix + "b"
    created: list[str] = []
    try:
        for ns in (a, b):
            run("ip", "netns", "add", ns)
            created.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        if link:
            tag = prefix.replace("_", "")[:12]
            run("ip", "link", "add", tag + "a", "netns", a, "type", "veth", "peer", "name", tag + "b", "netns", b)
            for ns, device, address in ((a, tag + "a", FA), (b, tag + "b", HA)):
                run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", device)
                run("ip", "-n", ns, "link", "set", device, "up")
        yield a, b
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)


# -- the backends ----------------------------------------------------------------------------------


def bench_memory(n: int, _prefix: str) -> tuple[Times, list[str]]:
    near, far = MemoryBackend(FA), MemoryBackend(HA)
    try:
        return cycle(near, far, n), ["in process, no I/O"]
    finally:
        near.close()
        far.close()


def bench_userspace(n: int, prefix: str) -> tuple[Times, list[str]]:
    with two_namespaces(prefix + "s_", link=True) as (ns_a, ns_b):
        near = UserspaceBackend(FA, tun_name="aabtun", netns=ns_a)
        try:
            far = UserspaceBackend(HA, tun_name="aabtun", netns=ns_b)
            try:
                return cycle(near, far, n), ["two namespaces, one process; routing rule + route per path (ip -batch)"]
            finally:
                far.close()
        finally:
            near.close()


def bench_strongswan(n: int, _prefix: str) -> tuple[Times, list[str]]:
    import sa_setup  # bench/sa_setup.py

    from tests import sswan_lab

    sswan_lab.PREFIX = "aab_"  # this script's namespaces (read when a Lab is made)
    measured, version = sa_setup.run(n)
    times = {
        "near": measured["responder"],
        "far": measured["initiator"],
        "setup": measured["setup"],
        "teardown": measured["teardown"],
    }
    return times, [f"{version}, kernel-libipsec, IKEv2 PSK; via bench/sa_setup.py run()"]


def kernel_refuses_sas(netns: str) -> str:
    """Install through a real XfrmBackend: on this kernel it must raise SaUnsupported."""
    backend = x.XfrmBackend(FA, netns)
    try:
        backend.install(views(10**6)[0], "probe/FA_HA")
    except SaUnsupported as exc:
        return f"real kernel: install raised SaUnsupported ({exc})"
    else:
        backend.delete("probe/FA_HA")
        return "real kernel: install succeeded (this kernel has ESP)"
    finally:
        backend.close()


def bench_xfrm(n: int, prefix: str) -> tuple[Times, list[str]]:
    from tests.test_sa_xfrm import SplitTransport, Wire

    with two_namespaces(prefix + "x_", link=False) as (ns_a, ns_b):
        notes = [kernel_refuses_sas(ns_a)]
        wires = (Wire(), Wire())
        near = x.XfrmBackend(FA, transport=lambda: SplitTransport(wires[0], ns_a))
        far = x.XfrmBackend(HA, transport=lambda: SplitTransport(wires[1], ns_b))
        try:
            times = cycle(near, far, n)
        finally:
            near.close()
            far.close()
    notes.append("POLICIES ONLY: 3 policies per end in the namespace's kernel, SA requests to the tests' fake SAD")
    return times, notes


def policy_messages(path: PathProfile, node: IPv4Address) -> list[tuple[xc.PolicyMessage, xc.PolicyIdMessage]]:
    """The 3 policies (out, in, fwd) of ``path`` as XfrmBackend builds them, with their delete requests."""
    result = []
    for direction, src, dst in x.policy_keys(path):
        outbound = direction == xc.XFRM_POLICY_OUT
        tunnel_src, tunnel_dst = (node, path.peer) if outbound else (path.peer, node)
        template = xc.UserTmpl(
            id=xc.XfrmId(xc.xfrm_address(tunnel_dst), 0, xc.IPPROTO_ESP),
            family=xc.AF_INET,
            saddr=xc.xfrm_address(tunnel_src),
            reqid=x.REQID_BASE,
            mode=xc.XFRM_MODE_TUNNEL,
        )
        selector = xc.XfrmSelector.ipv4(src, dst)
        info = xc.UserPolicyInfo(
            sel=selector, lft=xc.LIFETIME_INFINITE, priority=x.PRIORITY_BASE, dir=direction, action=xc.XFRM_POLICY_ALLOW
        )
        result.append(
            (xc.PolicyMessage(info, (template,)), xc.PolicyIdMessage(xc.UserPolicyId(selector, 0, direction)))
        )
    return result


def bench_xfrm_spd(n: int, prefix: str) -> tuple[Times, list[str]]:
    with two_namespaces(prefix + "p_", link=False) as (ns_a, ns_b):
        near_sock = NetlinkSocket(open_transport(NETLINK_XFRM, ns_a), xc.MESSAGE_NAMES)
        far_sock = NetlinkSocket(open_transport(NETLINK_XFRM, ns_b), xc.MESSAGE_NAMES)
        fa_view, ha_view = views(0)
        near_messages = [(m.encode(), d.encode()) for m, d in policy_messages(fa_view, FA)]
        far_messages = [(m.encode(), d.encode()) for m, d in policy_messages(ha_view, HA)]

        class Spd:
            def __init__(self, sock: NetlinkSocket, messages: list[tuple[bytes, bytes]]) -> None:
                self.sock, self.messages = sock, messages

            def install(self, path: PathProfile, owner: str) -> None:
                for new, _delete in self.messages:
                    self.sock.request(xc.XFRM_MSG_NEWPOLICY, new)

            def delete(self, owner: str) -> int:
                for _new, delete in self.messages:
                    self.sock.request(xc.XFRM_MSG_DELPOLICY, delete)
                return 1

        try:
            times = cycle(Spd(near_sock, near_messages), Spd(far_sock, far_messages), n)
        finally:
            near_sock.close()
            far_sock.close()
    return times, ["POLICIES ONLY, no backend: 3 NEWPOLICY / 3 DELPOLICY per end, acknowledged, in a namespace"]


BACKENDS: dict[str, Callable[[int, str], tuple[Times, list[str]]]] = {
    "memory": bench_memory,
    "userspace": bench_userspace,
    "strongswan": bench_strongswan,
    "xfrm": bench_xfrm,
    "xfrm-spd": bench_xfrm_spd,
}


# -- the report --------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(results: dict[str, Times], n: int) -> str:
    lines = [
        f"| backend (n = {n}) | step | median ms | p90 ms | min ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, times in results.items():
        for step in STEPS:
            values = times.get(step)
            if not values:
                continue
            ms = [1000 * v for v in values]
            lines.append(
                f"| {name} | {step} | {statistics.median(ms):.3f} | {quantile(ms, 0.9):.3f} "
                f"| {min(ms):.3f} | {max(ms):.3f} |"
            )
    return "\n".join(lines)


def summary(results: dict[str, Times]) -> str:
    lines = ["| backend | setup median / p90 ms | teardown median / p90 ms |", "|---|---:|---:|"]
    for name, times in results.items():
        setup, teardown = [1000 * v for v in times["setup"]], [1000 * v for v in times["teardown"]]
        lines.append(
            f"| {name} | {statistics.median(setup):.3f} / {quantile(setup, 0.9):.3f} "
            f"| {statistics.median(teardown):.3f} / {quantile(teardown, 0.9):.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=100, help="measured runs per backend, after one warm-up (default 100)")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"comma-separated (default {','.join(BACKENDS)})"
    )
    parser.add_argument("--json", type=Path, help="write every run's times (seconds) here")
    parser.add_argument("--quick", action="store_true", help="smoke run: n = 10")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 10
    names = args.backends.split(",")
    if unknown := [name for name in names if name not in BACKENDS]:
        parser.error(f"unknown backend(s) {', '.join(unknown)}: {', '.join(BACKENDS)}")
    if os.geteuid() != 0 and set(names) - {"memory"}:
        parser.error("needs root (network namespaces) for every backend but memory")

    def stop(signum: int, _frame: FrameType | None) -> None:
        # The first Ctrl-C / SIGTERM stops the run; later ones must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    prefix = f"aab{os.getpid() % 10000}"
    load = os.getloadavg()[0]
    began = time.monotonic()
    results: dict[str, Times] = {}
    notes: dict[str, list[str]] = {}
    private = tempfile.mkdtemp(prefix="aab_sa_")
    tempfile.tempdir = private  # every temporary directory of this run (the charons') goes in here
    try:
        for name in names:
            print(f"{name}: n = {args.n} ...", file=sys.stderr, flush=True)
            results[name], notes[name] = BACKENDS[name](args.n, prefix)
    finally:
        shield()
        if left := sweep(re.compile(rf"^(aab{os.getpid() % 10000}[sxp]_|aab_{os.getpid()}_)")):
            print(f"cleaned up after an interruption: {len(left)} namespaces", file=sys.stderr)
        shutil.rmtree(private, ignore_errors=True)
    elapsed = time.monotonic() - began
    command = shlex.join([".venv/bin/python", "bench/sa_setup_backends.py", *argv])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## {stamp}: SA set-up and teardown per backend, one FA-HA path, both ends\n")
    print(f"- machine: {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}")
    print(f"- load average before: {load:.2f}; run took {elapsed:.0f} s")
    print(f"- command: `{command}` (as root)")
    for name, items in notes.items():
        for note in items:
            print(f"- {name}: {note}")
    print()
    print(summary(results))
    print()
    print(table(results, args.n))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "when": stamp, "notes": notes, "times": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
