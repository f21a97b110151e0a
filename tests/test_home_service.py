"""The home AAA role and its service layer (roles/home_aaa.py,
service/home.py) in one process, without sockets or a database: requests are
built with the agents' own codec, the store is the in-memory one, the clock
is a number.

Covered here: the five cases of an FA registration; renewals that change no
key answered with a confirmation (and the cases that are not); a move asked
for by an HA stored only after it checks out and within its epoch bounds; a
reply that cannot fit costs only its own request; a store that does not
answer costs only the requests that needed it; a session changed by another
worker is decided again, never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from aaa_vpn.model import (
    Client,
    ClientRole,
    EspTransform,
    Flavour,
    Gateway,
    GatewayMode,
    Service,
    Session,
    SessionWrite,
    User,
    VpnRecord,
    WriteKind,
    WriteOutcome,
)
from aaa_vpn.roles.home_aaa import Case, HomeAaa, HomeAaaOptions, StoreSession, choose_case
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.secret import Secret
from aaa_vpn.service.home import HomeService, StoreProvisioning, StoreSessions
from aaa_vpn.store.memory import MemoryStore
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius_request import (
    Accepted,
    AccessRequest,
    Rejected,
    build_status_server,
    decode_access_reply,
    encode_access_request,
)

FA1, FA2, HA = "192.0.2.1", "192.0.2.5", "192.0.2.2"
GW_STATIC, GW_DYNAMIC = "192.0.2.10", "192.0.2.20"
NAI = "mn1@home.example"
HOME_ADDRESS = IPv4Address("198.51.100.10")
SECRETS = {FA1: b"fa1-shared-secret", FA2: b"fa2-shared-secret", HA: b"ha-shared-secret", "pdsn": b"pdsn-secret-1"}
MN_AAA = Secret(b"mn-aaa-secret")
PRECEDING = bytes(range(40))
NOW = 1_000_000.0


def provision(store: MemoryStore, users: int = 1) -> None:
    store.add_client(Client("fa1", IPv4Network(f"{FA1}/32"), Secret(SECRETS[FA1]), ClientRole.FA))
    store.add_client(Client("fa2", IPv4Network(f"{FA2}/32"), Secret(SECRETS[FA2]), ClientRole.FA))
    store.add_client(Client("ha", IPv4Network(f"{HA}/32"), Secret(SECRETS[HA]), ClientRole.HA))
    store.add_client(
        Client("pdsn", IPv4Network("192.0.2.64/26"), Secret(SECRETS["pdsn"]), ClientRole.FA, flavour=Flavour.THREEGPP2)
    )
    for name, address, mode, prefix in (
        ("gw-s", GW_STATIC, GatewayMode.STATIC, "203.0.113.0/25"),
        ("gw-d", GW_DYNAMIC, GatewayMode.DYNAMIC, "203.0.113.128/25"),
    ):
        store.add_gateway(Gateway(name, IPv4Address(address), mode, (IPv4Network(prefix),), Secret(name.encode() * 8)))
    # SAs that outlive a registration: renewals are not capped by the keys' lifetime here
    store.add_service(Service("gold", esp_transform=EspTransform.AES_GCM_16_256, sa_lifetime=7200))
    for n in range(users):
        nai = NAI if n == 0 else f"mn{n + 1}@home.example"
        home = IPv4Address(int(HOME_ADDRESS) + n)
        store.add_user(User(nai, IPv4Address(HA), MN_AAA, 256, Secret(bytes(range(16))), home_address=home))
        store.add_vpn_record(VpnRecord(nai, IPv4Network("203.0.113.0/25"), "gw-s", "gold"))
        store.add_vpn_record(VpnRecord(nai, IPv4Network("203.0.113.128/25"), "gw-d", "gold"))


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    memory = MemoryStore()
    provision(memory, users=31)
    yield memory


def proof() -> tuple[bytes, bytes]:
    return mn_aaa_chap_attributes(os.urandom(16), PRECEDING, MN_AAA)


def fa_request(fa: str = FA1, nai: str = NAI, **fields: object) -> AccessRequest:
    chap_password, chap_challenge = proof()
    return AccessRequest(
        nai=nai,
        chap_password=chap_password,
        chap_challenge=chap_challenge,
        nas_ip_address=IPv4Address(fa),
        care_of_address=IPv4Address(fa),
        **fields,  # type: ignore[arg-type]
    )


def ha_request(session_id: str, care_of: str, epoch: int | None, **fields: object) -> AccessRequest:
    chap_password, chap_challenge = proof()
    return AccessRequest(
        nai=NAI,
        chap_password=chap_password,
        chap_challenge=chap_challenge,
        nas_ip_address=IPv4Address(HA),
        request_type=RequestType.HA_REGISTRATION,
        care_of_address=IPv4Address(care_of),
        session_id=session_id,
        key_epoch=epoch,
        **fields,  # type: ignore[arg-type]
    )


class Client_:
    """One RADIUS client of the home AAA, at ``address``."""

    def __init__(self, service: HomeService, address: str, secret: bytes | None = None) -> None:
        self.service = service
        self.address = address
        self.secret = secret or SECRETS[address]
        self.port = 40000

    def packet(self, request: AccessRequest) -> bytes:
        return encode_access_request(request, os.urandom(1)[0], os.urandom(16), self.secret)

    def ask(self, request: AccessRequest | bytes, now: float = NOW) -> Accepted | Rejected | None:
        raw = request if isinstance(request, bytes) else self.packet(request)
        self.port += 1
        reply = self.service.handle(raw, (self.address, self.port), now)
        return None if reply is None else decode_access_reply(reply, raw, self.secret)

    def accepted(self, request: AccessRequest, now: float = NOW) -> Accepted:
        answer = self.ask(request, now)
        assert isinstance(answer, Accepted), answer
        return answer


def profile_of(answer: Accepted) -> VpnProfile:
    assert answer.profile is not None, answer
    return answer.profile


def only_session(store: MemoryStore, nai: str = NAI) -> Session:
    (session,) = store.find_sessions(nai)
    return session


# -- the five cases of an FA registration (rule 6) -------------------------------------------------


def _session(care_of: str = FA1, session_id: str = "s1") -> Session:
    return Session(session_id, NAI, Secret(bytes(32)), 1, HOME_ADDRESS, IPv4Address(HA), IPv4Address(care_of), 0, 10)


@pytest.mark.parametrize(
    ("current", "fields", "care_of", "vpn_changed", "keys_due", "case"),
    [
        (None, {"session_id": "s1"}, FA1, False, False, Case.CREATE),
        (_session(), {}, FA1, False, False, Case.CREATE),  # names nothing
        (_session(), {"session_id": "other"}, FA1, False, False, Case.CREATE),
        (_session(), {"session_id": "s1"}, FA2, False, False, Case.CREATE),  # its id, another FA, no previous FA
        (_session(), {"session_id": "s1"}, FA1, False, False, Case.RENEW),
        (_session(), {"session_id": "s1"}, FA1, False, True, Case.REKEY),
        (_session(), {"session_id": "s1", "request_type": RequestType.SERVICE_UPDATE}, FA1, False, False, Case.REKEY),
        (_session(), {"session_id": "s1"}, FA1, True, True, Case.UPDATE),
        (_session(), {"previous_fa": IPv4Address(FA1)}, FA2, False, False, Case.MOVE),
        (_session(), {"previous_fa": IPv4Address(FA1)}, FA1, False, False, Case.CREATE),  # same FA: nothing to move
    ],
)
def test_the_five_cases(
    current: Session | None, fields: dict[str, object], care_of: str, vpn_changed: bool, keys_due: bool, case: Case
) -> None:
    request = fa_request(care_of, **fields)
    assert choose_case(current, request, IPv4Address(care_of), vpn_changed, keys_due) is case


def test_create_renew_move_and_rekey_as_the_store_sees_them(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    fa1, fa2 = Client_(service, FA1), Client_(service, FA2)
    first = profile_of(fa1.accepted(fa_request()))
    session = only_session(store)
    assert (session.session_id, session.epoch, str(session.care_of_address)) == (first.session_id, 1, FA1)
    assert service.counters["sessions_created"] == 1
    # renew (without a digest: the whole view again, the same keys)
    again = profile_of(fa1.accepted(fa_request(session_id=first.session_id), NOW + 10))
    assert again.paths == first.paths and again.epoch == 1
    assert only_session(store).expires == pytest.approx(NOW + 10 + 3600, abs=1)
    # move (flow D): next epoch at FA2, new keys for what moves
    moved = profile_of(fa2.accepted(fa_request(FA2, previous_fa=IPv4Address(FA1)), NOW + 20))
    assert (moved.session_id, moved.epoch, str(moved.care_of_address)) == (first.session_id, 2, FA2)
    assert only_session(store).epoch == 2
    # rekey (a Service-Update): next epoch at the same FA, every path new
    rekeyed = profile_of(
        fa2.accepted(fa_request(FA2, session_id=first.session_id, request_type=RequestType.SERVICE_UPDATE), NOW + 30)
    )
    assert rekeyed.epoch == 3 and {p.spi_in for p in rekeyed.paths}.isdisjoint({p.spi_in for p in moved.paths})
    counters = service.counters
    assert [counters[f"sessions_{k}"] for k in ("created", "renewed", "moved", "rekeyed")] == [1, 1, 1, 1]


# -- renewals that change no key (docs/protocol.md section 1) ---------------------------------------


def test_a_renewal_naming_its_view_is_confirmed_without_a_key(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    fa1 = Client_(service, FA1)
    first = profile_of(fa1.accepted(fa_request()))
    assert first.digest is not None
    raw = fa1.packet(fa_request(session_id=first.session_id, profile_digest=first.digest))
    reply = service.handle(raw, (FA1, 50000), NOW + 100)
    assert reply is not None
    answer = decode_access_reply(reply, raw, SECRETS[FA1])
    assert isinstance(answer, Accepted) and answer.profile is None and answer.confirmation is not None
    confirmation = answer.confirmation
    assert (confirmation.session_id, confirmation.epoch, confirmation.digest) == (first.session_id, 1, first.digest)
    assert confirmation.lifetime == 3600
    # on the wire: Session-Timeout and our vendor attributes, none salt-encrypted, no address of the view
    attributes = rc.decode_packet(reply).attributes
    ours = {v[4] for c, v in attributes if c == rc.VENDOR_SPECIFIC}
    a = rc.AaaVpnAttr
    assert ours == {a.SESSION_ID, a.KEY_EPOCH, a.LIFETIME, a.PROFILE_DIGEST}
    # 20 + 18 (MA) + 42 (Class) + 6 + 40 + 12 + 12 + 24
    assert len(reply) <= 174, f"a confirmation of {len(reply)} octets"
    assert (rc.CLASS, b"aaa-vpn:" + first.session_id.encode()) in attributes  # for the NAS's accounting
    # the session lives on in the store
    assert only_session(store).expires == pytest.approx(NOW + 100 + 3600, abs=1)
    assert service.counters["renewals_confirmed"] == 1


def test_a_stale_digest_or_a_changed_vpn_gets_the_whole_view(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    fa1 = Client_(service, FA1)
    first = profile_of(fa1.accepted(fa_request()))
    stale = fa1.accepted(fa_request(session_id=first.session_id, profile_digest=bytes(16)), NOW + 1)
    assert stale.profile is not None and stale.profile.paths == first.paths
    # the user's VPN changes (a record goes): the renewal is an update at the next epoch, whole view
    record = next(r for r in store.list_vpn_records(NAI) if r.gateway == "gw-d")
    store.delete_vpn_record(record.id or 0)
    updated = profile_of(fa1.accepted(fa_request(session_id=first.session_id, profile_digest=first.digest), NOW + 2))
    assert updated.epoch == 2 and updated.digest != first.digest
    assert {p.peer for p in updated.paths} == {IPv4Address(HA)}


def test_a_third_party_flavour_always_gets_every_attribute(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    pdsn = Client_(service, "192.0.2.70", SECRETS["pdsn"])
    request = fa_request("192.0.2.70")
    raw = pdsn.packet(request)
    first = service.handle(raw, ("192.0.2.70", 1), NOW)
    assert first is not None and first[0] == rc.ACCESS_ACCEPT
    session = only_session(store)
    # even naming a digest (a 3GPP2 PDSN never would), the 3GPP2 attributes come again
    renewal = pdsn.packet(fa_request("192.0.2.70", session_id=session.session_id, profile_digest=bytes(16)))
    reply = service.handle(renewal, ("192.0.2.70", 2), NOW + 1)
    assert reply is not None
    vendors = {int.from_bytes(v[:4], "big") for c, v in rc.decode_packet(reply).attributes if c == rc.VENDOR_SPECIFIC}
    assert vendors == {rc.THREEGPP2_VENDOR_ID}


# -- moves reported by an HA (rule 7) -----------------------------------------------------------------


@pytest.mark.parametrize("epoch", [500, 2**32 - 1, 0, 1])
def test_an_ha_naming_an_epoch_out_of_bounds_moves_nothing(store: MemoryStore, epoch: int) -> None:
    service = HomeService(store, now=NOW)
    first = profile_of(Client_(service, FA1).accepted(fa_request()))
    before = only_session(store)
    answer = Client_(service, HA).ask(ha_request(first.session_id, FA2, epoch), NOW + 1)
    assert isinstance(answer, Rejected) and answer.reason is RejectReason.NO_SESSION, answer
    assert only_session(store) == before
    # the next genuine handoff (epoch 2 at FA2) still works, and the one after it
    moved = profile_of(Client_(service, HA).accepted(ha_request(first.session_id, FA2, 2), NOW + 2))
    assert (moved.epoch, str(moved.care_of_address)) == (2, FA2)
    again = profile_of(Client_(service, FA1).accepted(fa_request(FA1, previous_fa=IPv4Address(FA2)), NOW + 3))
    assert again.epoch == 3 and only_session(store).epoch == 3


def test_an_ha_move_is_stored_only_once_it_checks_out(store: MemoryStore) -> None:
    provisioning, sessions = StoreProvisioning(store), StoreSessions(store)
    role = HomeAaa(provisioning, sessions, now=NOW)
    ha = Client_(HomeService(store), HA)

    def drain() -> list[StoreSession]:
        writes = []
        while (event := role.next_event()) is not None:
            if isinstance(event, StoreSession):
                writes.append(event)
        return writes

    fa1 = Client_(HomeService(store), FA1)
    first = profile_of(fa1.accepted(fa_request()))
    before = only_session(store)
    # a wrong MN-AAA proof: rejected, no write asked for
    wrong = dataclasses.replace(ha_request(first.session_id, FA2, 2), chap_password=bytes(17))
    role.receive_datagram(ha.packet(wrong), (HA, 1), NOW)
    assert drain() == [] and only_session(store) == before
    assert role.datagrams_to_send()[0][0][0] == rc.ACCESS_REJECT
    # a genuine one: one REPLACE write, conditional on the old epoch; no reply before it is stored
    raw = ha.packet(ha_request(first.session_id, FA2, 2))
    role.receive_datagram(raw, (HA, 2), NOW)
    (write,) = drain()
    assert write.write.kind is WriteKind.REPLACE and write.write.expected_epoch == 1
    assert role.datagrams_to_send() == [] and only_session(store) == before
    assert store.apply_session_writes([write.write]) == [WriteOutcome.STORED]
    role.sessions_stored(write.write_id, WriteOutcome.STORED, NOW)
    ((reply, destination),) = role.datagrams_to_send()
    assert destination == (HA, 2) and reply[0] == rc.ACCESS_ACCEPT
    assert only_session(store).epoch == 2


# -- one request's trouble is that request's alone ---------------------------------------------------


def test_a_reply_that_cannot_fit_costs_only_its_own_request(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    fa1 = Client_(service, FA1)
    # Requests that fit 4096 octets whose replies would not: the reply echoes
    # every Proxy-State and adds more than the request carries besides them.
    stuffed = (*(os.urandom(253) for _ in range(15)), os.urandom(215))
    batch = [
        (fa1.packet(fa_request(nai=f"mn{n}@home.example" if n > 1 else NAI)), (FA1, 41000 + n)) for n in range(1, 31)
    ]
    unknown = AccessRequest(nai="x@y", nas_ip_address=IPv4Address(FA1), proxy_states=stuffed)
    batch.insert(7, (fa1.packet(unknown), (FA1, 42000)))
    states = b"".join(bytes((33, 255)) + os.urandom(253) for _ in range(15)) + bytes((33, 202)) + os.urandom(200)
    status = rc.seal_request(rc.STATUS_SERVER, 9, os.urandom(16), SECRETS[FA1], states)
    batch.insert(3, (status, (FA1, 42001)))
    replies = service.handle_batch(batch, NOW)
    answered = {destination for _reply, destination in replies}
    assert len(replies) == 30 and (FA1, 42000) not in answered and (FA1, 42001) not in answered
    assert all(reply[0] == rc.ACCESS_ACCEPT for reply, _ in replies)
    assert service.counters["dropped.reply_too_large"] == 2
    assert len(store.list_sessions()) == 30


def test_a_store_that_does_not_answer_costs_only_the_requests_that_need_it(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    fa1 = Client_(service, FA1)
    raw = fa1.packet(fa_request())
    store.unavailable = True
    status = build_status_server(1, os.urandom(16), SECRETS[FA1])
    replies = service.handle_batch([(raw, (FA1, 1)), (status, (FA1, 2))], NOW)
    assert [destination for _reply, destination in replies] == [(FA1, 2)]  # Status-Server answered all the same
    assert service.counters["dropped.store_unavailable"] == 1 and store.list_sessions() == []
    store.unavailable = False
    # the retransmission is decided anew (not absorbed as if it were still in flight)
    ((reply, _),) = service.handle_batch([(raw, (FA1, 1))], NOW + 2)
    assert isinstance(decode_access_reply(reply, raw, SECRETS[FA1]), Accepted)
    assert len(store.list_sessions()) == 1


def test_a_session_another_worker_changed_is_decided_again_not_overwritten(store: MemoryStore) -> None:
    worker_a, worker_b = HomeService(store, now=NOW), HomeService(store, now=NOW)
    fa1 = Client_(worker_a, FA1)
    first = profile_of(fa1.accepted(fa_request()))
    # worker A decides a renewal (a RENEW write: the expiry moves two seconds)...
    raw = fa1.packet(fa_request(session_id=first.session_id, profile_digest=first.digest))
    worker_a.role.receive_datagram(raw, (FA1, 7), NOW + 2)
    assert worker_a.role.pending_writes == 1
    # ...and before its write reaches the store, worker B re-keys the session (a push): epoch 2
    pushed = worker_b.push(first.session_id, NOW + 2)
    assert not pushed.error and only_session(store).epoch == 2
    worker_a.run(NOW + 2)  # A's write finds epoch 2: a conflict, and A decides again from the store
    assert worker_a.counters["store_conflicts"] == 1
    ((reply, destination),) = worker_a.role.datagrams_to_send()
    answer = decode_access_reply(reply, raw, SECRETS[FA1])
    assert destination == (FA1, 7) and isinstance(answer, Accepted)
    assert answer.profile is not None and answer.profile.epoch == 2  # the view of the session as it is now
    session = only_session(store)
    assert session.epoch == 2 and session.expires == pytest.approx(NOW + 2 + 3600, abs=1)


def test_a_worker_trusts_its_copy_only_while_no_other_worker_changed_the_session(store: MemoryStore) -> None:
    worker_a, worker_b = HomeService(store, now=NOW), HomeService(store, now=NOW)
    fa1_a, fa1_b = Client_(worker_a, FA1), Client_(worker_b, FA1)
    first = profile_of(fa1_a.accepted(fa_request()))
    renewal = fa_request(session_id=first.session_id, profile_digest=first.digest)
    # A renews twice within a second: decided from its copy, then from its memo; no write
    assert fa1_a.accepted(renewal, NOW + 0.2).profile is None  # a confirmation
    assert fa1_a.accepted(renewal, NOW + 0.3).profile is None
    assert worker_a.counters["memo_answers"] == 1
    # B replaces the session: a registration that names nothing creates a new one
    second = profile_of(fa1_b.accepted(fa_request(), NOW + 0.4))
    assert second.session_id != first.session_id
    # A must not confirm the session B deleted, neither from its memo nor from its copy
    answer = fa1_a.accepted(renewal, NOW + 0.5)
    assert worker_a.counters["memo_answers"] == 1
    assert answer.profile is not None and answer.profile.session_id not in (first.session_id, second.session_id)
    assert [s.session_id for s in store.list_sessions()] == [answer.profile.session_id]
    # and a session B re-keys is not renewed from A's copy either
    third = answer.profile
    assert fa1_a.accepted(fa_request(session_id=third.session_id, profile_digest=third.digest), NOW + 0.6)
    assert not worker_b.push(third.session_id, NOW + 0.7).error
    renewed = fa1_a.accepted(fa_request(session_id=third.session_id, profile_digest=third.digest), NOW + 0.8)
    assert renewed.profile is not None and renewed.profile.epoch == 2
    assert worker_a.counters["store_conflicts"] == 0  # seen by the mark, before any write


def test_conditional_writes_on_the_memory_store() -> None:
    store = MemoryStore()
    provision(store)
    service = HomeService(store, now=NOW)
    first = profile_of(Client_(service, FA1).accepted(fa_request()))
    session = only_session(store)
    renew = SessionWrite(WriteKind.RENEW, session.session_id, expected_epoch=2, expires=NOW + 9)
    delete = SessionWrite(WriteKind.DELETE, first.session_id, expected_epoch=1)
    assert store.apply_session_writes([renew, delete]) == [WriteOutcome.CONFLICT, WriteOutcome.STORED]
    assert store.list_sessions() == []


# -- the renewal memo (rule 12) ---------------------------------------------------------------------


def _renewal(fa1: Client_, first: VpnProfile) -> bytes:
    return fa1.packet(fa_request(session_id=first.session_id, profile_digest=first.digest))


def test_the_memo_answers_a_repeated_renewal_as_the_role_would(store: MemoryStore) -> None:
    memo_on = HomeService(store, now=NOW)
    memo_off = HomeService(store, HomeAaaOptions(renewal_memo=False), now=NOW)
    fa1 = Client_(memo_on, FA1)
    first = profile_of(fa1.accepted(fa_request()))
    assert memo_on.handle(_renewal(fa1, first), (FA1, 1), NOW + 1) is not None  # decided, written
    assert memo_on.handle(_renewal(fa1, first), (FA1, 1), NOW + 1.2) is not None  # decided, remembered
    assert memo_on.counters["memo_answers"] == 0
    again = _renewal(fa1, first)  # the same shape, a new authenticator and proof
    from_memo = memo_on.handle(again, (FA1, 2), NOW + 1.5)
    assert memo_on.counters["memo_answers"] == 1 and memo_on.counters["renewals_confirmed"] == 3
    from_role = memo_off.handle(again, (FA1, 2), NOW + 1.5)
    assert from_memo is not None and from_memo == from_role, "the memo's reply differs from the role's"


def test_the_memo_answers_nothing_the_role_would_not(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    fa1 = Client_(service, FA1)
    first = profile_of(fa1.accepted(fa_request()))
    assert service.handle(_renewal(fa1, first), (FA1, 1), NOW + 0.5) is not None  # remembered
    # a wrong MN-AAA proof: rejected by the role, never confirmed from the memo
    bad = dataclasses.replace(
        fa_request(session_id=first.session_id, profile_digest=first.digest), chap_password=bytes(17)
    )
    answer = fa1.ask(bad, NOW + 0.6)
    assert isinstance(answer, Rejected) and answer.reason is RejectReason.AUTHENTICATION_FAILED
    # a wrong Message-Authenticator: dropped
    raw = bytearray(_renewal(fa1, first))
    raw[-1] ^= 1
    assert service.handle(bytes(raw), (FA1, 3), NOW + 0.7) is None
    assert service.counters["dropped.bad_message_authenticator"] == 1
    # the same request from another address: not the client's memo (and not a client at all)
    assert service.handle(_renewal(fa1, first), ("192.0.2.99", 4), NOW + 0.8) is None
    assert service.counters["memo_answers"] == 0
    # (the memo was there all along: the genuine request is answered from it)
    assert service.handle(_renewal(fa1, first), (FA1, 5), NOW + 0.9) is not None
    assert service.counters["memo_answers"] == 1
    # provisioning changes (the user is disabled): the next renewal is rejected
    user = store.get_user(NAI)
    store.update_user(dataclasses.replace(user, enabled=False))
    answer = fa1.ask(_renewal(fa1, first), NOW + 0.95)
    assert isinstance(answer, Rejected) and answer.reason is RejectReason.USER_DISABLED
    assert service.counters["memo_answers"] == 1


def test_the_memo_is_forgotten_when_the_session_changes_here(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    fa1 = Client_(service, FA1)
    first = profile_of(fa1.accepted(fa_request()))
    assert service.handle(_renewal(fa1, first), (FA1, 1), NOW + 0.5) is not None  # remembered
    assert service.handle(_renewal(fa1, first), (FA1, 2), NOW + 0.6) is not None
    assert service.counters["memo_answers"] == 1
    pushed = service.push(first.session_id, NOW + 2)  # epoch 2: the view the FA holds is gone
    assert not pushed.error
    answer = fa1.accepted(fa_request(session_id=first.session_id, profile_digest=first.digest), NOW + 3)
    assert answer.profile is not None and answer.profile.epoch == 2  # the whole new view, not a confirmation
    assert service.counters["memo_answers"] == 1
