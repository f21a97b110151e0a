"""The functions FreeRADIUS's rlm_python3 calls: ``module = aaa_vpn.freeradius.module``.

* ``instantiate``: reads the module's ``config { }`` section (``radiusd.config``):

  ``db``            the database, a SQLite path or a ``postgresql://`` URL (required);
  ``key_file``      the secrets key file (default: the database's, as ``aaa-vpn --key-file``);
  ``site_packages`` ``:``-separated directories added with :func:`site.addsitedir`
                    before anything else is imported: where aaa_vpn's dependencies
                    (pyrad, cryptography) are installed, e.g. a virtualenv's
                    ``lib/python3.11/site-packages`` (FreeRADIUS embeds the system
                    Python, which does not see a virtualenv);
  ``session_lifetime``, ``renewal_memo`` the home AAA options of the same names;
  ``log_level``     for aaa_vpn's own log lines, which go to FreeRADIUS's log (default ``info``).

  It opens the store; every instance of the module shares it.
* ``authorize``: decides the request (bridge rules) and, on an accept, sets
  ``Auth-Type := Accept`` and puts the VPN profile in the reply.
* ``post_auth``: the same decision, for configurations where FreeRADIUS
  authorizes and authenticates by its own policy first; the profile goes in
  the reply of the Access-Accept, a reject turns it into an Access-Reject.
  A virtual server calls the module from one of the two sections, not both
  (each call is a decision).
* ``detach``: closes the store.

rlm_python3 declares itself thread-unsafe, so FreeRADIUS calls one instance
from one thread at a time, from any of its threads; the hosted home AAA is
shared by the instances under one lock, and its SQLite connection is opened
for use from any thread. Each request is its own store transaction.
(A Python thread of our own in rlm_python3's interpreter aborts FreeRADIUS
when the next instance is instantiated -- "drop_gil: GIL is not locked" --
so there is no worker thread and no batching across requests.) Nothing is
imported from aaa_vpn before ``instantiate`` has set up ``sys.path``.
"""

from __future__ import annotations

import importlib
import logging
import site
import threading
import time
from typing import Any

try:  # the module rlm_python3 makes; only inside FreeRADIUS
    radiusd: Any = importlib.import_module("radiusd")
except ImportError:  # imported outside FreeRADIUS (tests, documentation tools)
    radiusd = None

#: Seconds between two sweeps of expired sessions.
EXPIRY_INTERVAL = 30.0

_lock = threading.Lock()
_hosted: Any = None
_next_expiry = 0.0


class _RadiusdHandler(logging.Handler):
    """aaa_vpn's log records into FreeRADIUS's log (``radiusd.radlog``)."""

    def emit(self, record: logging.LogRecord) -> None:
        if radiusd is None:
            return
        if record.levelno >= logging.ERROR:
            level = radiusd.L_ERR
        elif record.levelno >= logging.WARNING:
            level = radiusd.L_WARN
        elif record.levelno >= logging.INFO:
            level = radiusd.L_INFO
        else:
            level = radiusd.L_DBG
        try:
            radiusd.radlog(level, "aaa_vpn: " + self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break a request
            pass


def _config() -> dict[str, str]:
    value = getattr(radiusd, "config", None) if radiusd is not None else None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def start(config: dict[str, str]) -> None:
    """Open the store named in ``config`` (idempotent: several module
    instances share one hosted home AAA)."""
    global _hosted
    with _lock:
        if _hosted is not None:
            return
        for directory in filter(None, config.get("site_packages", "").split(":")):
            site.addsitedir(directory)
        logger = logging.getLogger("aaa_vpn")
        if not any(isinstance(h, _RadiusdHandler) for h in logger.handlers):
            logger.addHandler(_RadiusdHandler())
        logger.setLevel(config.get("log_level", "info").upper())
        logger.propagate = False
        if not config.get("db"):
            raise RuntimeError("aaa_vpn: the module's config section needs db = <path or postgresql:// URL>")

        from aaa_vpn.freeradius.bridge import HostedHome
        from aaa_vpn.freeradius.pairs import PairCodec
        from aaa_vpn.roles.home_aaa import HomeAaaOptions
        from aaa_vpn.service.home import HomeService
        from aaa_vpn.store import open_store
        from aaa_vpn.wire.radius import load_dictionary

        options = HomeAaaOptions(
            session_lifetime=int(config.get("session_lifetime") or HomeAaaOptions.session_lifetime),
            renewal_memo=config.get("renewal_memo", "yes").lower() in ("yes", "true", "1", "on"),
        )
        store = open_store(config["db"], config.get("key_file") or None, any_thread=True)
        _hosted = HostedHome(HomeService(store, options), PairCodec.from_dictionary(load_dictionary()))
        logger.info("hosted home AAA serving the database %s", _redacted(config["db"]))


def stop() -> None:
    """Close the store (the first detach does it)."""
    global _hosted
    with _lock:
        hosted, _hosted = _hosted, None
        if hosted is not None:
            hosted.service.close()


def _redacted(location: str) -> str:
    """A database location without a password (postgresql://user:secret@host)."""
    if "://" not in location:
        return location
    location, _, query = location.partition("?")  # ?password=... too
    if "@" in location:
        scheme, rest = location.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        location = f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return location + ("?***" if query else "")


def _lists(p: Any) -> tuple[Any, Any]:
    """The request and control lists: a dict with ``pass_all_vps_dict = yes``,
    a 6-tuple with ``pass_all_vps = yes``, else the request alone."""
    if isinstance(p, dict):
        return p.get("request"), p.get("config")
    if isinstance(p, tuple) and len(p) == 6 and all(x is None or isinstance(x, tuple) for x in p):
        if p[0] and isinstance(p[0][0], tuple):
            return p[0], p[2]
    return p, None


def _decide(p: Any, section: str) -> Any:
    from aaa_vpn.freeradius.bridge import CLIENT_ADDRESS, RLM_MODULE_FAIL, HostedRequest
    from aaa_vpn.freeradius.pairs import pairs_of

    global _next_expiry
    request, control = _lists(p)
    client = next((value for name, value in pairs_of(control) if name == CLIENT_ADDRESS), "")
    hosted_request = HostedRequest(tuple(pairs_of(request)), client, section)
    log = logging.getLogger("aaa_vpn.freeradius")
    with _lock:
        if _hosted is None:
            return RLM_MODULE_FAIL
        now = time.time()
        try:
            (answer,) = _hosted.decide([hosted_request], now)
        except Exception:  # a bug must not take FreeRADIUS down
            log.exception("the hosted home AAA failed on a request")
            return RLM_MODULE_FAIL
        if now >= _next_expiry:
            _next_expiry = now + EXPIRY_INTERVAL
            try:
                _hosted.service.expire(now)
            except Exception:
                log.exception("session expiry failed")
    return answer.as_rlm()


# -- what rlm_python3 calls -----------------------------------------------------------------------


def instantiate(p: Any) -> int:
    """0, or -1 (FreeRADIUS then refuses to start) with the reason in its log."""
    try:
        start(_config())
    except Exception as exc:  # noqa: BLE001 - reported to FreeRADIUS, which stops
        logging.getLogger("aaa_vpn.freeradius").error("cannot start: %s", exc)
        if radiusd is not None:
            radiusd.radlog(radiusd.L_ERR, f"aaa_vpn: cannot start: {exc}")
        return -1
    return 0


def authorize(p: Any) -> Any:
    return _decide(p, "authorize")


def post_auth(p: Any) -> Any:
    return _decide(p, "post-auth")


def detach(p: Any) -> int:
    stop()
    return 0
