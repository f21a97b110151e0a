"""Claim 24 end to end, in a real browser: the user signs in to their own
page (headless Chromium driven by Selenium through chromium-driver, over
HTTPS), changes a correspondent to the dynamic gateway, and the change reaches
the live session at once (CoA, docs/design.md flow F): the agents' SA tables --
each ``aaa-vpn agent`` process's state file, memory SA backend -- show the
FA <-> GW route-optimised path. The page shows what each node answered.
Then the operator ends the session through the API (role sessions).

The agents, the home AAA and the mobile node are tests/test_agents_live.py's
processes on loopback; the API server is ``aaa-vpn serve api`` with its own
certificate."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aaa_vpn.lab.topology import DYNAMIC_NETWORK, STATIC_NETWORK

from .api_process import ApiProcess, cli, self_signed
from .mobility import AAA, FA1, GW_DYNAMIC, GW_STATIC, HA, NAI
from .test_agents_live import AGENTS, Topology, start

PASSWORD = "a web password for mn1"


def webdriver(require_tool: Any) -> Any:
    """Headless Chromium under Selenium, the Debian packages' binaries."""
    chromium = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    try:
        from selenium import webdriver as selenium_webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"AAA_VPN_REQUIRE_TOOLS=1 but selenium is not installed: {exc}")
        pytest.skip(f"selenium is not installed: {exc}")
    options = selenium_webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    # The server's certificate is the test's own self-signed one.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors"):
        options.add_argument(argument)
    return selenium_webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Topology, ApiProcess]]:
    topology = start(tmp_path, gateways=("static",))
    api = ApiProcess(
        str(tmp_path / "vpn.db"),
        tmp_path / "vpn.key",
        tmp_path,
        tls=self_signed(tmp_path),
        extra=("--coa-source", AAA, "--coa-timeout", "1"),
    )
    try:
        api.make_tokens(ops=("sessions",))
        api.start()
        yield topology, api
    finally:
        api_code = api.stop() if api.process is not None else 0
        codes = topology.stop()
        logs = "\n".join(f"--- {n}\n{p.read_text()[-3000:]}" for n, p in topology.logs.items())
        assert codes == dict.fromkeys(codes, 0) and api_code == 0, f"exit codes {codes}, api {api_code}\n{logs}"


def test_user_changes_a_correspondent_to_the_dynamic_gateway_in_a_browser(
    live: tuple[Topology, ApiProcess], require_tool: Any
) -> None:
    topology, api = live
    db = ("--db", api.db, "--key-file", str(api.key_file))
    # the operator: a web password, and the gateways and services the user may choose
    secret = api.tmp / "web.pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    for args in (
        ("api", "password", NAI, "--password-file", str(secret)),
        ("api", "allow", NAI, "--gateway", "gw-static", "--gateway", "gw-dynamic", "--service", "gold"),
    ):
        done = cli(*db, *args)
        assert done.returncode == 0, done.stderr
    # the node registers: flow A, the static gateway only
    code, result = topology.mn("register", "--fa", FA1)
    assert (code, result["code"]) == (0, 0), result
    static = {"fa1": [("FA_HA", HA)], "ha": [("FA_HA", FA1), ("HA_GW", GW_STATIC)], "gw-static": [("HA_GW", HA)]}
    tables = topology.wait_for(static)
    assert {name: tables[name] for name in static} == static and tables["gw-dynamic"] == []

    browser = webdriver(require_tool)
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select, WebDriverWait

        wait = WebDriverWait(browser, 30)
        browser.get(f"{api.base}/login")
        browser.find_element(By.ID, "nai").send_keys(NAI)
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "sign-in").click()
        wait.until(lambda b: b.find_elements(By.ID, "records") or b.find_elements(By.CLASS_NAME, "error"))
        assert not browser.find_elements(By.CLASS_NAME, "error"), browser.page_source
        assert browser.current_url == f"{api.base}/me"
        rows = browser.find_elements(By.CSS_SELECTOR, "#records tr[id^='record-']")
        assert len(rows) == 1, browser.page_source
        record_id = rows[0].get_attribute("id").removeprefix("record-")
        correspondent = browser.find_element(By.ID, f"correspondent-{record_id}")
        assert correspondent.get_attribute("value") == STATIC_NETWORK
        gateways = Select(browser.find_element(By.ID, f"gateway-{record_id}"))
        assert [o.text for o in gateways.options] == ["gw-dynamic (dynamic)", "gw-static (static)"]
        assert gateways.first_selected_option.text == "gw-static (static)"
        assert "mn1-aaa-secret" not in browser.page_source  # the node's secret is never shown
        # the change: this correspondent is now the network behind the dynamic gateway
        correspondent.clear()
        correspondent.send_keys(DYNAMIC_NETWORK)
        gateways.select_by_value("gw-dynamic")
        started = time.monotonic()
        browser.find_element(By.ID, f"save-{record_id}").click()
        result_box = wait.until(lambda b: b.find_elements(By.ID, "push-result"))[0]
        nodes = [
            (li.get_attribute("data-role"), li.get_attribute("data-answer"))
            for li in result_box.find_elements(By.CSS_SELECTOR, "li.node")
        ]
        assert nodes == [("fa", "CoA-ACK"), ("ha", "CoA-ACK")], browser.page_source
        assert result_box.get_attribute("data-acknowledged") == "true"
        assert "epoch 1 to 2" in result_box.text
        assert Select(browser.find_element(By.ID, f"gateway-{record_id}")).first_selected_option.text == (
            "gw-dynamic (dynamic)"
        )
    finally:
        browser.quit()

    # the agents' SA tables: FA1 <-> dynamic GW directly; the static gateway's tunnel is gone
    routed = {
        "fa1": [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)],
        "ha": [("FA_HA", FA1)],
        "gw-static": [],
        "gw-dynamic": [("FA_GW", FA1)],
    }
    tables = topology.wait_for(routed, timeout=10)
    assert {name: tables[name] for name in routed} == routed, f"{time.monotonic() - started:.1f} s after the click"
    (session,) = api.call("GET", f"/api/v1/sessions?user={NAI}", "ops").json["sessions"]
    assert session["epoch"] == 2
    audit = [(e["actor"], e["action"]) for e in api.call("GET", "/api/v1/audit", "ops").json["audit"]]
    assert audit[-2:] == [(f"user:{NAI}", "vpn.change"), (f"user:{NAI}", "sessions.push")]

    # the operator ends the session through the API, as `aaa-vpn session disconnect` does
    ended = api.call("POST", f"/api/v1/sessions/{session['session_id']}/disconnect", "ops")
    assert ended.status == 200 and ended.json["acknowledged"] and ended.json["deleted"], ended.text
    assert [(a["role"], a["answer"]) for a in ended.json["agents"]] == [
        ("fa", "Disconnect-ACK"),
        ("ha", "Disconnect-ACK"),
    ]
    empty = {name: [] for name in AGENTS}
    assert topology.wait_for(empty) == empty
    assert api.call("GET", "/api/v1/sessions", "ops").json == {"sessions": []}
