"""Scraping a ``--metrics-listen`` endpoint over HTTP and reading the
Prometheus text format strictly (every sample under a ``# TYPE`` line of its
family, label values unescaped), for the tests."""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')
_METRICS_ADDRESS = re.compile(r"metrics endpoint listening .*?address=([0-9.]+):(\d+)")


@dataclass
class Scrape:
    """One scrape: samples by (name, labels), and each family's type."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def value(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` with exactly these labels (0 if absent)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample of ``name`` whose labels include these."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(ls) for (n, ls) in self.samples if n == name]


def parse(text: str) -> Scrape:
    scrape = Scrape(text=text)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            scrape.types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        found = _SAMPLE.match(line)
        assert found, f"not a sample line: {line!r}"
        name, labels_text, value = found.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in scrape.types else name
        assert family in scrape.types, f"sample {name} before the # TYPE of its family"
        labels: set[tuple[str, str]] = set()
        if labels_text:
            consumed = 0
            for match in _LABEL.finditer(labels_text):
                assert match.start() == consumed, f"bad labels in {line!r}"
                consumed = match.end()
                labels.add((match.group(1), match.group(2).replace('\\"', '"').replace("\\\\", "\\")))
            assert consumed == len(labels_text), f"bad labels in {line!r}"
        key = (name, frozenset(labels))
        assert key not in scrape.samples, f"duplicate series {line!r}"
        scrape.samples[key] = float(value)
    return scrape


def get(address: tuple[str, int], path: str = "/metrics", method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one HTTP request."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def scrape(address: tuple[str, int]) -> Scrape:
    status, content_type, body = get(address)
    assert status == 200, body
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    return parse(body)


def wait_for(address: tuple[str, int], condition: Callable[[Scrape], bool], timeout: float = 20.0) -> Scrape:
    """Scrape until ``condition`` holds (workers publish about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        result = scrape(address)
        if condition(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"the metrics never met the condition; last scrape:\n{result.text}")
        time.sleep(0.3)


def metrics_address(log: Path, timeout: float = 20.0) -> tuple[str, int]:
    """The metrics endpoint's address from a server's log."""
    deadline = time.monotonic() + timeout
    while True:
        found = _METRICS_ADDRESS.search(log.read_text(errors="replace"))
        if found:
            return found.group(1), int(found.group(2))
        if time.monotonic() > deadline:
            raise AssertionError(f"no 'metrics endpoint listening' in the log:\n{log.read_text()}")
        time.sleep(0.05)
