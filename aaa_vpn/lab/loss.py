"""Random loss on every link of the namespace lab (:mod:`aaa_vpn.lab.netns`)
with nftables, and the checks that the agents agree after each step: the
loss test (``tests/test_netns_loss.py``) and ``bench/control_plane_loss.py``.

Where datagrams are dropped (every UDP datagram, ``numgen random mod 100 <
N drop``; nothing else is touched, so ARP and pings still work):

* the backbone: a ``bridge`` table in the hub's namespace drops in the
  bridge's ``forward`` hook, so a datagram between two elements on the
  backbone (AAA, foreign AAA, HA, FAs, gateways) is lost once with
  probability N %, whichever way it goes;
* the node's links to the FAs and the correspondents' links to their
  gateways: an ``inet`` table in the ``mn``, ``ch1`` and ``ch2`` namespaces
  drops in ``input`` and ``output`` on every interface but ``lo`` -- once
  per datagram, at the end of the link that is not an agent.

Every table is named :data:`TABLE`; :func:`set_loss` replaces them at once
(``nft -f`` applies a file atomically), 0 removes them, and their counters
say how many datagrams each dropped (:func:`dropped`).

The checks read the agents' state files (docs/agents.md, "State file"):
:func:`settle` waits until no agent has an exchange under way
(``in_flight``), then :func:`disagreements` names everything that is not as
the HA's bindings say it must be.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aaa_vpn.lab.netns import FAS, Lab, expected_tables
from aaa_vpn.lab.topology import AGENTS, BACKBONE, LabError

TABLE = "aaa_vpn_loss"
#: The namespaces whose links lose datagrams, and the nftables family of their table.
LOSSY = {"hub": "bridge", "mn": "inet", "ch1": "inet", "ch2": "inet"}
GATEWAYS = ("gw-static", "gw-dynamic")


def loss_ruleset(family: str, percent: int) -> str:
    """The ``nft -f`` text that replaces table :data:`TABLE` of ``family``
    with one dropping ``percent`` % of UDP datagrams (module docstring)."""
    rule = f"meta l4proto udp numgen random mod 100 < {percent} counter drop"
    if family == "bridge":
        chains = f"  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    {rule}\n  }}\n"
    else:
        chains = "".join(
            f"  chain {hook} {{\n    type filter hook {hook} priority 0; policy accept;\n"
            f'    {"iifname" if hook == "input" else "oifname"} != "lo" {rule}\n  }}\n'
            for hook in ("input", "output")
        )
    # "add" then "delete" makes the delete succeed whether or not the table was there
    return f"add table {family} {TABLE}\ndelete table {family} {TABLE}\ntable {family} {TABLE} {{\n{chains}}}\n"


def set_loss(lab: Lab, percent: int) -> None:
    """Drop ``percent`` % of the datagrams on every link (0: none; the tables go)."""
    if not 0 <= percent <= 100:
        raise LabError(f"loss is a percentage, 0 to 100: {percent}")
    for name, family in LOSSY.items():
        if percent:
            text = loss_ruleset(family, percent)
        else:
            text = f"add table {family} {TABLE}\ndelete table {family} {TABLE}\n"
        result = subprocess.run(
            ["ip", "netns", "exec", lab.ns(name), "nft", "-f", "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LabError(f"nft in {name}: {result.stderr.strip() or result.stdout.strip()}")


def dropped(lab: Lab) -> dict[str, int]:
    """Datagrams each lossy namespace's table dropped since :func:`set_loss` made it."""
    counts: dict[str, int] = {}
    for name, family in LOSSY.items():
        result = lab.run(name, "nft", "-j", "list", "table", family, TABLE, check=False)
        if result.returncode != 0:
            counts[name] = 0
            continue
        packets = 0
        for item in json.loads(result.stdout).get("nftables", []):
            for expression in item.get("rule", {}).get("expr", []):
                if "counter" in expression:
                    packets += int(expression["counter"]["packets"])
        counts[name] = packets
    return counts


# -- the checks ------------------------------------------------------------------------------------------


def settle(lab: Lab, timeout: float = 40.0) -> dict[str, int]:
    """Wait until no agent has an exchange under way (``in_flight`` 0 in
    every state file); return what they last showed (not all 0: timed out)."""
    deadline = time.monotonic() + timeout
    while True:
        in_flight = {name: int(lab.state(name).get("in_flight", 0)) for name in AGENTS}
        if not any(in_flight.values()) or time.monotonic() > deadline:
            return in_flight
        time.sleep(0.05)


def _fa_named(address: str) -> str:
    return next(name for name in FAS if BACKBONE.of(name) == address)


def disagreements(states: dict[str, dict[str, Any]]) -> list[str]:
    """What is not as the HA's bindings say, in the agents' state files
    (``states``: agent -> its state), when no exchange is under way; empty
    when they agree:

    * every gateway holds exactly the HA's bindings (home address, session,
      epoch, care-of address), with nothing replaced still held;
    * the FA a binding names has the node as a visitor of the same session
      and epoch, and no other FA has a visitor;
    * every SA belongs to live state (a visitor, a forwarding path, a
      binding or its stationary paths), and the SA tables are those of the
      binding (:func:`aaa_vpn.lab.netns.expected_tables`, forwarding paths
      aside), or empty everywhere without one;
    * a forwarding path (flow E) is at an FA that forwards to its peer, or
      it is the receiving end at the FA the binding names (either end
      goes when its own lifetime ends, so one may outlive the other by the
      notification's round trip).
    """
    problems: list[str] = []
    home = states["ha"]
    bindings = {(b["home_address"], b["session_id"], b["epoch"], b["care_of_address"]) for b in home["bindings"]}
    for gateway in GATEWAYS:
        held = {
            (b["home_address"], b["session_id"], b["epoch"], b["care_of_address"]) for b in states[gateway]["bindings"]
        }
        if held != bindings:
            problems.append(f"{gateway} holds bindings {sorted(held)}, the HA {sorted(bindings)}")
        replaced = [b["replaced_owner"] for b in states[gateway]["bindings"] if b.get("replaced_owner")]
        if replaced:
            problems.append(f"{gateway} still holds replaced bindings {replaced}")
    visitors = {name: states[name]["visitors"] for name in FAS}
    named = {_fa_named(b["care_of_address"]): b for b in home["bindings"]}
    for name in FAS:
        binding = named.get(name)
        found = [(v["nai"], v["owner"]) for v in visitors[name]]
        wanted = [(binding["nai"], f"{binding['session_id']}#{binding['epoch']}")] if binding else []
        if found != wanted:
            problems.append(f"{name} has visitors {found}, the HA's bindings want {wanted}")
    # every SA owned by live state
    for name in AGENTS:
        state = states[name]
        if name in FAS:
            owned = {v["owner"] for v in state["visitors"]} | {f["owner"] for f in state.get("forwarding", [])}
        elif name == "ha":
            owned = {f"{b['session_id']}#{b['epoch']}" for b in state["bindings"]}
        else:
            owned = {b["owner"] for b in state["bindings"]}
        for sa in state["sas"]:
            owner = str(sa["owner"])
            stationary = name == "ha" and any(
                owner.startswith(f"{b['session_id']}/stationary#") for b in state["bindings"]
            )
            if owner not in owned and not stationary:
                problems.append(f"{name} holds an SA ({sa['role']} to {sa['peer']}) nobody owns: {owner}")
    # the SA tables are the binding's
    tables = {n: sorted((sa["role"], sa["peer"]) for sa in states[n]["sas"] if sa["role"] != "FA_FA") for n in AGENTS}
    if len(named) > 1:
        problems.append(f"the HA has {len(named)} bindings of one node")
    expected: dict[str, list[tuple[str, str]]] = {n: [] for n in AGENTS}
    for fa in named:
        expected.update({n: sorted(t) for n, t in expected_tables(fa, smooth=False).items()})
    for n in AGENTS:
        if tables[n] != expected[n]:
            problems.append(f"{n}'s SAs are {tables[n]}, the HA's bindings want {expected[n]}")
    # a forwarding path (flow E): the previous FA's sending end while it forwards, the
    # receiving end at the FA the node is at (each end goes when its own lifetime ends)
    for name in FAS:
        forwards = {("FA_FA", f["new_fa"]) for f in states[name].get("forwarding", [])}
        paths = {(sa["role"], sa["peer"]) for sa in states[name]["sas"] if sa["role"] == "FA_FA"}
        if name not in named and not paths <= forwards:
            problems.append(f"{name} has forwarding paths {sorted(paths)} but forwards {sorted(forwards)}")
    return problems


def states(lab: Lab) -> dict[str, dict[str, Any]]:
    return {name: lab.state(name) for name in AGENTS}


# -- steps: flows A to E under loss ----------------------------------------------------------------------

#: One round: register at FA1 (flows A and B, through the foreign AAA), move
#: to FA2 (flow C, the foreign AAA answers; flow E), to FA3 (flow D, the home
#: AAA answers; flow E), back to FA1 (flow D through the foreign AAA; flow E),
#: deregister.
ROUND = (("register", "fa1"), ("move", "fa2"), ("move", "fa3"), ("move", "fa1"), ("deregister", "fa1"))


@dataclass
class Step:
    """One registration, handoff or deregistration and what it left."""

    action: str
    fa: str
    previous: str | None
    code: int | None
    seconds: float
    settled: dict[str, int]
    """``in_flight`` of every agent after the step (all 0 once settled)."""
    problems: list[str] = field(default_factory=list)
    """:func:`disagreements` after the step, and whatever a failure left behind."""
    notes: list[str] = field(default_factory=list)
    """What is worth knowing but no disagreement (a deregistration carried out
    whose every reply was lost: the node reports 78, nothing is left anywhere)."""
    detail: dict[str, Any] = field(default_factory=dict)
    """For a failed step: the FA's last decisions and what the node sent and got."""
    before: tuple[Any, ...] | None = None
    after: tuple[Any, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.code == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "fa": self.fa,
            "previous": self.previous,
            "code": self.code,
            "seconds": round(self.seconds, 4),
            "settled": self.settled,
            "problems": self.problems,
            "notes": self.notes,
            **({"detail": self.detail} if self.detail else {}),
        }


def _binding(state: dict[str, Any]) -> tuple[Any, ...] | None:
    found = [(b["session_id"], b["epoch"], b["care_of_address"]) for b in state["bindings"]]
    return found[0] if len(found) == 1 else (tuple(found) if found else None)


def run_rounds(
    lab: Lab, rounds: int, progress: Callable[[Step], None] | None = None, settle_timeout: float = 40.0
) -> list[Step]:
    """``rounds`` times :data:`ROUND` through the lab's node driver (started
    already); after every step the agents settle and :func:`disagreements`
    is checked. A failed step must leave the HA's binding as it was (none
    for a first registration: then no SA, visitor or binding anywhere) --
    but for a deregistration carried out whose replies were all lost, which
    is noted; the node goes on from where the HA says it is."""
    steps: list[Step] = []
    current = _binding(lab.state("ha"))
    at = _fa_named(current[2]) if current is not None and isinstance(current[2], str) else None  # the HA's binding
    for _ in range(rounds):
        for action, fa in ROUND:
            if action == "deregister" and at is None:
                continue
            if action == "register" and at is not None:
                action, fa = "move", fa if fa != at else next(n for n in FAS if n != at)
            previous = at if action == "move" else None
            target = at if action == "deregister" else fa
            assert target is not None
            before = _binding(lab.state("ha"))
            result = lab.move(target, previous, deregister=action == "deregister")
            code = result.get("code")
            settled = settle(lab, settle_timeout)
            found = states(lab)
            after = _binding(found["ha"])
            step = Step(
                action, target, previous, code, float(result.get("seconds", 0.0)), settled, before=before, after=after
            )
            if any(settled.values()):
                step.problems.append(f"not settled after {settle_timeout} s: {settled}")
            step.problems += disagreements(found)
            if code == 0:
                if action != "deregister" and (after is None or after[2] != BACKBONE.of(target)):
                    step.problems.append(f"accepted, but the HA's binding is {after}")
            elif action == "deregister" and after is None:
                # the agents agree (checked above) that it is over; only the node did not hear it
                step.notes.append(f"deregistration carried out, but the node heard no reply ({code})")
            elif after != before:
                step.problems.append(f"failed with {code}, but the HA's binding went from {before} to {after}")
            if code != 0:
                step.detail = {
                    "fa_decisions": [e for e in found[target]["events"] if e.get("kind") == "registration"][-4:],
                    "node": [
                        (e.get("direction"), e.get("message"), e.get("code"), e.get("time"))
                        for e in result.get("exchange", [])
                    ],
                }
            # the node goes on from where the HA says it is
            at = _fa_named(after[2]) if after is not None and isinstance(after[2], str) else None
            steps.append(step)
            if progress is not None:
                progress(step)
    return steps


__all__ = [
    "GATEWAYS",
    "LOSSY",
    "ROUND",
    "TABLE",
    "Step",
    "disagreements",
    "dropped",
    "loss_ruleset",
    "run_rounds",
    "set_loss",
    "settle",
    "states",
]
