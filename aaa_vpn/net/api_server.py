"""The provisioning API and the user's own page over HTTP (aiohttp):
``aaa-vpn serve api`` (docs/api.md).

Rules:

1. ``/api/v1/...`` answers JSON to operators with a bearer token
   (aaa_vpn/service/webauth.py rules 1-2): 401 without a known token, 403
   when its roles do not allow the call. Input is read by the rules the CLI
   uses (aaa_vpn/service/provisioning.py) and errors carry the CLI's message:
   400 invalid, 404 not found, 409 exists or still referenced, 503 busy.
2. Every change (add, change, delete, credential, allowance, push,
   disconnect) appends one audit entry -- who (``token:NAME``,
   ``user:NAI``), what, when -- in the same transaction as the change where
   the change is the database's; secrets are never in it, nor in any answer
   or log line.
3. ``/`` is the user's page: a user signs in with their web credential
   (webauth rule 3) and sees and changes only their own VPN records, choosing
   gateways, services and QoS classes among those the operator allows
   (``self_service``; the record's current choice stays allowed). Another
   user's record is answered as a missing one (404), whatever its id.
4. A change on the page is pushed at once to the user's live sessions: a
   CoA-Request to the FA and HA of each (RFC 5176, docs/design.md flow F, as
   ``aaa-vpn session push``), and the page shows what each node answered.
5. Browser sessions live in this process: a random cookie (HttpOnly, Secure,
   SameSite=Strict, path /) names one; it ends after 15 minutes idle or 8
   hours. Every form that changes something carries the session's CSRF token
   (compared in constant time); the sign-in form a token bound to a
   pre-session cookie; a request whose Origin is not this server (or is
   "null") is refused.
   Five failed sign-ins lock that NAI for 60 seconds.
6. The database is used from one thread of its own (an SQLite connection
   stays in the thread that opened it); CoA exchanges, which wait for the
   agents, run on other threads with their own connection.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hmac
import html
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from aaa_vpn.model import ValidationError, VpnRecord
from aaa_vpn.service import openapi
from aaa_vpn.service.provisioning import KINDS, VPN, KindRules
from aaa_vpn.service.webauth import Operator, Role, TokenTable, check_password, hash_password, verify_password
from aaa_vpn.store import AlreadyExists, NotFound, ReferenceError_, SpiConflict, SqlStore, StoreBusy, StoreError
from aaa_vpn.store import open_store as _open_store
from aaa_vpn.store.transfer import (
    JsonObject,
    client_to_json,
    gateway_to_json,
    qos_to_json,
    service_to_json,
    session_to_json,
    user_to_json,
    vpn_record_to_json,
)

log = logging.getLogger("aaa_vpn.api")
T = TypeVar("T")

IDLE_SECONDS = 15 * 60
ABSOLUTE_SECONDS = 8 * 3600
LOCK_AFTER, LOCK_SECONDS = 5, 60.0
MAX_TRACKED_FAILURES = 10_000
COOKIE = "aaa_vpn_session"
LOGIN_COOKIE = "aaa_vpn_login"

_TO_JSON: dict[str, Callable[[Any], JsonObject]] = {
    "users": user_to_json,
    "clients": client_to_json,
    "gateways": gateway_to_json,
    "services": service_to_json,
    "qos": qos_to_json,
    "vpn": vpn_record_to_json,
}
_LISTS: dict[str, Callable[[SqlStore, str | None], list[Any]]] = {
    "users": lambda store, _: store.list_users(),
    "clients": lambda store, _: store.list_clients(),
    "gateways": lambda store, _: store.list_gateways(),
    "services": lambda store, _: store.list_services(),
    "qos": lambda store, _: store.list_qos(),
    "vpn": lambda store, nai: store.list_vpn_records(nai),
}


@dataclass(frozen=True)
class ApiSettings:
    """What ``aaa-vpn serve api`` is given."""

    db_path: Path | str
    key_file: Path | None
    tokens: TokenTable
    listen: str = "127.0.0.1"
    port: int = 8443
    coa_source: str = "0.0.0.0"
    coa_timeout: float = 2.0
    coa_retries: int = 2
    tls_cert: Path | None = None
    tls_key: Path | None = None


class StoreThread:
    """Rule 6: the store, used from one thread."""

    def __init__(self, db_path: Path | str, key_file: Path | None) -> None:
        self._db_path, self._key_file = db_path, key_file
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="api-store")
        self._store: SqlStore | None = None

    def _run(self, function: Callable[[SqlStore], T]) -> T:
        if self._store is None:
            self._store = _open_store(self._db_path, self._key_file)
        return function(self._store)

    async def call(self, function: Callable[[SqlStore], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, function)

    def open_other(self) -> SqlStore:
        """A connection of its own, for another thread (rule 6)."""
        return _open_store(self._db_path, self._key_file)

    async def close(self) -> None:
        def close(_store: SqlStore) -> None:
            if self._store is not None:
                self._store.close()
                self._store = None

        if self._store is not None:
            await self.call(close)
        self._pool.shutdown(wait=True)


@dataclass
class WebSession:
    nai: str
    csrf: str
    started: float
    seen: float


@dataclass
class Failures:
    count: int = 0
    locked_until: float = 0.0


# -- errors -------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status(exc: Exception) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, AlreadyExists | ReferenceError_ | SpiConflict):
        return 409
    if isinstance(exc, StoreBusy):
        return 503
    return 500


def _json_response(document: object, status: int = 200) -> web.Response:
    return web.json_response(document, status=status, dumps=lambda value: json.dumps(value, indent=1))


# -- the application ------------------------------------------------------------------------------


class ApiServer:
    """The routes of rules 1-5 on one store (rule 6)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.store = StoreThread(settings.db_path, settings.key_file)
        self.sessions: dict[str, WebSession] = {}
        self.failures: dict[str, Failures] = {}
        self._pushes = ThreadPoolExecutor(4, thread_name_prefix="api-coa")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024)
        app.router.add_get("/openapi.json", self.openapi)
        for collection in KINDS:
            app.router.add_get(f"/api/v1/{collection}", self._bind(self.list_records, collection))
            app.router.add_post(f"/api/v1/{collection}", self._bind(self.add_record, collection))
            app.router.add_get(f"/api/v1/{collection}/{{key}}", self._bind(self.get_record, collection))
            app.router.add_patch(f"/api/v1/{collection}/{{key}}", self._bind(self.change_record, collection))
            app.router.add_delete(f"/api/v1/{collection}/{{key}}", self._bind(self.delete_record, collection))
        app.router.add_put("/api/v1/users/{nai}/web-credential", self.set_credential)
        app.router.add_delete("/api/v1/users/{nai}/web-credential", self.delete_credential)
        app.router.add_get("/api/v1/users/{nai}/self-service", self.get_allowed)
        app.router.add_put("/api/v1/users/{nai}/self-service", self.set_allowed)
        app.router.add_get("/api/v1/sessions", self.list_sessions)
        app.router.add_get("/api/v1/sessions/{session_id}", self.get_session)
        app.router.add_delete("/api/v1/sessions/{session_id}", self.delete_session)
        app.router.add_post("/api/v1/sessions/{session_id}/push", self.push_session)
        app.router.add_post("/api/v1/sessions/{session_id}/disconnect", self.disconnect_session)
        app.router.add_get("/api/v1/accounting", self.list_accounting)
        app.router.add_get("/api/v1/accounting/{unique_id}", self.get_accounting)
        app.router.add_get("/api/v1/audit", self.audit)
        app.router.add_get("/", self.page_root)
        app.router.add_get("/login", self.page_login)
        app.router.add_post("/login", self.page_login_post)
        app.router.add_post("/logout", self.page_logout)
        app.router.add_get("/me", self.page_me)
        app.router.add_post("/me/records", self.page_add)
        app.router.add_post("/me/records/{id}", self.page_change)
        app.router.add_post("/me/records/{id}/delete", self.page_delete)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        await self.store.close()
        self._pushes.shutdown(wait=True)

    @staticmethod
    def _bind(
        handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]], collection: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def bound(request: web.Request) -> web.StreamResponse:
            return await handler(request, collection)

        return bound

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (ApiError, ValidationError, StoreError) as exc:
            status = _status(exc)
            if status == 500:
                log.error("%s %s: %s", request.method, request.path, exc)
            if request.path.startswith("/api/"):
                return _json_response({"error": str(exc)}, status)
            body = f"<p class='error' id='error'>{html.escape(str(exc))}</p><p><a href='/me'>Back to your VPN</a></p>"
            return self._page("Error", body, status=status)

    # -- operators (rules 1, 2) ------------------------------------------------------------------

    def _operator(self, request: web.Request, role: Role) -> Operator:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        operator = self.settings.tokens.operator(token.strip()) if scheme.lower() == "bearer" and token else None
        if operator is None:
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "a valid operator token is required (Authorization: Bearer ...)"}),
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="aaa_vpn"'},
            )
        if not operator.may(role):
            raise ApiError(403, f"token {operator.name!r} lacks the {role.value} role")
        return operator

    async def _body(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise ValidationError("the request body is not JSON") from None

    @staticmethod
    def _key(rules: KindRules, request: web.Request) -> Any:
        value = request.match_info["key"]
        if rules.key_assigned:
            try:
                return int(value)
            except ValueError:
                raise ValidationError(f"invalid {rules.kind} id {value!r}: expected an integer") from None
        return value

    @staticmethod
    def _audit(store: SqlStore, actor: str, action: str, target: str, detail: JsonObject | None = None) -> None:
        store.append_audit(time.time(), actor, action, target, json.dumps(detail or {}, sort_keys=True))

    async def openapi(self, _request: web.Request) -> web.Response:
        return _json_response(openapi.document())

    async def list_records(self, request: web.Request, collection: str) -> web.Response:
        self._operator(request, Role.READ_ONLY)
        to_json = _TO_JSON[collection]
        user = request.query.get("user")
        records = await self.store.call(lambda store: _LISTS[collection](store, user))
        return _json_response({collection: [to_json(record) for record in records]})

    async def get_record(self, request: web.Request, collection: str) -> web.Response:
        self._operator(request, Role.READ_ONLY)
        rules, stem = KINDS[collection]
        key = self._key(rules, request)

        def get(store: SqlStore) -> JsonObject:
            record = getattr(store, f"get_{stem}")(key)
            document = _TO_JSON[collection](record)
            if collection == "users":  # as `aaa-vpn --json user show`, without keys
                document["vpn_records"] = [vpn_record_to_json(r) for r in store.list_vpn_records(key)]
                document["sessions"] = [session_to_json(s) for s in store.find_sessions(key)]
            return document

        return _json_response(await self.store.call(get))

    async def add_record(self, request: web.Request, collection: str) -> web.Response:
        operator = self._operator(request, Role.PROVISIONING)
        rules, stem = KINDS[collection]
        body = await self._body(request)
        record = rules.from_json(body)
        given = sorted(s.label for s in rules.secrets if isinstance(body, dict) and s.name in body)

        def add(store: SqlStore) -> Any:
            with store.transaction():
                stored = getattr(store, f"add_{stem}")(record) or record
                document = _TO_JSON[collection](stored)
                detail = {**document, "secrets_set": given} if given else document
                self._audit(
                    store, f"token:{operator.name}", f"{collection}.add", str(getattr(stored, rules.key)), detail
                )
            return stored

        stored = await self.store.call(add)
        log.info("token %s added %s %s", operator.name, rules.kind, getattr(stored, rules.key))
        return _json_response(_TO_JSON[collection](stored), 201)

    async def change_record(self, request: web.Request, collection: str) -> web.Response:
        operator = self._operator(request, Role.PROVISIONING)
        rules, stem = KINDS[collection]
        key = self._key(rules, request)
        body = await self._body(request)
        given = sorted(s.label for s in rules.secrets if isinstance(body, dict) and s.name in body)

        def change(store: SqlStore) -> Any:
            with store.transaction():
                old = getattr(store, f"get_{stem}")(key)
                new = rules.changed(old, body, fixed=("nai",) if collection == "vpn" else ())
                getattr(store, f"update_{stem}")(new)
                document = _TO_JSON[collection](new)
                detail = {**document, "secrets_set": given} if given else document
                self._audit(store, f"token:{operator.name}", f"{collection}.change", str(key), detail)
            return new

        new = await self.store.call(change)
        log.info("token %s changed %s %s", operator.name, rules.kind, key)
        return _json_response(_TO_JSON[collection](new))

    async def delete_record(self, request: web.Request, collection: str) -> web.Response:
        operator = self._operator(request, Role.PROVISIONING)
        rules, stem = KINDS[collection]
        key = self._key(rules, request)

        def delete(store: SqlStore) -> None:
            with store.transaction():
                getattr(store, f"delete_{stem}")(key)
                self._audit(store, f"token:{operator.name}", f"{collection}.delete", str(key))

        await self.store.call(delete)
        log.info("token %s deleted %s %s", operator.name, rules.kind, key)
        return _json_response({"deleted": {stem: key}})

    async def set_credential(self, request: web.Request) -> web.Response:
        operator = self._operator(request, Role.PROVISIONING)
        nai = request.match_info["nai"]
        body = await self._body(request)
        if not isinstance(body, dict) or set(body) != {"password"}:
            raise ValidationError('expected {"password": "..."}')
        verifier = hash_password(check_password(body["password"]))

        def put(store: SqlStore) -> None:
            with store.transaction():
                store.set_web_credential(nai, verifier, time.time())
                self._audit(store, f"token:{operator.name}", "users.web-credential.set", nai)

        await self.store.call(put)
        return _json_response({"nai": nai, "web_credential": True})

    async def delete_credential(self, request: web.Request) -> web.Response:
        operator = self._operator(request, Role.PROVISIONING)
        nai = request.match_info["nai"]

        def delete(store: SqlStore) -> bool:
            with store.transaction():
                store.get_user(nai)
                removed = store.delete_web_credential(nai)
                self._audit(store, f"token:{operator.name}", "users.web-credential.delete", nai)
            return removed

        removed = await self.store.call(delete)
        self._end_sessions_of(nai)
        return _json_response({"nai": nai, "web_credential": False, "removed": removed})

    async def get_allowed(self, request: web.Request) -> web.Response:
        self._operator(request, Role.READ_ONLY)
        nai = request.match_info["nai"]

        def get(store: SqlStore) -> dict[str, list[str]]:
            store.get_user(nai)
            return store.get_self_service(nai)

        return _json_response(await self.store.call(get))

    async def set_allowed(self, request: web.Request) -> web.Response:
        operator = self._operator(request, Role.PROVISIONING)
        nai = request.match_info["nai"]
        body = await self._body(request)
        if not isinstance(body, dict) or set(body) - {"gateway", "service", "qos"}:
            raise ValidationError('expected {"gateway": [...], "service": [...], "qos": [...]}')
        allowed: dict[str, list[str]] = {}
        for kind in ("gateway", "service", "qos"):
            names = body.get(kind, [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValidationError(f"{kind}: expected a list of names")
            allowed[kind] = names

        def put(store: SqlStore) -> dict[str, list[str]]:
            getters = {"gateway": store.get_gateway, "service": store.get_service, "qos": store.get_qos}
            with store.transaction():
                for kind, names in allowed.items():
                    for name in names:
                        getters[kind](name)  # NotFound names what does not exist
                store.set_self_service(nai, allowed)
                self._audit(store, f"token:{operator.name}", "users.self-service.set", nai, dict(allowed))
            return store.get_self_service(nai)

        return _json_response(await self.store.call(put))

    # -- sessions and accounting -----------------------------------------------------------------

    async def list_sessions(self, request: web.Request) -> web.Response:
        self._operator(request, Role.READ_ONLY)
        user = request.query.get("user")
        found = await self.store.call(lambda s: s.list_sessions() if user is None else s.find_sessions(user))
        return _json_response({"sessions": [session_to_json(s) for s in found]})

    async def get_session(self, request: web.Request) -> web.Response:
        self._operator(request, Role.READ_ONLY)
        session_id = request.match_info["session_id"]

        def get(store: SqlStore) -> JsonObject:
            from aaa_vpn.net import coa_client

            session = store.get_session(session_id)
            document = session_to_json(session)
            document["agents"] = [
                {"role": t.role, "address": str(t.address), "client": t.client or None, "coa_port": t.port}
                for t in coa_client.targets_for(store, session)
            ]
            return document

        return _json_response(await self.store.call(get))

    async def delete_session(self, request: web.Request) -> web.Response:
        operator = self._operator(request, Role.SESSIONS)
        session_id = request.match_info["session_id"]

        def delete(store: SqlStore) -> None:
            with store.transaction():
                store.delete_session(session_id)
                self._audit(store, f"token:{operator.name}", "sessions.delete", session_id)

        await self.store.call(delete)
        return _json_response({"deleted": {"session": session_id}})

    def _coa(self, action: str, session_id: str) -> JsonObject:
        """On a CoA thread (rule 6): push or disconnect one session, as ``aaa-vpn session push|disconnect``."""
        from aaa_vpn.net import coa_client

        settings = self.settings
        with self.store.open_other() as store:
            try:
                if action == "push":
                    pushed = coa_client.push_session(
                        store, session_id, settings.coa_source, settings.coa_timeout, settings.coa_retries
                    )
                    return pushed.to_json()
                ended = coa_client.disconnect_session(
                    store, session_id, settings.coa_source, settings.coa_timeout, settings.coa_retries
                )
                return ended.to_json()
            except coa_client.CoaError as exc:
                raise NotFound(str(exc)) from None
            except OSError as exc:
                raise ApiError(502, f"cannot send from {settings.coa_source}: {exc.strerror}") from None

    async def _coa_async(self, action: str, session_id: str) -> JsonObject:
        return await asyncio.get_running_loop().run_in_executor(self._pushes, self._coa, action, session_id)

    async def _session_action(self, request: web.Request, action: str) -> web.Response:
        operator = self._operator(request, Role.SESSIONS)
        session_id = request.match_info["session_id"]
        outcome = await self._coa_async(action, session_id)
        detail = {"acknowledged": outcome["acknowledged"], "agents": [a["answer"] for a in outcome["agents"]]}
        await self.store.call(
            lambda store: self._audit(store, f"token:{operator.name}", f"sessions.{action}", session_id, detail)
        )
        return _json_response(outcome, 200 if outcome["acknowledged"] else 502)

    async def push_session(self, request: web.Request) -> web.Response:
        return await self._session_action(request, "push")

    async def disconnect_session(self, request: web.Request) -> web.Response:
        return await self._session_action(request, "disconnect")

    async def list_accounting(self, request: web.Request) -> web.Response:
        from aaa_vpn.cli.accounting import record_to_json

        self._operator(request, Role.READ_ONLY)
        query = request.query
        since, until = _time(query.get("since"), "since"), _time(query.get("until"), "until")
        limit = _limit(query.get("limit"))
        records = await self.store.call(
            lambda s: s.list_accounting(query.get("user"), query.get("session"), since, until, limit)
        )
        return _json_response({"accounting": [record_to_json(r) for r in records]})

    async def get_accounting(self, request: web.Request) -> web.Response:
        from aaa_vpn.cli.accounting import record_to_json

        self._operator(request, Role.READ_ONLY)
        unique_id = request.match_info["unique_id"]
        record = await self.store.call(lambda s: s.get_accounting(unique_id))
        return _json_response(record_to_json(record))

    async def audit(self, request: web.Request) -> web.Response:
        self._operator(request, Role.READ_ONLY)
        since = _time(request.query.get("since"), "since")
        limit = _limit(request.query.get("limit")) or 1000
        rows = await self.store.call(lambda s: s.list_audit(since, limit))
        return _json_response(
            {
                "audit": [
                    {
                        "id": i,
                        "at": _iso(at),
                        "actor": actor,
                        "action": action,
                        "target": target,
                        "detail": json.loads(d),
                    }
                    for i, at, actor, action, target, d in rows
                ]
            }
        )

    # -- the user's page (rules 3-5) ---------------------------------------------------------------

    def _page(self, title: str, body: str, status: int = 200, nai: str | None = None, csrf: str = "") -> web.Response:
        signed_in = ""
        if nai is not None:
            signed_in = (
                f"<form method='post' action='/logout' class='who'>Signed in as <b>{html.escape(nai)}</b> "
                f"<input type='hidden' name='csrf' value='{html.escape(csrf)}'>"
                "<button type='submit' id='logout'>Sign out</button></form>"
            )
        text = (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)} - aaa_vpn</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #999;padding:.3em}.error{color:#a00}.ok{color:#060}</style>"
            f"</head><body>{signed_in}<h1>{html.escape(title)}</h1>{body}</body></html>"
        )
        response = web.Response(text=text, status=status, content_type="text/html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
        )
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null"
        # with the page's own forms, which rule 5 refuses.
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def _same_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            raise ApiError(403, "this form may only be sent from this site")

    def _web_session(self, request: web.Request) -> WebSession | None:
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        session = self.sessions.get(token)
        now = time.monotonic()
        if session is None or now - session.seen > IDLE_SECONDS or now - session.started > ABSOLUTE_SECONDS:
            self.sessions.pop(token, None)
            return None
        session.seen = now
        return session

    def _forget_expired(self, now: float) -> None:
        for token, session in list(self.sessions.items()):
            if now - session.seen > IDLE_SECONDS or now - session.started > ABSOLUTE_SECONDS:
                del self.sessions[token]

    def _end_sessions_of(self, nai: str) -> None:
        for token, session in list(self.sessions.items()):
            if session.nai == nai:
                del self.sessions[token]

    async def _form(self, request: web.Request, session: WebSession | None) -> dict[str, str]:
        self._same_origin(request)
        form = await request.post()
        values = {key: value for key, value in form.items() if isinstance(value, str)}
        if session is not None and not hmac.compare_digest(values.get("csrf", ""), session.csrf):
            raise ApiError(403, "the form has expired or did not come from this site; reload the page")
        return values

    def _signed_in(self, request: web.Request) -> WebSession:
        session = self._web_session(request)
        if session is None:
            raise web.HTTPSeeOther("/login")
        return session

    @staticmethod
    def _cookie(response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="Strict")

    async def page_root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/me" if self._web_session(request) is not None else "/login")

    async def page_login(self, request: web.Request, message: str = "", status: int = 200) -> web.Response:
        token = secrets.token_urlsafe(24)
        error = f"<p class='error' id='message'>{html.escape(message)}</p>" if message else ""
        body = (
            f"{error}<form method='post' action='/login'>"
            f"<input type='hidden' name='csrf' value='{token}'>"
            "<p><label>NAI <input name='nai' id='nai' autocomplete='username' required></label></p>"
            "<p><label>Password <input name='password' id='password' type='password'"
            " autocomplete='current-password' required></label></p>"
            "<p><button type='submit' id='sign-in'>Sign in</button></p></form>"
        )
        response = self._page("Sign in to your VPN", body, status)
        self._cookie(response, LOGIN_COOKIE, token, 600)
        return response

    async def page_login_post(self, request: web.Request) -> web.StreamResponse:
        form = await self._form(request, None)
        bound = request.cookies.get(LOGIN_COOKIE, "")
        if not bound or not hmac.compare_digest(form.get("csrf", ""), bound):
            return await self.page_login(request, "The sign-in form expired; please try again.", 403)
        nai, password = form.get("nai", "").strip(), form.get("password", "")
        now = time.monotonic()
        if nai not in self.failures and len(self.failures) >= MAX_TRACKED_FAILURES:
            # Bounded memory whatever names are tried: forget those not locked now.
            self.failures = {n: f for n, f in self.failures.items() if f.locked_until > now}
        failures = self.failures.setdefault(nai, Failures())
        if failures.locked_until > now:
            return await self.page_login(request, "Too many failed attempts; wait a minute.", 429)
        verifier = await self.store.call(lambda store: store.get_web_credential(nai))
        ok = await asyncio.get_running_loop().run_in_executor(None, verify_password, verifier, password)
        if not ok:
            failures.count += 1
            if failures.count >= LOCK_AFTER:
                failures.count, failures.locked_until = 0, now + LOCK_SECONDS
            log.info("user page: failed sign-in for %r from %s", nai, request.remote)
            return await self.page_login(request, "Wrong NAI or password.", 401)
        self.failures.pop(nai, None)
        self._forget_expired(now)
        token = secrets.token_urlsafe(32)
        self.sessions[token] = WebSession(nai, secrets.token_urlsafe(32), now, now)
        log.info("user page: %s signed in from %s", nai, request.remote)
        response = web.HTTPSeeOther("/me")
        self._cookie(response, COOKIE, token, ABSOLUTE_SECONDS)
        response.del_cookie(LOGIN_COOKIE, path="/")
        raise response

    async def page_logout(self, request: web.Request) -> web.StreamResponse:
        session = self._signed_in(request)
        await self._form(request, session)
        self.sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def _choices(self, nai: str) -> tuple[list[VpnRecord], dict[str, list[str]], dict[str, str]]:
        """The user's records, what they may choose, and each allowed gateway's mode."""

        def read(store: SqlStore) -> tuple[list[VpnRecord], dict[str, list[str]], dict[str, str]]:
            records = store.list_vpn_records(nai)
            allowed = store.get_self_service(nai)
            modes = {g.name: g.mode.value for g in store.list_gateways()}
            return records, allowed, modes

        return await self.store.call(read)

    async def page_me(self, request: web.Request, result: str = "") -> web.Response:
        session = self._signed_in(request)
        records, allowed, modes = await self._choices(session.nai)
        csrf = html.escape(session.csrf)

        def select(name: str, kind: str, current: str | None, element: str, none: bool = False) -> str:
            options = sorted({*allowed[kind], *([current] if current else [])})
            out = [f"<select name='{name}' id='{element}'>"]
            if none:
                out.append(f"<option value=''{' selected' if current is None else ''}>none</option>")
            for option in options:
                label = f"{option} ({modes[option]})" if kind == "gateway" and option in modes else option
                chosen = " selected" if option == current else ""
                out.append(f"<option value='{html.escape(option)}'{chosen}>{html.escape(label)}</option>")
            return "".join(out) + "</select>"

        rows = []
        for record in records:
            rid = record.id
            rows.append(
                f"<tr id='record-{rid}'><td>{rid}</td><td><form method='post' action='/me/records/{rid}'>"
                f"<input type='hidden' name='csrf' value='{csrf}'>"
                f"<input name='correspondent' id='correspondent-{rid}' value='{record.correspondent}'> "
                + select("gateway", "gateway", record.gateway, f"gateway-{rid}")
                + " "
                + select("service", "service", record.service, f"service-{rid}")
                + " "
                + select("qos", "qos", record.qos, f"qos-{rid}", none=True)
                + f" <button type='submit' id='save-{rid}'>Save and apply</button></form>"
                f"<form method='post' action='/me/records/{rid}/delete'>"
                f"<input type='hidden' name='csrf' value='{csrf}'>"
                f"<button type='submit' id='delete-{rid}'>Remove</button></form></td></tr>"
            )
        table = (
            "<table id='records'><tr><th>#</th><th>correspondent, gateway, security service, QoS class</th></tr>"
            + "".join(rows)
            + "</table>"
            if rows
            else "<p>You have no VPN records.</p>"
        )
        add = ""
        if allowed["gateway"] and allowed["service"]:
            add = (
                "<h2>Add a correspondent</h2><form method='post' action='/me/records'>"
                f"<input type='hidden' name='csrf' value='{csrf}'>"
                "<input name='correspondent' id='new-correspondent' placeholder='10.1.0.0/16'> "
                + select("gateway", "gateway", None, "new-gateway")
                + " "
                + select("service", "service", None, "new-service")
                + " "
                + select("qos", "qos", None, "new-qos", none=True)
                + " <button type='submit' id='add'>Add and apply</button></form>"
            )
        return self._page("Your VPN", result + table + add, nai=session.nai, csrf=session.csrf)

    def _chosen(self, form: dict[str, str], allowed: dict[str, list[str]], current: VpnRecord | None) -> JsonObject:
        """The record the form asks for, if the user may choose it (rule 3)."""
        change: JsonObject = {}
        for kind, name in (("gateway", "gateway"), ("service", "service"), ("qos", "qos")):
            if name not in form:
                continue
            value: str | None = form[name] or None
            kept = current is not None and getattr(current, name) == value
            if value is None and kind == "qos":
                change[name] = None
                continue
            if value is None or (not kept and value not in allowed[kind]):
                raise ValidationError(f"your operator does not let you choose {kind} {value!r}")
            change[name] = value
        if "correspondent" in form:
            change["correspondent"] = form["correspondent"].strip()
        return change

    async def _own(self, session: WebSession, request: web.Request) -> int:
        try:
            return int(request.match_info["id"])
        except ValueError:
            raise NotFound("no such VPN record") from None

    async def page_change(self, request: web.Request) -> web.Response:
        session = self._signed_in(request)
        form = await self._form(request, session)
        record_id = await self._own(session, request)

        def change(store: SqlStore) -> VpnRecord:
            with store.transaction():
                old = _owned(store, session.nai, record_id)
                new: VpnRecord = VPN.changed(
                    old, self._chosen(form, store.get_self_service(session.nai), old), fixed=("nai",)
                )
                store.update_vpn_record(new)
                self._audit(store, f"user:{session.nai}", "vpn.change", str(record_id), vpn_record_to_json(new))
            return new

        new = await self.store.call(change)
        return await self._applied(request, session, f"Record {new.id} is now {new.correspondent} via {new.gateway}.")

    async def page_add(self, request: web.Request) -> web.Response:
        session = self._signed_in(request)
        form = await self._form(request, session)

        def add(store: SqlStore) -> VpnRecord:
            with store.transaction():
                chosen = self._chosen(form, store.get_self_service(session.nai), None)
                record = VPN.from_json({"nai": session.nai, **chosen})
                stored = store.add_vpn_record(record)
                self._audit(store, f"user:{session.nai}", "vpn.add", str(stored.id), vpn_record_to_json(stored))
            return stored

        stored = await self.store.call(add)
        return await self._applied(request, session, f"Added record {stored.id}: {stored.correspondent}.")

    async def page_delete(self, request: web.Request) -> web.Response:
        session = self._signed_in(request)
        await self._form(request, session)
        record_id = await self._own(session, request)

        def delete(store: SqlStore) -> None:
            with store.transaction():
                _owned(store, session.nai, record_id)
                store.delete_vpn_record(record_id)
                self._audit(store, f"user:{session.nai}", "vpn.delete", str(record_id))

        await self.store.call(delete)
        return await self._applied(request, session, f"Removed record {record_id}.")

    def _audit_push(self, nai: str, session_id: str, detail: JsonObject, store: SqlStore) -> None:
        self._audit(store, f"user:{nai}", "sessions.push", session_id, detail)

    async def _applied(self, request: web.Request, session: WebSession, what: str) -> web.Response:
        """Rule 4: push the change to the user's live sessions; the page with what each node answered."""
        live = await self.store.call(lambda store: [s.session_id for s in store.find_sessions(session.nai)])
        parts = [f"<p class='ok' id='changed'>{html.escape(what)}</p>"]
        if not live:
            parts.append("<p id='no-session'>You have no live session: your next registration uses the change.</p>")
        for session_id in live:
            try:
                outcome = await self._coa_async("push", session_id)
            except (ApiError, StoreError) as exc:
                parts.append(f"<p class='error'>Could not apply it: {html.escape(str(exc))}</p>")
                continue
            items = "".join(
                f"<li class='node' data-role='{html.escape(a['role'])}' data-answer='{html.escape(str(a['answer']))}'>"
                f"{html.escape(a['role'].upper())} {html.escape(a['address'])}: "
                f"{html.escape(a['answer'] or a['error'])}</li>"
                for a in outcome["agents"]
            )
            verdict = "applied" if outcome["acknowledged"] else "NOT applied everywhere"
            parts.append(
                f"<div id='push-result' data-acknowledged='{str(outcome['acknowledged']).lower()}'>"
                f"<p>Live session: {verdict} (epoch {outcome['previous_epoch']} to {outcome['epoch']}).</p>"
                f"<ul>{items}</ul></div>"
            )
            detail = {"acknowledged": outcome["acknowledged"], "agents": [a["answer"] for a in outcome["agents"]]}
            await self.store.call(functools.partial(self._audit_push, session.nai, session_id, detail))
        return await self.page_me(request, "".join(parts))


def _owned(store: SqlStore, nai: str, record_id: int) -> VpnRecord:
    """Rule 3: the user's own record; another's is as missing as one that does not exist."""
    try:
        record = store.get_vpn_record(record_id)
    except NotFound:
        record = None
    if record is None or record.nai != nai:
        raise NotFound("no such VPN record")
    return record


def _time(value: str | None, what: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{what}: {value!r} is neither a time (2026-12-03T10:00:00Z) nor seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _limit(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValidationError(f"limit: {value!r} is not a positive integer")
    return int(value)


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _tls(settings: ApiSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def serve(settings: ApiSettings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set."""
    server = ApiServer(settings)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen, settings.port, ssl_context=_tls(settings))
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []  # the port actually bound (port 0)
    port = sockets[0].getsockname()[1] if sockets else settings.port
    scheme = "https" if settings.tls_cert is not None else "http"
    log.info("api listening on %s://%s:%d (%d operator tokens)", scheme, settings.listen, port, len(settings.tokens))
    # The line tests and the lab read (aaa_vpn/lab/processes.py):
    log.info("worker listening address=%s:%d", settings.listen, port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_api_server(settings: ApiSettings) -> int:
    """``aaa-vpn serve api``: until SIGTERM or SIGINT; exit status 0."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
    return 0


__all__ = ["ApiServer", "ApiSettings", "run_api_server", "serve"]
