#!/usr/bin/env python3
"""What the metrics cost the home AAA: per request (counting a batch's
requests and replies by code and client, timing them), per publish (a
worker's snapshot into its shared slot, once a second) and per scrape (the
sum of every worker's slot, rendered), with N clients and W workers.

In-process, no sockets: the functions the server calls, on datagrams made
here. Prints one JSON document (and appends it to bench/results/metrics_overhead.jsonl
with --record).

    python bench/metrics_overhead.py --clients 1000 --workers 4 --batches 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from aaa_vpn.net.metrics_server import Publisher, WorkerSlots
from aaa_vpn.service.metrics import Recorder, record_exchange, render

BATCH = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100, help="distinct RADIUS clients (label values)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=100, help="batches of 256 requests per measurement")
    parser.add_argument("--record", action="store_true", help="append the result to bench/results/")
    args = parser.parse_args()

    names = {f"10.{i // 256}.{i % 256}.1": f"nas-{i}" for i in range(args.clients)}
    addresses = list(names)
    requests = [
        (bytes([1, n % 256]) + os.urandom(18), (addresses[n % len(addresses)], 40000 + n)) for n in range(BATCH)
    ]
    replies = [(bytes([2, n % 256]) + os.urandom(18), source) for n, (_data, source) in enumerate(requests)]
    recorders = [Recorder("home") for _ in range(args.workers)]
    counters = {f"rejects.reason_{i}": i for i in range(12)} | {"received": 10**6, "accepts": 10**6}

    started = time.perf_counter()
    for _ in range(args.batches):
        for recorder in recorders:
            record_exchange(recorder, "auth", requests, replies, 0.002, names.__getitem__)
    per_request = (time.perf_counter() - started) / (args.batches * BATCH * args.workers)

    slots = WorkerSlots(args.workers)
    publishers = [Publisher(slots, i, lambda r=r: r.snapshot(counters)) for i, r in enumerate(recorders)]
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for publisher in publishers:
            publisher.publish()
    per_publish = (time.perf_counter() - started) / (rounds * args.workers)

    started = time.perf_counter()
    for _ in range(rounds):
        text = render(slots.total())
    per_scrape = (time.perf_counter() - started) / rounds

    result = {
        "benchmark": "metrics_overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} CPUs",
        "load": os.getloadavg(),
        "clients": args.clients,
        "workers": args.workers,
        "per_request_us": round(per_request * 1e6, 3),
        "per_publish_ms": round(per_publish * 1e3, 3),
        "per_scrape_ms": round(per_scrape * 1e3, 3),
        "scrape_bytes": len(text),
        "series": sum(1 for line in text.splitlines() if not line.startswith("#")),
    }
    print(json.dumps(result, indent=1))
    if args.record:
        out = Path(__file__).resolve().parent / "results" / "metrics_overhead.jsonl"
        with out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
