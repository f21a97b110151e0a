"""The demos' verdicts: a FAILED run names every check that failed, where, and
its figures (aaa_vpn/lab/verdict.py; the loopback demo's ``run_verdict``, the
netns demo's ``step_checks`` and loss checks)."""

from __future__ import annotations

from typing import Any

from aaa_vpn.lab.demo import run_verdict
from aaa_vpn.lab.netns import expected_tables, step_checks
from aaa_vpn.lab.topology import BACKBONE
from aaa_vpn.lab.verdict import LOSS_BOUND, check, failures, loss_check, verdict


def test_a_stream_over_the_loss_bound_says_how_much_it_lost_and_the_bound() -> None:
    item = loss_check("ch1 -> mn", 400, 356)
    assert item["ok"] is False
    assert failures([item]) == ["stream ch1 -> mn: lost 44 of 400 datagrams (11.0 %), bound 10 %"]
    assert verdict(failures([item])) == "FAILED: stream ch1 -> mn: lost 44 of 400 datagrams (11.0 %), bound 10 %"


def test_a_stream_within_the_bound_passes_and_says_its_figures() -> None:
    item = loss_check("ch2 -> mn", 900, 900 - int(900 * LOSS_BOUND))
    assert item["ok"] is True and item["detail"] == "lost 90 of 900 datagrams (10.0 %), bound 10 %"
    assert failures([item]) == [] and verdict([]) == ""


def test_a_stream_that_sent_nothing_fails() -> None:
    item = loss_check("ch1 -> mn", 0, 0)
    assert item["ok"] is False and failures([item]) == ["stream ch1 -> mn: nothing was sent"]


def test_netns_step_checks_name_the_reply_code_the_table_and_the_unreachable_host() -> None:
    expected = expected_tables("fa2", "fa1", smooth=False)
    tables = {name: sorted(table) for name, table in expected.items()}
    tables["gw-dynamic"] = [("FA_GW", BACKBONE.fa1)]  # still toward the old FA
    result: dict[str, Any] = {"code": 78, "code_name": "registration timeout", "detail": "no reply"}
    checks = step_checks(result, expected, tables, {"ch1": True, "ch2": False})
    assert failures(checks, "step 2 (handoff to FA2)") == [
        "step 2 (handoff to FA2): the registration was accepted (code 0): code 78 (registration timeout): no reply",
        "step 2 (handoff to FA2): gw-dynamic has SAs FA_GW -> fa2: it has FA_GW -> fa1",
        "step 2 (handoff to FA2): the node reaches ch2 (ping from its home address):"
        " no answer from ch2 to 2 pings within 1 s each",
    ]


def test_netns_step_checks_all_pass_on_the_expected_tables() -> None:
    expected = expected_tables("fa1")
    checks = step_checks({"code": 0}, expected, {n: sorted(t) for n, t in expected.items()}, {"ch1": True})
    assert all(item["ok"] for item in checks) and failures(checks) == []


def test_the_loopback_demo_verdict_names_the_step_the_check_and_what_was_found() -> None:
    report: dict[str, Any] = {
        "ok": False,
        "steps": [
            {"step": 1, "name": "register via FA1", "checks": [check("fa1 has SAs FA_HA -> ha", True)]},
            {
                "step": 3,
                "name": "handoff to FA3",
                "checks": [
                    check("the mobile node's registration was accepted", False, "code 78: no reply after 5 attempts"),
                    check("fa3 has SAs FA_GW -> gw-dynamic, FA_HA -> ha", False, "it has none"),
                    check("gw-static has SAs HA_GW -> ha", True, ""),
                ],
            },
        ],
    }
    assert run_verdict(report) == (
        "FAILED: step 3 (handoff to FA3): the mobile node's registration was accepted: code 78: no reply after"
        " 5 attempts; step 3 (handoff to FA3): fa3 has SAs FA_GW -> gw-dynamic, FA_HA -> ha: it has none"
    )


def test_the_loopback_demo_verdict_names_an_error_that_stopped_the_run() -> None:
    report: dict[str, Any] = {"ok": False, "steps": [], "error": "processes did not stop cleanly: {'ha': None}"}
    assert run_verdict(report) == "FAILED: processes did not stop cleanly: {'ha': None}"
    assert run_verdict({"ok": False, "steps": []}) == "FAILED: the run did not complete"
    assert run_verdict({"ok": True, "steps": []}) == ""
