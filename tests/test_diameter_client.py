"""An FA's Diameter AAA client (roles/diameter_client.py) against the home
AAA's real Diameter front end over loopback TCP: the Access-Request an FA
makes becomes an AMR, the AMA the events the RADIUS client reports; renewals
keep the Diameter session; refusals carry the reason an FA maps to its reply
code; no route and no answer fail."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import time
from ipaddress import IPv4Address
from pathlib import Path

from aaa_vpn.lab.topology import NAI
from aaa_vpn.net.diameter import DiameterTransport
from aaa_vpn.roles.diameter_client import DiameterAaaClient, feature_vector, mn_key
from aaa_vpn.roles.radius_client import Event, RequestAccepted, RequestFailed, RequestRejected
from aaa_vpn.secret import Secret
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire.mip_auth import mn_aaa_proof
from aaa_vpn.wire.profile import RejectReason, RequestType
from aaa_vpn.wire.radius_request import AccessRequest
from tests.diameter_lab import (
    ALL_KEYS,
    FA_HOST,
    HOME_HOST,
    MN_FA_KEY_SPI,
    MN_HA_KEY_SPI,
    rrq,
    run,
    start_home,
    wait_for,
)
from tests.mobility import FA1, HA, MN_AAA


def access_request(registration: bytes, session_id: str | None = None, nai: str = NAI) -> AccessRequest:
    """What the FA builds (roles/fa.py) from the node's Registration Request."""
    chap_password, chap_challenge = mn_aaa_proof(registration).chap_attributes()
    return AccessRequest(
        nai=nai,
        chap_password=chap_password,
        chap_challenge=chap_challenge,
        nas_ip_address=IPv4Address(FA1),
        request_type=RequestType.FA_REGISTRATION,
        care_of_address=IPv4Address(FA1),
        home_agent=IPv4Address(HA),
        session_id=session_id,
    )


class Driver:
    def __init__(self, client: DiameterAaaClient) -> None:
        self.client = client
        self.events: list[Event] = []
        self.transport = DiameterTransport(client.node, lambda event: client.node_event(event, time.time()))

    def collect(self) -> list[Event]:
        while (event := self.client.next_event()) is not None:
            self.events.append(event)
        return self.events

    async def ask(self, info: AccessRequest, registration: bytes, tag: object) -> Event:
        self.client.amr(info, registration, 0.0, tag=tag)
        self.transport.pump()
        return await wait_for(
            lambda: next((e for e in self.collect() if getattr(e, "tag", None) == tag), None), 10, f"answer {tag}"
        )


def client() -> DiameterAaaClient:
    return DiameterAaaClient(
        d.Identity(FA_HOST, "visited.example", (IPv4Address("127.0.0.1"),)),
        {"home.example": [HOME_HOST]},
        random_u32=lambda: 7,
    )


def test_amr_accepted_renewed_and_rejected() -> None:
    async def main() -> None:
        server, port = await start_home()
        fa = Driver(client())
        await fa.transport.connect("127.0.0.1", port)
        await wait_for(lambda: fa.client.node.peers(), 10, "CER/CEA")

        registration = rrq()
        first = await fa.ask(access_request(registration), registration, "first")
        assert isinstance(first, RequestAccepted), first
        assert first.profile is not None and first.server == HOME_HOST
        assert first.profile.care_of_address == IPv4Address(FA1) and first.profile.fa_ha_key is not None
        [session] = server.home.sessions.values()

        again = rrq()
        renewed = await fa.ask(access_request(again, first.profile.session_id), again, "renewal")
        assert isinstance(renewed, RequestAccepted) and renewed.profile is not None
        assert renewed.profile.session_id == first.profile.session_id
        assert list(server.home.sessions) == [session.diameter_id]  # the same Diameter session

        wrong = rrq(secret=Secret(b"not-the-key"))
        rejected = await fa.ask(access_request(wrong), wrong, "wrong")
        assert isinstance(rejected, RequestRejected) and rejected.reason is RejectReason.AUTHENTICATION_FAILED
        await fa.transport.close()
        await server.transport.close()

    run(main)


def test_amr_asks_for_the_node_keys_and_the_event_carries_the_mn_fa_key() -> None:
    # RFC 4004 section 7.5: the bits follow the request's Key Generation Nonce Requests (RFC 3957).
    assert feature_vector(rrq()) == d.FEATURE_FA_HA_KEY_REQUEST
    assert feature_vector(rrq(keys=True)) == ALL_KEYS
    assert feature_vector(b"garbage") == d.FEATURE_FA_HA_KEY_REQUEST

    async def main() -> None:
        server, port = await start_home()
        fa = Driver(client())
        await fa.transport.connect("127.0.0.1", port)
        await wait_for(lambda: fa.client.node.peers(), 10, "CER/CEA")
        registration = rrq(keys=True)
        accepted = await fa.ask(access_request(registration), registration, "keys")
        assert isinstance(accepted, RequestAccepted) and accepted.profile is not None
        key = accepted.mn_fa_key
        assert key is not None and key.spi == MN_FA_KEY_SPI and key.aaa_spi == 2 and len(key.nonce) == 16
        # The key the node will derive (RFC 3957 section 5), recomputed with the standard library.
        assert key.key.value == hmac.new(MN_AAA.value, key.nonce + NAI.encode(), hashlib.sha1).digest()
        assert key.lifetime == accepted.profile.lifetime and key.replay_method is None
        assert key.key.value.hex() not in repr(accepted)
        plain = rrq()
        without = await fa.ask(access_request(plain), plain, "plain")
        assert isinstance(without, RequestAccepted) and without.mn_fa_key is None
        await fa.transport.close()
        await server.transport.close()

    run(main)


def test_mn_key_takes_the_key_groups_spi_whatever_spi_the_nonce_group_names() -> None:
    """RFC 4004 sections 9.4 and 9.6: the node allocates the HA-to-MN SPI, the HA
    the MN-to-HA one; a home AAA that names another SPI in MIP-MN-to-HA-MSA is
    not contradicting itself, and the key's SPI is the node's."""
    nonce = d.encode_msa(
        d.AvpCode.MIP_MN_TO_HA_MSA, d.Msa(spi=0x1111, nonce=b"n" * 16, aaa_spi=2, replay_mode=d.REPLAY_TIMESTAMPS)
    )
    key = d.encode_msa(
        d.AvpCode.MIP_HA_TO_MN_MSA, d.Msa(spi=0x3957, session_key=b"k" * 20, replay_mode=d.REPLAY_TIMESTAMPS)
    )
    made = mn_key(
        d.Message(d.Command.HOME_AGENT_MIP, True, 2, avps=(nonce, key)),
        d.AvpCode.MIP_MN_TO_HA_MSA,
        d.AvpCode.MIP_HA_TO_MN_MSA,
    )
    assert made is not None and (made.spi, made.agent_spi, made.request_spi) == (0x3957, None, 0x3957)


def test_mn_key_refuses_half_an_msa_pair() -> None:
    nonce = d.encode_msa(d.AvpCode.MIP_MN_TO_FA_MSA, d.Msa(nonce=b"n" * 16, aaa_spi=2))
    key = d.encode_msa(d.AvpCode.MIP_FA_TO_MN_MSA, d.Msa(spi=0x3958, session_key=b"k" * 20))
    other = d.encode_msa(d.AvpCode.MIP_FA_TO_MN_MSA, d.Msa(algorithm=1, spi=0x3958, session_key=b"k" * 20))

    def answer(*avps: d.Avp) -> d.Message:
        return d.Message(d.Command.AA_MOBILE_NODE, False, 2, avps=avps)

    pair = (d.AvpCode.MIP_MN_TO_FA_MSA, d.AvpCode.MIP_FA_TO_MN_MSA)
    assert mn_key(answer(), *pair) is None
    made = mn_key(answer(nonce, key, d.avp_u32(d.AvpCode.MIP_MSA_LIFETIME, 60)), *pair)
    assert made is not None and (made.spi, made.nonce, made.lifetime) == (0x3958, b"n" * 16, 60)
    for broken, code in ((answer(key), 5005), (answer(nonce), 5005), (answer(nonce, other), 5007)):
        try:
            mn_key(broken, *pair)
        except d.DiameterDecodeError as exc:
            assert exc.result_code == code
        else:
            raise AssertionError(f"accepted {broken}")


def test_no_route_and_no_answer_fail() -> None:
    fa = client()
    registration = rrq()
    fa.amr(access_request(registration), registration, 0.0, tag="nowhere")
    event = fa.next_event()
    assert isinstance(event, RequestFailed) and event.tag == "nowhere"

    async def main() -> None:
        # A peer that takes the AMR and never answers: RFC 6733's Tx timer fails it.
        silent = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readexactly(4)
            cer = d.decode_message(head + await reader.readexactly(int.from_bytes(head[1:4], "big") - 4))
            cea = d.Message(
                cer.command, False, 0, cer.hop_by_hop, cer.end_to_end,
                (d.avp_u32(268, 2001), d.avp_text(264, HOME_HOST), d.avp_text(296, "home.example"),
                 d.avp_u32(258, 2)),
            )  # fmt: skip
            writer.write(cea.encode())
            await silent.wait()
            writer.close()

        listener = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        timing = DiameterAaaClient(
            d.Identity(FA_HOST, "visited.example", (IPv4Address("127.0.0.1"),)),
            {"home.example": [HOME_HOST]},
            timeout=0.5,
        )
        fa = Driver(timing)
        await fa.transport.connect("127.0.0.1", port)
        await wait_for(lambda: timing.node.peers(), 10, "CER/CEA")
        timing.amr(access_request(registration), registration, 0.0, tag="silent")
        fa.transport.pump()
        timing.handle_timer(1.0)  # the clock is the caller's: half a second later, no answer
        failed = [e for e in fa.collect() if isinstance(e, RequestFailed)]
        assert [e.tag for e in failed] == ["silent"] and timing.counters["timeouts"] == 1
        silent.set()
        await fa.transport.close()
        listener.close()

    run(main)


def test_fa_link_over_tls(tmp_path: Path) -> None:
    """The FA's link (net/diameter_agent.py) with --diameter-tls-ca/-cert/-key:
    the home AAA's certificate checked for its Origin-Host, the FA's for the
    server's CA; keys are sent (TLS is a protected connection)."""
    from aaa_vpn.net.diameter_agent import DiameterLink, client_tls
    from aaa_vpn.net.diameter_server import DiameterHomeServer, DiameterOptions
    from aaa_vpn.roles.diameter_client import FaDiameterClient
    from tests.diameter_lab import certificates, home_service

    ca, (server_key, server_cert), (client_key, client_cert) = certificates(tmp_path, HOME_HOST, FA_HOST)

    async def main() -> None:
        options = DiameterOptions(
            HOME_HOST, "home.example", "127.0.0.1", 0,
            tls_cert=str(server_cert), tls_key=str(server_key), tls_ca=str(ca[1]),
        )  # fmt: skip
        server = DiameterHomeServer(home_service(), options)
        port = (await server.start()).sockets[0].getsockname()[1]
        identity = d.Identity(FA_HOST, "visited.example", (IPv4Address("127.0.0.1"),))
        fa = FaDiameterClient(identity, {"*": [HOME_HOST]}, random_u32=lambda: 3)
        registration = rrq()
        fa.registration_of = lambda tag: registration
        answered: list[Event] = []

        def answers() -> None:
            while (event := fa.next_event()) is not None:
                answered.append(event)

        link = DiameterLink(
            fa, f"127.0.0.1:{port}", time.time, answers, client_tls(ca[1], client_cert, client_key), HOME_HOST
        )
        link.start()
        await wait_for(lambda: fa.node.peers(), 10, "CER/CEA over TLS")
        assert fa.node.peers()[0].secure
        fa.request(access_request(registration), 0.0, tag="tls")
        fa.datagrams_to_send(0.0)  # what the FA does after each request: the stream leaves
        await wait_for(lambda: answered, 10, "the AMA")
        [event] = answered
        assert isinstance(event, RequestAccepted) and event.profile is not None and event.profile.fa_ha_key is not None
        await link.close()
        await server.transport.close()

    run(main)


def test_ha_client_takes_hars_and_answers_its_request_from_them() -> None:
    """roles/diameter_client.py HaDiameterClient rules 1 and 2, with the home
    AAA's real front end sending the HAR."""
    from aaa_vpn.model import nai_realm
    from aaa_vpn.roles.diameter_client import HaDiameterClient
    from aaa_vpn.roles.radius_client import RadiusClient, ServerConfig
    from aaa_vpn.wire.diameter import AvpCode as C
    from aaa_vpn.wire.diameter import Command, Message
    from tests.diameter_lab import HA_HOST
    from tests.mobility import SECRETS

    async def main() -> None:
        server, port = await start_home()
        radius = RadiusClient([ServerConfig("127.0.0.1", 9, SECRETS[HA])], nas_ip_address=IPv4Address(HA))
        ha = HaDiameterClient(
            d.Identity(HA_HOST, "home.example", (IPv4Address("127.0.0.1"),)), {"*": [HOME_HOST]}, radius
        )
        ha_transport = DiameterTransport(ha.node, lambda event: ha.node_event(event, time.time()))
        ha.flush = ha_transport.pump
        await ha_transport.connect("127.0.0.1", port)
        await wait_for(lambda: ha.node.peers() and server.node.peer(HA_HOST), 10, "the HA's CER/CEA")

        fa = Driver(client())
        await fa.transport.connect("127.0.0.1", port)
        await wait_for(lambda: fa.client.node.peers(), 10, "the FA's CER/CEA")
        registration = rrq()
        accepted = await fa.ask(access_request(registration), registration, "fa")
        assert isinstance(accepted, RequestAccepted) and accepted.profile is not None
        assert ha.counters["har"] == 1

        # The HA's own request for that registration: answered from the HAR, nothing over RADIUS.
        def ha_request(care_of: str, epoch: int | None, session: str | None = None) -> AccessRequest:
            chap_password, chap_challenge = mn_aaa_proof(registration).chap_attributes()
            return AccessRequest(
                nai=NAI, chap_password=chap_password, chap_challenge=chap_challenge,
                nas_ip_address=IPv4Address(HA), request_type=RequestType.HA_REGISTRATION,
                care_of_address=IPv4Address(care_of), session_id=session or accepted.profile.session_id,
                key_epoch=epoch,
            )  # fmt: skip

        ha.request(ha_request(FA1, accepted.profile.epoch + 1), time.time(), tag="wrong epoch")
        assert ha.datagrams_to_send(time.time()) != []  # not the HAR's session epoch: over RADIUS
        ha.request(ha_request(FA1, accepted.profile.epoch), time.time(), tag="from HAR")
        event = ha.next_event()
        assert isinstance(event, RequestAccepted) and event.tag == "from HAR" and event.profile is not None
        assert event.profile.session_id == accepted.profile.session_id and event.profile.mn_ha_key is not None
        assert event.profile.session_root_key is not None  # the HA's view, not the FA's
        assert ha.counters["from_har"] == 1 and ha.counters["over_radius"] == 1
        ha.request(ha_request(FA1, accepted.profile.epoch), time.time(), tag="again")  # used once
        assert ha.counters["over_radius"] == 2
        assert event.mn_ha_key is None  # the node asked for no key

        # A registration asking for keys: the HAR brings the MN-HA key, the HA's event carries it.
        keyed = rrq(keys=True)
        asked = await fa.ask(access_request(keyed), keyed, "keys")
        assert isinstance(asked, RequestAccepted) and asked.profile is not None
        assert ha.counters["har"] == 2
        registration = keyed
        ha.request(ha_request(FA1, asked.profile.epoch, asked.profile.session_id), time.time(), tag="keys from HAR")
        keyed_event = ha.next_event()
        assert isinstance(keyed_event, RequestAccepted) and keyed_event.tag == "keys from HAR"
        mn_ha = keyed_event.mn_ha_key
        assert mn_ha is not None and mn_ha.spi == MN_HA_KEY_SPI and mn_ha.replay_method == d.REPLAY_TIMESTAMPS
        assert mn_ha.key.value == hmac.new(MN_AAA.value, mn_ha.nonce + NAI.encode(), hashlib.sha1).digest()
        assert asked.mn_fa_key is not None and asked.mn_fa_key.nonce != mn_ha.nonce

        # A HAR without User-Name is answered 5005; another command 3001.
        bad = Message(
            Command.HOME_AGENT_MIP, True, d.MOBILE_IPV4_APPLICATION,
            avps=(d.avp_text(C.SESSION_ID, "x"), d.avp_text(C.ORIGIN_HOST, HOME_HOST),
                  d.avp_text(C.ORIGIN_REALM, "home.example"), d.avp_text(C.DESTINATION_REALM, nai_realm(NAI)),
                  d.avp_text(C.DESTINATION_HOST, HA_HOST), d.avp_u32(C.AUTH_APPLICATION_ID, 2)),
        )  # fmt: skip
        got: list[object] = []
        server.node.send_request(bad, time.time(), tag=("test", 1))
        server.node.send_request(dataclasses.replace(bad, command=Command.RE_AUTH), time.time(), tag=("test", 2))
        server.transport.on_event = lambda event: got.append(event)
        server.transport.pump()
        answers = await wait_for(lambda: len(got) >= 2 and got, 10, "the HAAs")
        codes = sorted(e.message.result_code for e in answers if hasattr(e, "message"))
        assert codes == [3001, 5005], codes
        await fa.transport.close()
        await ha_transport.close()
        await server.transport.close()

    run(main)
