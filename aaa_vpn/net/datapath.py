"""The Mobile IP data path an FA adds to its host (issue 5; docs/agents.md,
"Data path").

Rules (RFC 5944 sections 4.2.2 and 4.2.3):

* The SA backend routes what a path protects into its data plane (the
  ``userspace`` and ``strongswan`` backends add policy-routing rules for the
  path's selectors). What is left for the FA is the last hop: a packet the HA
  tunnelled to it for a visitor's home address must go out on the visitor's
  link. So, for every visitor, the FA routes the home address (a /32) via the
  address the visitor's registration came from (the mobile node's address on
  that link), and removes the route when the visitor goes (expiry,
  deregistration, a move elsewhere: after a move the forwarding path's rule
  takes the node's packets to the new FA).
* A visitor whose registration came from its home address itself needs no
  route of its own (the node is on the link already).
* Routes are changed with ``ip route replace``/``ip route del`` in the
  agent's own network namespace; a failure is logged and counted, and
  retried at the next change. Only routes this object added are removed.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable
from ipaddress import IPv4Address

from aaa_vpn.service.logging import fields

log = logging.getLogger("aaa_vpn.datapath")


class VisitorRoutes:
    """An FA's host routes to its visitors' home addresses."""

    def __init__(self, ip: str = "ip") -> None:
        self.ip = ip
        self.routes: dict[IPv4Address, str] = {}  # home address -> next hop (the node on its link)
        self.errors = 0

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
            error = self._run("route", "replace", f"{home}/32", "via", via)
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
        """Remove every route this object added."""
        self.sync(())
