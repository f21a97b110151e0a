"""Logging configured once, from data: text for people, JSON lines for machines.

Structured fields travel in ``extra={"fields": {...}}``; both formats render
them (``key=value`` pairs in text). Nothing here ever formats a secret: the
callers pass only NAIs, addresses, counters and reasons, and
:class:`~aaa_vpn.secret.Secret` would render as ``<N bytes redacted>`` anyway.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(record.created))}"
            f".{int(record.msecs):03d} {record.levelname:<7} {record.name}[{record.process}]:"
            f" {record.getMessage()}"
        )
        fields: dict[str, Any] = getattr(record, "fields", {}) or {}
        if fields:
            base += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=')) else text


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", {}) or {}
        doc.update({k: v if isinstance(v, (int, float, bool)) or v is None else str(v) for k, v in fields.items()})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, sort_keys=False)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once: level name and ``text``/``json`` format, to stderr."""
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}: text or json")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


def fields(**kwargs: Any) -> dict[str, Any]:
    """``extra=`` for a structured log call: ``log.info("msg", extra=fields(nai=...))``."""
    return {"fields": kwargs}
