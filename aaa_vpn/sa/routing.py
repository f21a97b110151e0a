"""Policy routing into a data plane's TUN device, shared by the ``userspace``
backend (its own ESP on a TUN device) and the ``strongswan`` backend with
kernel-libipsec (charon's ``ipsec0``; charon's own route installation is off,
``aaa_vpn.sa.charon``): the kernel must hand the data plane exactly the
traffic a path protects.

Rules:

* For every installed path, for each pair of its selectors, a rule
  ``from <local_ts> to <remote_ts> lookup <table>`` (priority ``priority + 1``)
  and, in ``table``, a route ``<remote_ts> dev <tun>``. Selecting on the
  source too keeps a broad ``remote_ts`` such as ``0.0.0.0/0`` (an FA's path
  to its HA, the forwarding path of a smooth handoff) from pulling in the
  node's own control traffic or the packets it has just decrypted; it is also
  why a node needs no address inside its local selectors (an FA protects its
  visitors' home addresses, which are not its own).
* Rules and routes are reference-counted over the paths (a make-before-break
  replacement to another peer with the same selectors keeps them), added
  before the SAs on install (a packet that arrives in between meets no SA and
  is dropped, never sent in clear) and removed after the SAs on delete; only
  what one call added is undone when it fails.
* Packets carrying ``fwmark`` (the data plane's own outer packets, charon's
  IKE and ESP-in-UDP) bypass the table (rule at ``priority``), so a path whose
  selectors cover its peer cannot loop.
* Stale rules at these priorities (a crashed predecessor's) are removed by
  :meth:`PolicyRouting.start`.
* ``anchors`` (kernel-libipsec, which refuses a CHILD_SA whose local selector
  holds none of the node's addresses: it wants a local source address for
  the route it installs): for a local selector without one, the host address
  (the /32 itself, or the network's first host) is added to the TUN device,
  and a rule at :data:`ANCHOR_PRIORITY` sends packets *to* it on to the path
  rules (``goto``) before the ``local`` table, which :meth:`start` moves from
  priority 0 to :data:`LOCAL_PRIORITY`: the kernel forwards them (to the
  visitor on its link, or into the tunnel) instead of taking them as its own.
  Reference-counted like the rules; removed with the last path.
"""

from __future__ import annotations

import logging
import socket
import struct
from ipaddress import IPv4Address, IPv4Network

from aaa_vpn.sa.base import SaError
from aaa_vpn.sa.netlink import NetlinkDecodeError, NetlinkSocket, open_transport, split_message
from aaa_vpn.sa.tun import IpBatchError, IpCommand, NetnsError
from aaa_vpn.wire.profile import PathProfile

log = logging.getLogger("aaa_vpn.sa.routing")

NETLINK_ROUTE = 0
RTM_NEWADDR = 20
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
#: ``struct ifaddrmsg``: family, prefix length, flags, scope, interface index.
_IFADDRMSG = struct.Struct("=BBBBI")


def ipv4_addresses(netns: str | None = None) -> list[IPv4Address]:
    """Every IPv4 address configured in ``netns`` (``None``: this process's
    namespace), as ``ip -o -4 addr show`` lists them, read with one
    ``RTM_GETADDR`` dump (rtnetlink(7)) instead of a process."""
    connection = NetlinkSocket(open_transport(NETLINK_ROUTE, netns), {RTM_GETADDR: "RTM_GETADDR"})
    try:
        messages = connection.dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0))
    finally:
        connection.close()
    addresses: list[IPv4Address] = []
    for message in messages:
        if message.type != RTM_NEWADDR:
            continue
        fixed, attrs = split_message(message.payload, _IFADDRMSG.size, "ifaddrmsg")
        if fixed[0] != socket.AF_INET:
            continue
        values = {type_ & 0x3FFF: value for type_, value in attrs}
        # IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on a point-to-point link.
        value = values.get(IFA_LOCAL, values.get(IFA_ADDRESS))
        if value is None or len(value) != 4:
            raise NetlinkDecodeError("RTM_NEWADDR without a 4-octet IPv4 address")
        addresses.append(IPv4Address(value))
    return addresses


#: With anchors: the anchors' rules (to the anchor: go on at the path rules)
#: come before the local table, which moves from priority 0 to this one.
ANCHOR_PRIORITY = 50
LOCAL_PRIORITY = 100


class PolicyRouting:
    """The rules and routes that lead a node's protected traffic into its TUN device,
    reference-counted over the installed paths."""

    def __init__(self, ip: IpCommand, tun: str, table: int, priority: int, fwmark: int, anchors: bool = False) -> None:
        self.ip = ip
        self.tun = tun
        self.table = table
        self.priority = priority
        self.fwmark = fwmark
        self.anchors = anchors
        self._rules: dict[tuple[IPv4Network, IPv4Network], int] = {}
        self._routes: dict[IPv4Network, int] = {}
        self._anchors: dict[IPv4Address, int] = {}

    def _bypass(self, verb: str) -> list[str]:
        mark = f"0x{self.fwmark:x}/0x{self.fwmark:x}"
        return ["rule", verb, "pref", str(self.priority), "fwmark", mark, "lookup", "main"]

    def _rule(self, verb: str, pair: tuple[IPv4Network, IPv4Network]) -> list[str]:
        local, remote = pair
        pref = str(self.priority + 1)
        return ["rule", verb, "pref", pref, "from", str(local), "to", str(remote), "lookup", str(self.table)]

    def _route(self, verb: str, network: IPv4Network) -> list[str]:
        return ["route", verb, str(network), "dev", self.tun, "table", str(self.table)]

    def start(self) -> None:
        """Remove stale rules at this backend's priorities, then add the bypass rule."""
        stale = 0
        for line in self.ip.output("rule", "show").splitlines():
            pref = line.split(":", 1)[0].strip()
            if pref in (str(self.priority), str(self.priority + 1)):
                stale += 1
        if stale:
            log.warning("removing stale routing rules", extra={"fields": {"count": stale, "netns": self.ip.netns}})
            commands = [["rule", "del", "pref", str(p)] for p in (self.priority, self.priority + 1)]
            self.ip.batch(commands * stale, force=True)
        self.ip.batch([self._bypass("add")])
        if self.anchors and not any(
            line.split(":", 1)[0].strip() == str(LOCAL_PRIORITY) for line in self.ip.output("rule", "show").splitlines()
        ):
            # The local table after the anchors' rules (see the module rules).
            self.ip.batch([["rule", "add", "pref", str(LOCAL_PRIORITY), "lookup", "local"]])
            self.ip.batch([["rule", "del", "pref", "0", "lookup", "local"]], force=True)

    @staticmethod
    def _pairs(path: PathProfile) -> list[tuple[IPv4Network, IPv4Network]]:
        return [(local, remote) for local in path.local_ts for remote in path.remote_ts]

    def _node_addresses(self) -> list[IPv4Address]:
        try:
            return ipv4_addresses(self.ip.netns)
        except (OSError, NetlinkDecodeError) as exc:
            raise SaError(f"cannot list the node's addresses: {exc}") from None

    @staticmethod
    def _candidate(net: IPv4Network) -> IPv4Address:
        return net.network_address if net.prefixlen == 32 else net.network_address + 1

    def _anchors_for(self, path: PathProfile) -> list[IPv4Address]:
        """The anchor addresses ``path`` uses (``anchors``): one per local selector
        that holds none of the node's own addresses (or that is anchored already)."""
        if not self.anchors:
            return []
        own = [a for a in self._node_addresses() if a not in self._anchors]
        return [
            self._candidate(net)
            for net in path.local_ts
            if self._candidate(net) in self._anchors or not any(a in net for a in own)
        ]

    def _anchor(self, verb: str, address: IPv4Address) -> list[list[str]]:
        rule = ["rule", verb, "pref", str(ANCHOR_PRIORITY), "to", f"{address}/32", "goto", str(self.priority)]
        if verb == "add":
            return [["addr", "add", f"{address}/32", "dev", self.tun], rule]
        return [rule, ["addr", "del", f"{address}/32", "dev", self.tun]]

    def acquire(self, path: PathProfile) -> None:
        """Add what ``path`` needs and is not there yet; all of it or, raising :class:`SaError`, none."""
        wanted_anchors = self._anchors_for(path)
        new_anchors = [a for a in dict.fromkeys(wanted_anchors) if a not in self._anchors]
        new_rules = [pair for pair in dict.fromkeys(self._pairs(path)) if pair not in self._rules]
        new_routes = [net for net in dict.fromkeys(path.remote_ts) if net not in self._routes]
        commands = [c for a in new_anchors for c in self._anchor("add", a)]
        undo = [c for a in new_anchors for c in self._anchor("del", a)]
        commands += [self._rule("add", pair) for pair in new_rules] + [self._route("replace", n) for n in new_routes]
        undo += [self._rule("del", pair) for pair in new_rules] + [self._route("del", n) for n in new_routes]
        try:
            self.ip.batch(commands)
        except IpBatchError as exc:
            # Undo what was made, and only that: a rule that failed with "File
            # exists" is someone else's.
            done = len(commands) if exc.done is None else exc.done
            self.ip.batch(undo[:done], force=True)
            raise SaError(f"cannot route the path's selectors into {self.tun}: {exc}") from None
        for pair in self._pairs(path):
            self._rules[pair] = self._rules.get(pair, 0) + 1
        for net in path.remote_ts:
            self._routes[net] = self._routes.get(net, 0) + 1
        for address in wanted_anchors:
            self._anchors[address] = self._anchors.get(address, 0) + 1

    def release(self, path: PathProfile) -> None:
        """Drop ``path``'s references; remove the rules and routes no other path uses."""
        commands: list[list[str]] = []
        for pair in self._pairs(path):
            self._rules[pair] -= 1
            if self._rules[pair] == 0:
                del self._rules[pair]
                commands.append(self._rule("del", pair))
        for net in path.remote_ts:
            self._routes[net] -= 1
            if self._routes[net] == 0:
                del self._routes[net]
                commands.append(self._route("del", net))
        for net in path.local_ts:
            address = self._candidate(net)
            if address in self._anchors:
                self._anchors[address] -= 1
                if self._anchors[address] == 0:
                    del self._anchors[address]
                    commands += self._anchor("del", address)
        try:
            self.ip.batch(commands)
        except NetnsError as exc:
            # The SAs are gone already, so what is left only leads into a TUN
            # device that drops the packets (no_policy); say so and carry on.
            log.error("could not remove routing state", extra={"fields": {"tun": self.tun, "error": str(exc)}})
            self.ip.batch(commands, force=True)

    def stop(self) -> None:
        """Remove every rule and route this backend added (the routes go with the device anyway)."""
        commands = [self._rule("del", pair) for pair in self._rules]
        commands += [self._route("del", net) for net in self._routes]
        commands += [c for address in self._anchors for c in self._anchor("del", address)]
        self._anchors.clear()
        commands.append(self._bypass("del"))
        self._rules.clear()
        self._routes.clear()
        self.ip.batch(commands, force=True)

    def rules(self) -> list[tuple[IPv4Network, IPv4Network]]:
        """The (local, remote) selector pairs routed into the device now."""
        return list(self._rules)

    def routes(self) -> list[IPv4Network]:
        """The remote prefixes in the table now."""
        return list(self._routes)
