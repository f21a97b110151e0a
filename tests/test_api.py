"""The provisioning API and the user page (aaa_vpn/net/api_server.py): the
real ``aaa-vpn serve api`` process on loopback, real HTTP(S) requests, on
SQLite and PostgreSQL. Roles are enforced, input errors carry the CLI's own
message (the same rules, aaa_vpn/service/provisioning.py), every change is in
the audit log, and no answer, audit entry or log line holds a secret or a
token. The browser test and the CoA push from the page are in
tests/test_user_page_browser.py."""

from __future__ import annotations

import html
import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from aaa_vpn.service import openapi
from aaa_vpn.store import init_store, open_store

from .api_process import REPO, ApiProcess, Reply, cli, self_signed

NAI, OTHER = "mn1@home.example", "mn2@home.example"
MN_AAA_TEXT = "mn1-very-secret-aaa"
MN_HA_HEX = "00112233445566778899aabbccddeeff"
GW_KEY_HEX = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
CLIENT_SECRET = "fa1-shared-secret-xyz"
PASSWORD = "correct horse battery"
SECRETS_TEXT = (MN_AAA_TEXT, MN_HA_HEX, GW_KEY_HEX, CLIENT_SECRET, PASSWORD, MN_AAA_TEXT.encode().hex())


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiProcess]:
    db = str(tmp_path / "vpn.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    init_store(db, tmp_path / "vpn.key")[0].close()
    server = ApiProcess(db, tmp_path / "vpn.key", tmp_path)
    server.make_tokens(reader=("read-only",), admin=("provisioning",), ops=("sessions",))
    server.start()
    try:
        yield server
    finally:
        assert server.stop() == 0
        assert server.log is not None
        text = server.log.read_text()
        for token in server.tokens.values():
            assert token not in text, "a token reached the log"
        for secret in SECRETS_TEXT:
            assert secret not in text, "a secret reached the log"


def provision(api: ApiProcess) -> int:
    """Gateways, services, a QoS class, two users and their records; mn1's record id."""
    calls: list[tuple[str, dict[str, object]]] = [
        (
            "gateways",
            {
                "name": "gw-s",
                "address": "203.0.113.1",
                "mode": "static",
                "protected_prefixes": ["10.1.0.0/16"],
                "gateway_key": {"hex": GW_KEY_HEX},
            },
        ),
        (
            "gateways",
            {
                "name": "gw-d",
                "address": "203.0.113.2",
                "mode": "dynamic",
                "protected_prefixes": ["10.2.0.0/16"],
                "gateway_key": {"hex": GW_KEY_HEX},
            },
        ),
        ("services", {"name": "gold", "esp_transform": "aes256gcm16"}),
        ("services", {"name": "silver", "esp_transform": "aes128-sha256", "sa_lifetime": 1800}),
        ("qos", {"name": "voice", "dscp": 46, "rate_kbps": 512}),
        (
            "users",
            {
                "nai": NAI,
                "home_agent": "192.0.2.2",
                "mn_ha_spi": 256,
                "mn_aaa_secret": {"text": MN_AAA_TEXT},
                "mn_ha_key": {"hex": MN_HA_HEX},
            },
        ),
        (
            "users",
            {
                "nai": OTHER,
                "home_agent": "192.0.2.2",
                "mn_ha_spi": 257,
                "mn_aaa_secret": {"text": "other-secret"},
                "mn_ha_key": {"hex": MN_HA_HEX},
            },
        ),
        ("clients", {"name": "fa1", "network": "192.0.2.1", "role": "fa", "secret": {"text": CLIENT_SECRET}}),
    ]
    for collection, body in calls:
        reply = api.call("POST", f"/api/v1/{collection}", "admin", body)
        assert reply.status == 201, (collection, reply.text)
    mine = api.call(
        "POST",
        "/api/v1/vpn",
        "admin",
        {"nai": NAI, "correspondent": "10.1.0.0/16", "gateway": "gw-s", "service": "gold", "qos": "voice"},
    )
    assert mine.status == 201, mine.text
    theirs = api.call(
        "POST",
        "/api/v1/vpn",
        "admin",
        {"nai": OTHER, "correspondent": "10.1.0.0/16", "gateway": "gw-s", "service": "gold"},
    )
    assert theirs.status == 201, theirs.text
    return int(mine.json["id"])


def no_secret_in(reply: Reply) -> None:
    for secret in SECRETS_TEXT:
        assert secret not in reply.text, f"{secret!r} in an answer"
    assert not re.search(r'"(hex|text|mn_aaa_secret|mn_ha_key|gateway_key|secret|session_root_key)"', reply.text)


def test_roles_provisioning_audit_and_no_secrets(api: ApiProcess) -> None:
    # no token, an unknown token: 401 with a Bearer challenge
    for token in (None, "aaavpn_not-a-token"):
        reply = api.call("GET", "/api/v1/users", token)
        assert reply.status == 401 and reply.headers["WWW-Authenticate"].startswith("Bearer"), reply.text
    record_id = provision(api)
    # read-only reads everything, changes nothing
    for collection in ("users", "clients", "gateways", "services", "qos", "vpn", "sessions", "accounting", "audit"):
        reply = api.call("GET", f"/api/v1/{collection}", "reader")
        assert reply.status == 200, reply.text
        no_secret_in(reply)
    assert [u["nai"] for u in api.call("GET", "/api/v1/users", "reader").json["users"]] == [NAI, OTHER]
    one = api.call("GET", f"/api/v1/users/{NAI}", "reader")
    assert one.status == 200 and one.json["mn_ha_spi"] == 256
    assert [r["id"] for r in one.json["vpn_records"]] == [record_id] and one.json["sessions"] == []
    no_secret_in(one)
    no_secret_in(api.call("GET", "/api/v1/gateways/gw-d", "reader"))
    no_secret_in(api.call("GET", "/api/v1/clients/fa1", "admin"))
    denied = [
        ("reader", "POST", "/api/v1/qos", {"name": "x"}),
        ("reader", "DELETE", "/api/v1/qos/voice", None),
        ("ops", "PATCH", f"/api/v1/vpn/{record_id}", {"gateway": "gw-d"}),
        ("admin", "POST", "/api/v1/sessions/abc/push", None),
        ("admin", "DELETE", "/api/v1/sessions/abc", None),
        ("reader", "PUT", f"/api/v1/users/{NAI}/web-credential", {"password": PASSWORD}),
    ]
    for token, method, path, body in denied:
        reply = api.call(method, path, token, body)
        assert reply.status == 403 and "lacks the" in reply.json["error"], (token, method, path, reply.text)
    # a change, and the 404 / 409 answers
    changed = api.call(
        "PATCH", f"/api/v1/vpn/{record_id}", "admin", {"gateway": "gw-d", "correspondent": "10.2.0.0/16", "qos": None}
    )
    assert changed.status == 200 and (changed.json["gateway"], changed.json["qos"]) == ("gw-d", None), changed.text
    assert api.call("GET", "/api/v1/vpn/99999", "reader").status == 404
    in_use = api.call("DELETE", "/api/v1/services/gold", "admin")
    assert in_use.status == 409, in_use.text
    assert api.call("POST", "/api/v1/qos", "admin", {"name": "voice"}).status == 409
    assert api.call("DELETE", "/api/v1/qos/voice", "admin").status == 200
    assert api.call("GET", "/api/v1/qos/voice", "reader").status == 404
    mine = api.call("GET", f"/api/v1/vpn?user={urllib.parse.quote(NAI)}", "reader").json["vpn"]
    assert [(r["id"], r["correspondent"]) for r in mine] == [(record_id, "10.2.0.0/16")]
    # sessions: none yet; push of an unknown one is 404
    assert api.call("GET", "/api/v1/sessions", "reader").json == {"sessions": []}
    assert api.call("POST", "/api/v1/sessions/nope/push", "ops").status == 404
    # every change in the audit log, in order, by whom, without secrets
    audit = api.call("GET", "/api/v1/audit", "reader")
    no_secret_in(audit)
    entries = [(e["actor"], e["action"], e["target"]) for e in audit.json["audit"]]
    assert entries == [
        ("token:admin", "gateways.add", "gw-s"),
        ("token:admin", "gateways.add", "gw-d"),
        ("token:admin", "services.add", "gold"),
        ("token:admin", "services.add", "silver"),
        ("token:admin", "qos.add", "voice"),
        ("token:admin", "users.add", NAI),
        ("token:admin", "users.add", OTHER),
        ("token:admin", "clients.add", "fa1"),
        ("token:admin", "vpn.add", str(record_id)),
        ("token:admin", "vpn.add", str(record_id + 1)),
        ("token:admin", "vpn.change", str(record_id)),
        ("token:admin", "qos.delete", "voice"),
    ]
    user_entry = audit.json["audit"][5]
    assert user_entry["detail"]["secrets_set"] == ["MN-AAA secret", "MN-HA key"]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", e["at"]) for e in audit.json["audit"])


# The same bad input through the CLI and through the API: the API's message is the CLI's.
CLI_AND_API = [
    (
        (
            "gateway",
            "add",
            "gw9",
            "--address",
            "203.0.113.9",
            "--mode",
            "sideways",
            "--protects",
            "10.9.0.0/16",
            "--gateway-key-hex",
            GW_KEY_HEX,
        ),
        (
            "gateways",
            {
                "name": "gw9",
                "address": "203.0.113.9",
                "mode": "sideways",
                "protected_prefixes": ["10.9.0.0/16"],
                "gateway_key": {"hex": GW_KEY_HEX},
            },
        ),
        "invalid gateway mode 'sideways': one of static, dynamic",
    ),
    (
        (
            "gateway",
            "add",
            "gw9",
            "--address",
            "224.0.0.9",
            "--mode",
            "static",
            "--protects",
            "10.9.0.0/16",
            "--gateway-key-hex",
            GW_KEY_HEX,
        ),
        (
            "gateways",
            {
                "name": "gw9",
                "address": "224.0.0.9",
                "mode": "static",
                "protected_prefixes": ["10.9.0.0/16"],
                "gateway_key": {"hex": GW_KEY_HEX},
            },
        ),
        "invalid gateway address 224.0.0.9: multicast",
    ),
    (
        ("vpn", "add", "--user", NAI, "--correspondent", "10.1.0.1/16", "--gateway", "gw-s", "--service", "gold"),
        ("vpn", {"nai": NAI, "correspondent": "10.1.0.1/16", "gateway": "gw-s", "service": "gold"}),
        "invalid correspondent '10.1.0.1/16': 10.1.0.1/16 has host bits set",
    ),
    (("qos", "add", "loud", "--dscp", "64"), ("qos", {"name": "loud", "dscp": 64}), "invalid DSCP 64: 0..63"),
    (
        ("client", "add", "fa9", "--address", "0.0.0.0/0", "--role", "fa", "--secret", CLIENT_SECRET),
        ("clients", {"name": "fa9", "network": "0.0.0.0/0", "role": "fa", "secret": {"text": CLIENT_SECRET}}),
        "invalid client address 0.0.0.0/0: it would let every IPv4 address use this client's secret",
    ),
    (
        ("client", "add", "fa9", "--address", "192.0.2.9", "--role", "boss", "--secret", CLIENT_SECRET),
        ("clients", {"name": "fa9", "network": "192.0.2.9", "role": "boss", "secret": {"text": CLIENT_SECRET}}),
        "invalid client role 'boss': one of ",
    ),
    (
        (
            "user",
            "add",
            "mn9@home.example",
            "--home-agent",
            "192.0.2.2",
            "--mn-ha-spi",
            "12",
            "--mn-aaa-secret",
            "x",
            "--mn-ha-key-hex",
            MN_HA_HEX,
        ),
        (
            "users",
            {
                "nai": "mn9@home.example",
                "home_agent": "192.0.2.2",
                "mn_ha_spi": 12,
                "mn_aaa_secret": {"text": "x"},
                "mn_ha_key": {"hex": MN_HA_HEX},
            },
        ),
        "invalid MN-HA SPI 12: an SPI is 256..4294967295",
    ),
    (
        ("vpn", "add", "--user", NAI, "--correspondent", "10.3.0.0/16", "--gateway", "gw-nowhere", "--service", "gold"),
        ("vpn", {"nai": NAI, "correspondent": "10.3.0.0/16", "gateway": "gw-nowhere", "service": "gold"}),
        "gw-nowhere",
    ),
]


def test_input_errors_are_the_cli_s(api: ApiProcess) -> None:
    record_id = provision(api)
    db = ("--db", api.db, "--key-file", str(api.key_file))
    for cli_args, (collection, body), expected in CLI_AND_API:
        done = cli(*db, *cli_args)
        assert done.returncode in (1, 2) and expected in done.stderr, (cli_args, done.stderr)
        reply = api.call("POST", f"/api/v1/{collection}", "admin", body)
        assert reply.status in (400, 404, 409) and expected in reply.json["error"], (body, reply.text)
        cli_message = done.stderr.strip().removeprefix("Error: ")
        assert reply.json["error"] in cli_message, (reply.json["error"], cli_message)
    # what only JSON can get wrong: not JSON, an unknown member, a wrong type
    assert api.call("POST", "/api/v1/qos", "admin", b"{not json").json == {"error": "the request body is not JSON"}
    typo = api.call("POST", "/api/v1/qos", "admin", {"name": "q", "dcsp": 4})
    assert (typo.status, typo.json["error"]) == (400, "unknown QoS class field 'dcsp'")
    wrong = api.call("POST", "/api/v1/qos", "admin", {"name": "q", "dscp": "four"})
    assert (wrong.status, wrong.json["error"]) == (400, "invalid DSCP 'four': expected an integer")
    renamed = api.call("PATCH", "/api/v1/qos/voice", "admin", {"name": "other"})
    assert renamed.status == 400, renamed.text
    # nothing of that was stored or audited
    assert [q["name"] for q in api.call("GET", "/api/v1/qos", "reader").json["qos"]] == ["voice"]
    assert len(api.call("GET", "/api/v1/audit", "reader").json["audit"]) == 10
    # the CLI's changes are in the same audit log, with the same names, never with a secret
    for args in (
        ("qos", "add", "bulk", "--dscp", "10"),
        ("user", "change", OTHER, "--mn-aaa-secret", "a-new-cli-secret", "--disable"),
        ("vpn", "delete", str(record_id + 1)),
    ):
        done = cli(*db, *args)
        assert done.returncode == 0, done.stderr
    audit = api.call("GET", "/api/v1/audit", "reader")
    assert "a-new-cli-secret" not in audit.text
    entries = audit.json["audit"][-3:]
    assert [(e["actor"].startswith("cli:"), e["action"], e["target"]) for e in entries] == [
        (True, "qos.add", "bulk"),
        (True, "users.change", OTHER),
        (True, "vpn.delete", str(record_id + 1)),
    ]
    assert entries[1]["detail"]["secrets_set"] == ["MN-AAA secret"] and entries[1]["detail"]["enabled"] is False


def test_openapi_is_served_and_matches_docs(api: ApiProcess) -> None:
    served = api.call("GET", "/openapi.json")
    assert served.status == 200
    assert served.json == openapi.document()
    assert json.loads((REPO / "docs" / "api.json").read_text()) == served.json, (
        "run: aaa-vpn api openapi -o docs/api.json"
    )
    paths = served.json["paths"]
    for collection in ("users", "clients", "gateways", "services", "qos", "vpn"):
        assert {"get", "post"} <= set(paths[f"/api/v1/{collection}"])
        assert {"get", "patch", "delete"} <= set(paths[f"/api/v1/{collection}/{{key}}"])
    assert "post" in paths["/api/v1/sessions/{session_id}/push"]
    assert "get" in paths["/api/v1/accounting"]


def test_web_credential_is_a_scrypt_verifier(api: ApiProcess) -> None:
    provision(api)
    short = api.call("PUT", f"/api/v1/users/{NAI}/web-credential", "admin", {"password": "short"})
    assert (short.status, short.json["error"]) == (400, "a web password is 10..1024 characters")
    assert (
        api.call("PUT", "/api/v1/users/nobody@home.example/web-credential", "admin", {"password": PASSWORD}).status
        == 404
    )
    reply = api.call("PUT", f"/api/v1/users/{NAI}/web-credential", "admin", {"password": PASSWORD})
    assert reply.status == 200 and PASSWORD not in reply.text
    with open_store(api.db, api.key_file) as store:
        verifier = store.get_web_credential(NAI)
    assert verifier is not None and verifier.startswith("scrypt$16384$8$1$") and PASSWORD not in verifier
    # the CLI sets it too, from a file of mode 0600, and the audit log says who
    secret = api.tmp / "pw"
    secret.write_text("another good password\n")
    secret.chmod(0o600)
    done = cli(
        "--db", api.db, "--key-file", str(api.key_file), "api", "password", OTHER, "--password-file", str(secret)
    )
    assert done.returncode == 0, done.stderr
    actions = [
        (e["actor"].split(":")[0], e["action"]) for e in api.call("GET", "/api/v1/audit", "reader").json["audit"]
    ]
    assert actions[-2:] == [("token", "users.web-credential.set"), ("cli", "users.web-credential.set")]


# -- the user page without a browser: isolation, CSRF, cookies ---------------------------------------------


class Visitor:
    """A user agent that keeps cookies, over HTTPS."""

    def __init__(self, api: ApiProcess) -> None:
        self.api = api
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    def go(self, method: str, path: str, form: dict[str, str] | None = None, origin: str | None = None) -> Reply:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if origin is not None:
            headers["Origin"] = origin
        reply = self.api.request(method, path, body, headers)
        for header in reply.headers.get_all("Set-Cookie") or []:
            self.set_cookie_headers.append(header)
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if value in ("", '""'):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return reply

    def csrf(self, page: str) -> str:
        found = re.search(r"name='csrf' value='([^']+)'", page)
        assert found, page
        return found.group(1)

    def sign_in(self, nai: str, password: str) -> Reply:
        token = self.csrf(self.go("GET", "/login").text)
        return self.go("POST", "/login", {"csrf": token, "nai": nai, "password": password})


@pytest.fixture
def page(tmp_path: Path) -> Iterator[ApiProcess]:
    init_store(tmp_path / "vpn.db", tmp_path / "vpn.key")[0].close()
    server = ApiProcess(str(tmp_path / "vpn.db"), tmp_path / "vpn.key", tmp_path, tls=self_signed(tmp_path))
    server.make_tokens(admin=("provisioning",))
    server.start()
    try:
        yield server
    finally:
        assert server.stop() == 0


def test_user_page_shows_and_changes_only_the_user_s_own_records(page: ApiProcess) -> None:
    mine = provision(page)
    theirs = mine + 1
    for nai, password in ((NAI, PASSWORD), (OTHER, "their own password")):
        assert page.call("PUT", f"/api/v1/users/{nai}/web-credential", "admin", {"password": password}).status == 200
    allowed = {"gateway": ["gw-s", "gw-d"], "service": ["gold"], "qos": []}
    assert page.call("PUT", f"/api/v1/users/{NAI}/self-service", "admin", allowed).json == {
        **allowed,
        "gateway": ["gw-d", "gw-s"],
    }

    me = Visitor(page)
    assert me.go("GET", "/me").status == 303  # not signed in: to the sign-in page
    wrong = me.sign_in(NAI, "not the password")
    assert wrong.status == 401 and "Wrong NAI or password." in wrong.text
    assert me.sign_in(NAI, PASSWORD).status == 303
    cookie = next(h for h in me.set_cookie_headers if h.startswith("aaa_vpn_session="))
    assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/")), cookie
    home = me.go("GET", "/me")
    assert home.status == 200 and f"id='record-{mine}'" in home.text and f"record-{theirs}" not in home.text
    assert home.headers["Cache-Control"] == "no-store" and "frame-ancestors" not in home.headers.get(
        "X-Frame-Options", ""
    )
    no_secret_in(home)
    csrf = me.csrf(home.text)

    # another user's record, and every other id a user could guess: as missing as a missing one
    for guess in [theirs, *range(mine + 2, mine + 20), 0, 99999]:
        changed = me.go(
            "POST",
            f"/me/records/{guess}",
            {"csrf": csrf, "gateway": "gw-d", "correspondent": "10.2.0.0/16", "service": "gold"},
        )
        assert changed.status == 404 and "no such VPN record" in changed.text, guess
        assert me.go("POST", f"/me/records/{guess}/delete", {"csrf": csrf}).status == 404
    assert page.call("GET", f"/api/v1/vpn/{theirs}", "admin").json["gateway"] == "gw-s"

    # CSRF: a form without the session's token, or from another origin, changes nothing
    no_token = me.go("POST", f"/me/records/{mine}", {"gateway": "gw-d", "correspondent": "10.2.0.0/16"})
    assert no_token.status == 403
    foreign = me.go("POST", f"/me/records/{mine}", {"csrf": csrf, "gateway": "gw-d"}, origin="https://evil.example")
    assert foreign.status == 403
    opaque = me.go("POST", f"/me/records/{mine}", {"csrf": csrf, "gateway": "gw-d"}, origin="null")
    assert opaque.status == 403
    # a gateway or service the operator does not allow
    not_allowed = me.go("POST", f"/me/records/{mine}", {"csrf": csrf, "service": "silver"})
    assert not_allowed.status == 400 and "does not let you choose service 'silver'" in html.unescape(not_allowed.text)
    bad = me.go("POST", f"/me/records/{mine}", {"csrf": csrf, "correspondent": "10.2.0.1/16"})
    assert bad.status == 400 and "invalid correspondent '10.2.0.1/16': 10.2.0.1/16 has host bits set" in html.unescape(
        bad.text
    )
    assert page.call("GET", f"/api/v1/vpn/{mine}", "admin").json["gateway"] == "gw-s"

    # the change itself (no live session: nothing to push)
    done = me.go(
        "POST",
        f"/me/records/{mine}",
        {"csrf": csrf, "gateway": "gw-d", "correspondent": "10.2.0.0/16", "service": "gold", "qos": ""},
    )
    assert done.status == 200 and "id='no-session'" in done.text, done.text
    assert page.call("GET", f"/api/v1/vpn/{mine}", "admin").json == {
        "id": mine,
        "nai": NAI,
        "correspondent": "10.2.0.0/16",
        "gateway": "gw-d",
        "service": "gold",
        "qos": None,
    }
    audit = page.call("GET", "/api/v1/audit", "admin").json["audit"]
    assert (audit[-1]["actor"], audit[-1]["action"], audit[-1]["target"]) == (f"user:{NAI}", "vpn.change", str(mine))

    # a new correspondent, then removed again (the record's id is whatever the store gave it)
    added = me.go(
        "POST",
        "/me/records",
        {"csrf": csrf, "correspondent": "10.1.0.0/16", "gateway": "gw-s", "service": "gold", "qos": ""},
    )
    assert added.status == 200 and "Added record" in added.text, added.text
    (new,) = [r for r in page.call("GET", f"/api/v1/vpn?user={NAI}", "admin").json["vpn"] if r["id"] != mine]
    assert (new["correspondent"], new["gateway"], new["nai"]) == ("10.1.0.0/16", "gw-s", NAI)
    assert f"id='record-{new['id']}'" in added.text
    sneaky = me.go(
        "POST",
        "/me/records",
        {"csrf": csrf, "correspondent": "10.9.0.0/16", "gateway": "gw-s", "service": "gold", "nai": OTHER},
    )
    assert sneaky.status == 200  # the form's "nai" is not a field of the page: the record is the signed-in user's
    assert [r["nai"] for r in page.call("GET", "/api/v1/vpn?user=" + OTHER, "admin").json["vpn"]] == [OTHER]
    for record in page.call("GET", f"/api/v1/vpn?user={NAI}", "admin").json["vpn"]:
        if record["id"] != mine:
            assert me.go("POST", f"/me/records/{record['id']}/delete", {"csrf": csrf}).status == 200
    assert [r["id"] for r in page.call("GET", f"/api/v1/vpn?user={NAI}", "admin").json["vpn"]] == [mine]

    # the other user sees only theirs; signing out ends the session
    them = Visitor(page)
    assert them.sign_in(OTHER, "their own password").status == 303
    theirs_page = them.go("GET", "/me").text
    assert f"record-{theirs}" in theirs_page and f"record-{mine}'" not in theirs_page
    assert me.go("POST", "/logout", {"csrf": csrf}).status == 303
    assert me.go("GET", "/me").status == 303


def test_sign_in_needs_its_form_token_and_locks_after_five_failures(page: ApiProcess) -> None:
    provision(page)
    assert page.call("PUT", f"/api/v1/users/{NAI}/web-credential", "admin", {"password": PASSWORD}).status == 200
    stranger = Visitor(page)
    forged = stranger.go("POST", "/login", {"csrf": "made-up", "nai": NAI, "password": PASSWORD})
    assert forged.status == 403 and "aaa_vpn_session" not in stranger.cookies
    # the MN-AAA secret is not a web password
    assert stranger.sign_in(NAI, MN_AAA_TEXT).status == 401
    for _ in range(4):
        assert stranger.sign_in(NAI, "wrong password!").status == 401
    locked = stranger.sign_in(NAI, PASSWORD)
    assert locked.status == 429 and "aaa_vpn_session" not in stranger.cookies


def test_serve_api_refuses_bad_tokens_files_in_one_line(tmp_path: Path) -> None:
    init_store(tmp_path / "vpn.db", tmp_path / "vpn.key")[0].close()
    db = ("--db", str(tmp_path / "vpn.db"))
    tokens = tmp_path / "tokens"
    cases = [
        ("alice provisioning sha256:" + "ab" * 32 + "\n", 0o644, "group or others"),
        ("alice provisioning sha256:abc\n", 0o600, "line 1: expected 'NAME ROLE[,ROLE] sha256:<64 hex digits>'"),
        ("# operators\nalice boss sha256:" + "ab" * 32 + "\n", 0o600, "line 2: invalid role 'boss'"),
    ]
    for text, mode, expected in cases:
        tokens.write_text(text)
        tokens.chmod(mode)
        done = cli(*db, "serve", "api", "--port", "0", "--tokens-file", str(tokens))
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    tokens.chmod(0o600)
    done = cli(*db, "serve", "api", "--tokens-file", str(tokens), "--tls-cert", str(tokens))
    assert done.returncode == 2 and "give --tls-cert and --tls-key together" in done.stderr
