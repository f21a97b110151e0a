#!/usr/bin/env python3
"""ESP throughput of :mod:`aaa_vpn.sa.esp` per transform, single thread, in process.

What is measured, for 1400-octet inner IPv4 packets (the size of
reference/test-environment.md section 3, so the numbers compare with scapy's):

* ``seal``: :meth:`EspSa.seal` alone (ESP payload out);
* ``open``: :meth:`EspSa.open` of packets sealed beforehand, in order (replay
  window, ICV, padding checks included);
* ``protect`` / ``unprotect``: the memory backend's full data path: policy
  lookup, seal, outer IPv4 header with checksum; and outer header check, SPI
  lookup, open, inbound selector check;
* ``raw``: the bare ``cryptography`` calls of one sealed packet (AESGCM.encrypt;
  CBC update + a copied keyed HMAC-SHA-256 over the same bytes), the ceiling
  for this design;
* ``scapy`` (with ``--scapy``): scapy's ``SecurityAssociation.encrypt`` and
  ``decrypt`` for the same packets, the slow path the project avoids.

Each figure is the median of ``--rounds`` rounds of ``--packets`` packets.
Nothing is sent anywhere: no sockets, no subprocesses.

Usage (from the repository root):

    .venv/bin/python bench/esp_throughput.py                 # 5 rounds x 20000 packets
    .venv/bin/python bench/esp_throughput.py --scapy         # + scapy for comparison
    .venv/bin/python bench/esp_throughput.py --no-record     # print only

Results are printed and appended to bench/results/esp-throughput.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import statistics
import struct
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives import hmac as crypto_hmac  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from aaa_vpn.model import EspTransform, KeyMode  # noqa: E402
from aaa_vpn.sa.esp import EspSa, internet_checksum  # noqa: E402
from aaa_vpn.sa.memory import MemoryBackend  # noqa: E402
from aaa_vpn.secret import Secret  # noqa: E402
from aaa_vpn.wire.profile import PathProfile, PathRole  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "esp-throughput.md"
INNER_SIZE = 1400
FA = IPv4Address("192.0.2.1")
HA = IPv4Address("192.0.2.2")
MN = IPv4Address("198.51.100.10")
CN = IPv4Address("203.0.113.5")


def inner_packet(size: int = INNER_SIZE) -> bytes:
    """An IPv4/UDP packet of ``size`` octets, 198.51.100.10 -> 203.0.113.5."""
    payload = os.urandom(size - 28)
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size, 1, 0, 64, 17, 0, MN.packed, CN.packed)
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    return header + struct.pack(">HHHH", 40000, 9, size - 20, 0) + payload


def rate(count: int, work: Callable[[], object]) -> float:
    """Packets per second of ``work``, which handles ``count`` packets."""
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


def bench_esp(transform: EspTransform, packets: int) -> dict[str, float]:
    key = os.urandom(transform.keymat_length)
    inner = inner_packet()
    results: dict[str, float] = {}

    tx = EspSa(0x1001, transform, key)
    seal = tx.seal

    def run_seal() -> None:
        for _ in range(packets):
            seal(inner)

    results["seal"] = rate(packets, run_seal)

    sender = EspSa(0x1001, transform, key)
    sealed = [sender.seal(inner) for _ in range(packets)]
    opener = EspSa(0x1001, transform, key).open

    def run_open() -> None:
        for payload in sealed:
            opener(payload)

    results["open"] = rate(packets, run_open)

    fa, ha = MemoryBackend(FA), MemoryBackend(HA)
    fa_view, ha_view = mirrored(transform)
    fa.install(fa_view, "bench/FA_HA")
    ha.install(ha_view, "bench/FA_HA")
    protect = fa.protect

    def run_protect() -> None:
        for _ in range(packets):
            protect(inner)

    results["protect"] = rate(packets, run_protect)

    fa2, ha2 = MemoryBackend(FA), MemoryBackend(HA)
    fa2_view, ha2_view = mirrored(transform)
    fa2.install(fa2_view, "bench/FA_HA")
    ha2.install(ha2_view, "bench/FA_HA")
    outers = []
    for _ in range(packets):
        routed = fa2.protect(inner)
        assert routed is not None
        outers.append(routed[1])
    unprotect = ha2.unprotect

    def run_unprotect() -> None:
        for packet in outers:
            unprotect(packet)

    results["unprotect"] = rate(packets, run_unprotect)
    results["raw"] = raw_crypto(transform, key, packets)
    return results


def raw_crypto(transform: EspTransform, key: bytes, packets: int) -> float:
    """The bare cryptography calls one packet needs (the ceiling of this design)."""
    k = transform.encryption_key_length
    data = os.urandom(INNER_SIZE + 2 + (2 if transform.is_aead else 10))
    if transform.is_aead:
        aead = AESGCM(key[:k])
        nonce = key[k:] + bytes(8)
        aad = bytes(8)

        def run() -> None:
            for _ in range(packets):
                aead.encrypt(nonce, data, aad)

    else:
        keyed = crypto_hmac.HMAC(key[k:], hashes.SHA256())
        encryptor = Cipher(algorithms.AES(key[:k]), modes.CBC(bytes(16))).encryptor()

        def run() -> None:
            for _ in range(packets):
                mac = keyed.copy()
                mac.update(encryptor.update(data))
                mac.finalize()

    return rate(packets, run)


def bench_scapy(transform: EspTransform, packets: int) -> dict[str, float]:
    from scapy.all import IP
    from scapy.layers.ipsec import ESP, SecurityAssociation

    key = os.urandom(transform.keymat_length)
    k = transform.encryption_key_length
    if transform.is_aead:
        kwargs: dict[str, object] = {"crypt_algo": "AES-GCM", "crypt_key": key}
    else:
        kwargs = {"crypt_algo": "AES-CBC", "crypt_key": key[:k], "auth_algo": "SHA2-256-128", "auth_key": key[k:]}
    tunnel = IP(src=str(FA), dst=str(HA))
    tx = SecurityAssociation(ESP, spi=0x1001, tunnel_header=tunnel, **kwargs)
    rx = SecurityAssociation(ESP, spi=0x1001, tunnel_header=tunnel, **kwargs)
    inner = IP(inner_packet())
    wires: list[bytes] = []

    def run_encrypt() -> None:
        for _ in range(packets):
            wires.append(bytes(tx.encrypt(inner)))

    def run_decrypt() -> None:
        for wire in wires:
            rx.decrypt(IP(wire))

    return {"scapy seal": rate(packets, run_encrypt), "scapy open": rate(packets, run_decrypt)}


def mirrored(transform: EspTransform) -> tuple[PathProfile, PathProfile]:
    n = transform.keymat_length
    up, down = Secret(os.urandom(n)), Secret(os.urandom(n))
    mn, cn = IPv4Network(f"{MN}/32"), IPv4Network("203.0.113.0/24")
    fa = PathProfile(
        role=PathRole.FA_HA,
        local=FA,
        peer=HA,
        local_ts=(mn,),
        remote_ts=(cn,),
        key_mode=KeyMode.MANUAL,
        esp_transform=transform,
        spi_in=0x1001,
        spi_out=0x2002,
        key_in=down,
        key_out=up,
        lifetime=3600,
    )
    ha = PathProfile(
        role=PathRole.FA_HA,
        local=HA,
        peer=FA,
        local_ts=(cn,),
        remote_ts=(mn,),
        key_mode=KeyMode.MANUAL,
        esp_transform=transform,
        spi_in=0x2002,
        spi_out=0x1001,
        key_in=up,
        key_out=down,
        lifetime=3600,
    )
    return fa, ha


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} vCPU ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=20000, help="packets per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported (default 5)")
    parser.add_argument("--scapy", action="store_true", help="also measure scapy's SecurityAssociation")
    parser.add_argument("--scapy-packets", type=int, default=1000, help="packets per scapy round (default 1000)")
    parser.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)

    columns = ["seal", "open", "protect", "unprotect", "raw"] + (["scapy seal", "scapy open"] if args.scapy else [])
    table: dict[EspTransform, dict[str, float]] = {}
    spread: dict[EspTransform, dict[str, tuple[float, float]]] = {}
    for transform in EspTransform:
        rounds: list[dict[str, float]] = []
        for _ in range(args.rounds):
            result = bench_esp(transform, args.packets)
            if args.scapy:
                result.update(bench_scapy(transform, args.scapy_packets))
            rounds.append(result)
        table[transform] = {c: statistics.median(r[c] for r in rounds) for c in columns}
        spread[transform] = {c: (min(r[c] for r in rounds), max(r[c] for r in rounds)) for c in columns}
        print(transform.name, {c: f"{v:,.0f}/s" for c, v in table[transform].items()}, flush=True)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {now}: ESP packets/s, {INNER_SIZE}-octet inner packets, one thread",
        "",
        f"- machine: {machine()}",
        f"- cryptography {cryptography.__version__}, {openssl_backend.openssl_version_text()}",
        f"- {args.rounds} rounds x {args.packets} packets (scapy: {args.scapy_packets}); medians; "
        "Mbit/s counts inner octets",
        f"- command: `{shlex.join([Path(sys.executable).name, 'bench/esp_throughput.py', *(argv or sys.argv[1:])])}`",
        "",
        "| transform | " + " | ".join(f"{c} pkt/s" for c in columns) + " | seal Mbit/s | open Mbit/s |",
        "|---|" + "---:|" * (len(columns) + 2),
    ]
    for transform, row in table.items():
        cells = [f"{row[c]:,.0f}" for c in columns]
        mbit = [f"{row[c] * INNER_SIZE * 8 / 1e6:,.0f}" for c in ("seal", "open")]
        lines.append(f"| {transform.name} | " + " | ".join(cells + mbit) + " |")
    lines += ["", "Min-max over the rounds:", ""]
    lines.append("| transform | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for transform, row_spread in spread.items():
        cells = [f"{lo:,.0f}-{hi:,.0f}" for lo, hi in (row_spread[c] for c in columns)]
        lines.append(f"| {transform.name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        header = "" if RESULTS.exists() else "# ESP throughput (bench/esp_throughput.py)\n\n"
        with RESULTS.open("a") as out:
            out.write(header + text + "\n")
        print(f"appended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
