"""The demos' checks and their verdict (``aaa-vpn demo`` on loopback and
``--netns``).

A check is a plain dict, as the demos' JSON reports carry it: ``check`` (what
must hold, in words), ``ok``, ``detail`` (what was found, with its figures)
and, optionally, ``failure`` (the one line to say when it does not hold, if
``check -- detail`` would not read well). The verdict of a run is "every step
succeeded" or the list of the checks that failed, each with where it failed
and its figures: a FAILED demo always says which check failed and by how much.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: The share of a stream's datagrams the netns demo may lose over a whole run.
LOSS_BOUND = 0.10

Check = dict[str, Any]


def check(what: str, ok: bool, detail: str = "", failure: str | None = None) -> Check:
    """One check."""
    result: Check = {"check": what, "ok": bool(ok), "detail": detail}
    if failure is not None:
        result["failure"] = failure
    return result


def loss_check(stream: str, sent: int, received: int, bound: float = LOSS_BOUND) -> Check:
    """``stream`` lost at most ``bound`` of what was sent (and something was sent).

    >>> loss_check("ch1 -> mn", 400, 356)["failure"]
    'stream ch1 -> mn: lost 44 of 400 datagrams (11.0 %), bound 10 %'
    """
    lost = max(0, sent - received)
    share = lost / sent if sent else 1.0
    figures = f"lost {lost} of {sent} datagrams ({100 * share:.1f} %), bound {100 * bound:g} %"
    return check(
        f"stream {stream} lost at most {100 * bound:g} % of its datagrams",
        sent > 0 and lost <= bound * sent,
        figures,
        failure=f"stream {stream}: {figures}" if sent else f"stream {stream}: nothing was sent",
    )


def failure_text(item: Mapping[str, Any]) -> str:
    """The line that says why ``item`` failed, with its figures."""
    if item.get("failure"):
        return str(item["failure"])
    detail = str(item.get("detail") or "").strip()
    return f"{item['check']}: {detail}" if detail else str(item["check"])


def failures(checks: Iterable[Mapping[str, Any]], where: str = "") -> list[str]:
    """Every failed check of ``checks`` as one line, prefixed with ``where``."""
    prefix = f"{where}: " if where else ""
    return [prefix + failure_text(item) for item in checks if not item.get("ok")]


def verdict(lines: Iterable[str], error: str | None = None) -> str:
    """``""`` when nothing failed; otherwise ``FAILED: <line>; <line>...``
    (an ``error`` that stopped the run first)."""
    found = [*([error] if error else []), *lines]
    return f"FAILED: {'; '.join(found)}" if found else ""


__all__ = ["LOSS_BOUND", "check", "failure_text", "failures", "loss_check", "verdict"]
