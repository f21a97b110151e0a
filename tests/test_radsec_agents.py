"""The agents' AAA client over RadSec: flows A and B of tests/test_agents_live.py
with FA1 and the HA asking the home AAA over TLS (``[[aaa]] transport =
"radsec"``) instead of UDP, every component a separate ``aaa-vpn`` process
on loopback.

The home AAA listens for RadSec with a certificate from a throw-away CA
(tests/radsec_pki.py); FA1's and the HA's certificates carry only their
addresses (subjectAltName iPAddress), which is how the home AAA finds their
provisioned client records (docs/radsec.md, rule 1c). After the mobile node
registers, the SA tables are the same as over UDP, and the home AAA's log
shows the two RadSec connections and no UDP request from FA1 or the HA.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from .mobility import AAA, AAAF, FA1, FA2, HA, SECRETS
from .radsec_pki import Authority
from .test_agents_live import AFTER_REGISTRATION, AGENTS, Topology, aaa_vpn, assert_mirrored, private, start
from .test_radsec_live import radsec_port


def _respawn_over_radsec(
    topology: Topology,
    name: str,
    role: str,
    address: str,
    pki: Authority,
    port: int,
    server: str = AAA,
    extra: str = "",
) -> None:
    """Stop agent ``name`` and start it again with its AAA server (``server``) over RadSec."""
    process = topology.processes[name]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    topology.state_file(name).unlink()
    issued = pki.issue(f"{name}-tls", f"agent-{name}", addresses=(address,))
    config = topology.tmp / f"{name}-radsec.toml"
    config.write_text(
        f'tls_cert = "{issued.cert}"\ntls_key = "{issued.key}"\ntls_ca = "{pki.cert}"\n{extra}'
        f'[[aaa]]\naddress = "{server}"\nport = {port}\ntransport = "radsec"\ntls_name = "{server}"\n'
    )
    args = ["agent", role, "--config", str(config), "--name", name, "--address", address]
    args += ["--mip-port", str(topology.mip_port), "--state-file", str(topology.state_file(name))]
    args += ["--log-level", "debug", "--mip-socket-fd", str(topology.mip.fd(address))]
    args += ["--coa-port", str(topology.coa.port), "--coa-socket-fd", str(topology.coa.fd(address))]
    topology.spawn(name, *args, pass_fds=(topology.mip.fd(address), topology.coa.fd(address)))
    deadline = time.monotonic() + 20
    while not (topology.state_file(name).exists() and topology.state(name)["running"]):
        assert topology.processes[name].poll() is None, topology.logs[name].read_text()
        assert time.monotonic() < deadline, f"{name} did not start"
        time.sleep(0.03)


def test_fa_and_ha_register_over_radsec(tmp_path: Path) -> None:
    pki = Authority(tmp_path / "pki")
    server = pki.issue("home", "home-aaa.example", dns=("home-aaa.example", AAA), addresses=(AAA,))
    home_args = (
        *("--radsec-listen", f"{AAA}:0", "--tls-cert", str(server.cert), "--tls-key", str(server.key)),
        *("--tls-ca", str(pki.cert)),
    )
    topology = start(tmp_path, home_args=home_args)
    try:
        port = radsec_port(topology.logs["home-aaa"], host=AAA)
        for name in ("fa1", "ha"):
            role, address = AGENTS[name]
            # accounting too: on the same connection (RFC 6614 section 2.1)
            _respawn_over_radsec(
                topology, name, role, address, pki, port, extra="accounting = true\naccounting_interim = 1\n"
            )
        code, outcome = topology.mn("register", "--fa", FA1)
        home_log = topology.logs["home-aaa"].read_text()
        assert code == 0 and outcome["accepted"], (
            f"{outcome}\n{home_log[-3000:]}\n{topology.logs['fa1'].read_text()[-3000:]}"
        )
        tables = topology.wait_for(AFTER_REGISTRATION)
        assert tables == {n: sorted(t) for n, t in AFTER_REGISTRATION.items()}
        assert_mirrored(topology, "fa1", "ha", "FA_HA")
        home_log = topology.logs["home-aaa"].read_text()
        # both asked over RadSec, each known by the address in its certificate
        assert "radsec connection" in home_log and "client=" in home_log
        connected = [
            line for line in home_log.splitlines() if "aaa_vpn.radsec" in line and "radsec connection " in line
        ]
        assert len(connected) >= 2, home_log[-3000:]
        for name in ("fa1", "ha"):
            assert "radsec connected" in topology.logs[name].read_text(), topology.logs[name].read_text()[-2000:]
        # the FA's and HA's Accounting-Requests (Start, Interim-Updates) went over RadSec and were recorded
        deadline = time.monotonic() + 15
        while True:
            listing = aaa_vpn("--db", str(tmp_path / "vpn.db"), "--key-file", str(tmp_path / "vpn.key"), "--json",
                              "accounting", "list")  # fmt: skip
            assert listing.returncode == 0, listing.stderr
            records = json.loads(listing.stdout)["accounting"]
            if {r["nas"] for r in records if r["updates"] >= 2} == {FA1, HA}:
                break
            assert time.monotonic() < deadline, records
            time.sleep(0.2)
        for name in ("fa1", "ha"):
            counters = topology.state(name)["counters"]
            assert counters["accounting.answered"] >= 2 and counters.get("sent.accounting", 0) >= 2, counters
    finally:
        codes = topology.stop()
    assert codes == dict.fromkeys(codes, 0), codes


def test_fa_to_foreign_to_home_all_over_radsec(tmp_path: Path) -> None:
    """FA1 -> RadSec -> the foreign AAA -> RadSec -> the home AAA (flow A through
    the visited domain): the foreign AAA serves RadSec and uses it upstream."""
    pki = Authority(tmp_path / "pki")
    home_cert = pki.issue("home", "home-aaa.example", dns=("home-aaa.example", AAA), addresses=(AAA,))
    foreign_cert = pki.issue("foreign", "foreign-aaa.example", dns=(AAAF,), addresses=(AAAF,))
    home_args = (
        *("--radsec-listen", f"{AAA}:0", "--tls-cert", str(home_cert.cert), "--tls-key", str(home_cert.key)),
        *("--tls-ca", str(pki.cert)),
    )
    topology = start(tmp_path, foreign=True, home_args=home_args)
    try:
        home_port = radsec_port(topology.logs["home-aaa"], host=AAA)
        process = topology.processes["foreign-aaa"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        private(tmp_path / "aaaf-fa2.secret", SECRETS[FA2].value)
        config = tmp_path / "foreign-radsec.toml"
        config.write_text(
            f'listen = "{AAAF}"\nport = 0\nradsec_listen = "{AAAF}:0"\n'
            f'tls_cert = "{foreign_cert.cert}"\ntls_key = "{foreign_cert.key}"\ntls_ca = "{pki.cert}"\n'
            f'[[clients]]\nname = "fa-{FA1}"\naddress = "{FA1}"\nsecret_file = "aaaf-{FA1}.secret"\n'
            f'[[clients]]\nname = "fa-{FA2}"\naddress = "{FA2}"\nsecret_file = "aaaf-fa2.secret"\n'
            f'[[realms]]\nname = "home.example"\n[[realms.servers]]\naddress = "{AAA}"\nport = {home_port}\n'
            'transport = "radsec"\ntls_name = "home-aaa.example"\n'
        )
        topology.logs["foreign-aaa"].write_text("")
        topology.spawn("foreign-aaa", "serve", "foreign", "--config", str(config), "--log-level", "debug")
        foreign_port = radsec_port(topology.logs["foreign-aaa"], host=AAAF)
        _respawn_over_radsec(
            topology,
            "fa1",
            "fa",
            FA1,
            pki,
            foreign_port,
            server=AAAF,
            extra="accounting = true\naccounting_interim = 1\n",
        )
        code, outcome = topology.mn("register", "--fa", FA1)
        logs = {n: p.read_text()[-3000:] for n, p in topology.logs.items() if n in ("home-aaa", "foreign-aaa", "fa1")}
        assert code == 0 and outcome["accepted"], f"{outcome}\n{logs}"
        foreign_log = topology.logs["foreign-aaa"].read_text()
        assert f"client=fa-{FA1}" in foreign_log, foreign_log[-2000:]  # FA1 known by its certificate's address
        assert "radsec connected" in foreign_log  # the upstream connection to the home AAA
        assert "radsec connection" in topology.logs["home-aaa"].read_text()
        assert_mirrored(topology, "fa1", "ha", "FA_HA")
        # FA1's accounting: over RadSec to the foreign AAA, proxied home over RadSec, recorded there
        deadline = time.monotonic() + 15
        while True:
            listing = aaa_vpn("--db", str(tmp_path / "vpn.db"), "--key-file", str(tmp_path / "vpn.key"), "--json",
                              "accounting", "list")  # fmt: skip
            assert listing.returncode == 0, listing.stderr
            records = json.loads(listing.stdout)["accounting"]
            if any(r["nas"] == FA1 and r["updates"] >= 2 for r in records):
                break
            assert time.monotonic() < deadline, (records, topology.logs["foreign-aaa"].read_text()[-3000:])
            time.sleep(0.2)
    finally:
        codes = topology.stop()
    assert codes == dict.fromkeys(codes, 0), codes
