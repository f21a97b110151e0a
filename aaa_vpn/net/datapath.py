"""The Mobile IP data path an FA adds to its host (docs/agents.md, "The netns
demo and the data path").

Rules (RFC 5944 sections 4.2.2 and 4.2.3):

* The SA backend routes what a path protects into its data plane (the
  ``userspace`` and ``strongswan`` backends add policy-routing rules for the
  path's selectors). What is left for the FA is the last hop: a packet the HA
  tunnelled to it for a visitor's home address must go out on the visitor's
  link. So, for every visitor, the FA routes the home address (a /32) via the
  address the visitor's registration came from (the mobile node's address on
  that link), and removes the route when the visitor goes (expiry,
  deregistration, a move elsewhere: after a move the forwarding path's rule
  takes the node's packets to the new FA). A registration the FA relayed to
  the HA (AAA accepted, its SAs installed) is routed already: the HA and the
  gateways send here as soon as they accept, before the reply is back; a
  denial or a timeout removes the route again.
* A visitor whose registration came from its home address itself needs no
  route of its own (the node is on the link already).
* Routes are changed with ``ip route replace``/``ip route del`` in the
  agent's own network namespace, marked ``proto`` :data:`ROUTE_PROTOCOL` so
  they are recognisably the FA's; a failure is logged and counted, and
  retried at the next change. Only such routes are ever removed.
* An FA that keeps a journal keeps its visitor routes when it stops (its
  visitors, and their SAs in a charon or the kernel, outlive the process);
  the next start adopts the marked routes and removes those of visitors
  that ended meanwhile at its first change.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable
from ipaddress import IPv4Address

from aaa_vpn.service.logging import fields

log = logging.getLogger("aaa_vpn.datapath")


#: The routing protocol number that marks an FA's visitor routes (a private value).
ROUTE_PROTOCOL = 44


class VisitorRoutes:
    """An FA's host routes to its visitors' home addresses."""

    def __init__(self, ip: str = "ip", keep_on_close: bool = False) -> None:
        self.ip = ip
        self.keep_on_close = keep_on_close
        self.routes: dict[IPv4Address, str] = {}  # home address -> next hop (the node on its link)
        self.errors = 0
        # Adopt the routes a predecessor left (rules above).
        listing = subprocess.run(
            [self.ip, "-4", "route", "show", "proto", str(ROUTE_PROTOCOL)], capture_output=True, text=True, check=False
        )
        for line in listing.stdout.splitlines():
            words = line.split()
            if len(words) >= 3 and words[1] == "via":
                try:
                    self.routes[IPv4Address(words[0].split("/")[0])] = words[2]
                except ValueError:
                    continue

    def _run(self, *args: str) -> str | None:
        result = subprocess.run([self.ip, "-4", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            self.errors += 1
            return result.stderr.strip() or f"exit status {result.returncode}"
        return None

    def sync(self, visitors: Iterable[tuple[IPv4Address, str]]) -> None:
        """Make the routes those of ``visitors``: (home address, registration source) pairs."""
        wanted = {home: source for home, source in visitors if source != str(home)}
        for home, via in wanted.items():
            if self.routes.get(home) == via:
                continue
            error = self._run("route", "replace", f"{home}/32", "via", via, "proto", str(ROUTE_PROTOCOL))
            if error is None:
                self.routes[home] = via
                log.info("visitor route added", extra=fields(home_address=str(home), via=via))
            else:
                log.warning("cannot route a visitor", extra=fields(home_address=str(home), via=via, error=error))
        for home in [h for h in self.routes if h not in wanted]:
            via = self.routes.pop(home)
            error = self._run("route", "del", f"{home}/32", "via", via)
            if error is None:
                log.info("visitor route removed", extra=fields(home_address=str(home), via=via))
            else:
                log.warning("cannot remove a visitor route", extra=fields(home_address=str(home), error=error))

    def close(self) -> None:
        """Remove every visitor route, unless they are kept for the next start."""
        if not self.keep_on_close:
            self.sync(())
