"""RFC 4004 at the home AAA (roles/diameter_home.py, net/diameter_server.py)
over loopback TCP: an FA's AMR is decided by the same role and store as
RADIUS, the AMA carries the addresses, the MSA, the VPN profile; renewals,
push, STR/ASR; every refusal with its Result-Code; a HAR to a Diameter home
agent; and an independent client (python-diameter) end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import socket
import struct
import time
from ipaddress import IPv4Address
from pathlib import Path

from aaa_vpn.lab.topology import HOME_ADDRESS, NAI
from aaa_vpn.roles import diameter_peer as peer
from aaa_vpn.secret import Secret
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire import mip
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter import ResultCode
from aaa_vpn.wire.diameter_profile import decode_profile_avps
from aaa_vpn.wire.profile import PathRole
from tests.diameter_lab import (
    ALL_KEYS,
    FA_HOST,
    HA_HOST,
    HOME_HOST,
    MN_FA_KEY_SPI,
    MN_HA_KEY_SPI,
    Client,
    amr,
    home_service,
    rrq,
    run,
    start_home,
    wait_for,
)
from tests.mobility import FA1, HA, MN_AAA


def test_registration_renewal_push_and_str() -> None:
    async def main() -> None:
        aaa = home_service()
        server, port = await start_home(aaa)
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await fa.connect(port)

        ama = await fa.ask(amr("fa;1"))
        assert ama.result_code == ResultCode.SUCCESS, ama.text(C.ERROR_MESSAGE)
        assert ama.session_id == "fa;1" and ama.origin_host == HOME_HOST
        assert ama.find(C.MIP_HOME_AGENT_ADDRESS).as_ipv4() == IPv4Address(HA)  # type: ignore[union-attr]
        assert ama.find(C.MIP_MOBILE_NODE_ADDRESS).as_ipv4() == IPv4Address(HOME_ADDRESS)  # type: ignore[union-attr]
        msa = {a.code: a for a in ama.find(C.MIP_FA_TO_HA_MSA).as_grouped()}  # type: ignore[union-attr]
        assert msa[C.MIP_ALGORITHM_TYPE].as_u32() == d.ALGORITHM_HMAC_SHA1
        profile = decode_profile_avps(ama.avps)
        assert msa[C.MIP_FA_TO_HA_SPI].as_u32() == profile.fa_ha_spi
        assert Secret(msa[C.MIP_SESSION_KEY].value) == profile.fa_ha_key
        assert ama.u32(C.MIP_MSA_LIFETIME) == profile.lifetime == ama.u32(C.AUTHORIZATION_LIFETIME)
        assert profile.care_of_address == IPv4Address(FA1) and profile.session_root_key is None  # the FA's view
        assert {p.role for p in profile.paths} >= {PathRole.FA_HA}
        assert d.unknown_mandatory(ama.avps, d.AVPS) is None  # every M-bit AVP is RFC 4004/6733's
        # The session is the store's, as with RADIUS.
        [stored] = aaa.store.find_sessions(NAI)
        assert stored.session_id == profile.session_id == ama.text(C.ACCT_MULTI_SESSION_ID)
        assert stored.care_of_address == IPv4Address(FA1)

        # A re-registration on the same Diameter session renews that session.
        again = await fa.ask(amr("fa;1"))
        assert again.result_code == ResultCode.SUCCESS
        assert decode_profile_avps(again.avps).session_id == profile.session_id
        assert [s.session_id for s in aaa.store.find_sessions(NAI)] == [profile.session_id]

        # A new Session-Id (the front end restarted, say) whose Class names the session: still a renewal.
        named = amr("fa;other")
        named = dataclasses.replace(named, avps=(*named.avps, d.avp_octets(C.CLASS, profile.session_id.encode())))
        third = await fa.ask(named)
        assert third.result_code == ResultCode.SUCCESS
        assert decode_profile_avps(third.avps).session_id == profile.session_id
        assert [s.session_id for s in aaa.store.find_sessions(NAI)] == [profile.session_id]

        # The operator pushes it like any other session: the next epoch, CoA-Requests to its agents.
        pushed = aaa.push(profile.session_id, time.time())
        assert pushed.session is not None and pushed.session.epoch == stored.epoch + 1
        assert {t.role for t, _ in pushed.requests} == {"fa", "ha"}

        # STR ends it.
        sta = await fa.ask(_str("fa;1"))
        assert sta.result_code == ResultCode.SUCCESS
        assert aaa.store.find_sessions(NAI) == []
        sta = await fa.ask(_str("fa;1"))
        assert sta.result_code == ResultCode.UNKNOWN_SESSION_ID
        await fa.transport.close()
        await server.transport.close()

    run(main)


def _str(session_id: str) -> d.Message:
    return d.Message(
        d.Command.SESSION_TERMINATION,
        True,
        d.MOBILE_IPV4_APPLICATION,
        avps=(
            d.avp_text(C.SESSION_ID, session_id),
            d.avp_text(C.ORIGIN_HOST, FA_HOST),
            d.avp_text(C.ORIGIN_REALM, "visited.example"),
            d.avp_text(C.DESTINATION_REALM, "home.example"),
            d.avp_u32(C.AUTH_APPLICATION_ID, 2),
            d.avp_u32(C.TERMINATION_CAUSE, d.TERMINATION_LOGOUT),
        ),
        proxiable=True,
    )


def test_refusals() -> None:
    async def main() -> None:
        aaa = home_service()
        server, port = await start_home(aaa)
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await fa.connect(port)
        wrong_key = rrq(secret=Secret(b"not-the-mn-aaa-key"))
        cases = {
            "wrong MN-AAA key": (amr("s1", wrong_key), ResultCode.AUTHENTICATION_REJECTED),
            "unknown user": (amr("s2", rrq(nai="nobody@home.example"), nai="nobody@home.example"), 4001),
            "no MIP-MN-AAA-Auth": (amr("s3", drop=C.MIP_MN_AAA_AUTH), ResultCode.MISSING_AVP),
            "not an RRQ": (amr("s4", b"\x03" + bytes(23), auth_of=rrq()), ResultCode.INVALID_AVP_VALUE),
            "care-of not this FA's": (amr("s5", rrq(care_of="192.0.2.99")), ResultCode.AUTHORIZATION_REJECTED),
        }
        for name, (request, code) in cases.items():
            answer = await fa.ask(request)
            assert answer.result_code == code, (name, answer.result_code, answer.text(C.ERROR_MESSAGE))
            assert not any(a.vendor for a in answer.avps), name  # no profile, no keys
        missing = await fa.ask(amr("s6", drop=C.MIP_MN_AAA_AUTH))
        failed = missing.find(C.FAILED_AVP)
        assert failed is not None and failed.as_grouped()[0].code == C.MIP_MN_AAA_AUTH
        # Wrong description of the MN-AAA extension: 5004 naming MIP-MN-AAA-Auth.
        request = rrq()
        bad = d.avp_grouped(
            C.MIP_MN_AAA_AUTH, [d.avp_u32(C.MIP_MN_AAA_SPI, 2), d.avp_u32(C.MIP_AUTHENTICATOR_OFFSET, 3)]
        )
        good = amr("s7", request)
        odd = dataclasses.replace(good, avps=tuple(bad if a.code == C.MIP_MN_AAA_AUTH else a for a in good.avps))
        answer = await fa.ask(odd)
        assert answer.result_code == ResultCode.INVALID_AVP_VALUE
        assert answer.find(C.FAILED_AVP).as_grouped()[0].code == C.MIP_MN_AAA_AUTH  # type: ignore[union-attr]
        assert aaa.store.find_sessions(NAI) == []
        await fa.transport.close()
        await server.transport.close()

    run(main)


def test_no_keys_over_an_unprotected_connection_5025() -> None:
    async def main() -> None:
        aaa = home_service()
        server, port = await start_home(aaa, plain_is_secure=False)
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await fa.connect(port)
        answer = await fa.ask(amr("fa;1"))
        assert answer.result_code == ResultCode.END_TO_END_MIP_KEY_ENCRYPTION
        assert aaa.store.find_sessions(NAI) == []  # nothing decided, nothing stored
        await fa.transport.close()
        await server.transport.close()

    run(main)


def test_unknown_peer_refused_3010() -> None:
    async def main() -> None:
        server, port = await start_home()
        stranger = Client("stranger.example", routes={"home.example": [HOME_HOST]})
        await stranger.transport.connect("127.0.0.1", port)
        await wait_for(lambda: stranger.node.counters["peer_down.refused"], what="refused")
        assert server.node.counters["dropped.refused"] == 1
        await server.transport.close()

    run(main)


def test_operator_disconnect_sends_asr() -> None:
    async def main() -> None:
        aaa = home_service()
        server, port = await start_home(aaa)
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await fa.connect(port)
        ama = await fa.ask(amr("fa;asr"))
        session_id = decode_profile_avps(ama.avps).session_id
        assert server.check_sessions(0.0) == 0
        aaa.store.delete_session(session_id)  # what `aaa-vpn session delete` does
        assert server.check_sessions(0.0) == 1
        asr = await wait_for(lambda: fa.requests, what="ASR")
        assert [(m.command, m.session_id, m.text(C.USER_NAME)) for m in asr] == [(274, "fa;asr", NAI)]
        await fa.transport.close()
        await server.transport.close()

    run(main)


def test_home_agent_over_diameter_har_haa() -> None:
    async def main() -> None:
        aaa = home_service()
        server, port = await start_home(aaa)
        seen: list[d.Message] = []

        def answer_har(event: peer.RequestReceived, node: peer.DiameterNode) -> None:
            seen.append(event.message)
            request = mip.decode_message(event.message.find(C.MIP_REG_REQUEST).value)  # type: ignore[union-attr]
            assert isinstance(request, mip.RegistrationRequest)
            reply = mip.encode_message(
                mip.RegistrationReply(
                    code=mip.ReplyCode.ACCEPTED,
                    lifetime=request.lifetime,
                    home_address=request.home_address,
                    home_agent=request.home_agent,
                    identification=request.identification,
                )
            )
            node.answer(
                event.handle,
                peer.answer_to(event.message, node.identity, 2001, [d.avp_octets(C.MIP_REG_REPLY, reply)]),
                0.0,
            )

        ha = Client(HA_HOST, realm="home.example", on_request=answer_har)
        await ha.connect(port)
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await fa.connect(port)
        ama = await fa.ask(amr("fa;har"))
        assert ama.result_code == ResultCode.SUCCESS, ama.text(C.ERROR_MESSAGE)
        [har] = seen
        assert har.command == d.Command.HOME_AGENT_MIP and har.text(C.DESTINATION_HOST) == HA_HOST
        ha_view = decode_profile_avps(har.avps)
        fa_view = decode_profile_avps(ama.avps)
        assert ha_view.session_id == fa_view.session_id and ha_view.session_root_key is not None
        ha_msa = {a.code: a for a in har.find(C.MIP_HA_TO_FA_MSA).as_grouped()}  # type: ignore[union-attr]
        assert Secret(ha_msa[C.MIP_SESSION_KEY].value) == fa_view.fa_ha_key
        reply = mip.decode_message(ama.find(C.MIP_REG_REPLY).value)  # type: ignore[union-attr]
        assert isinstance(reply, mip.RegistrationReply) and reply.code == mip.ReplyCode.ACCEPTED
        await fa.transport.close()
        await ha.transport.close()
        await server.transport.close()

    run(main)


# --- keys for the mobile node (RFC 4004 section 9, RFC 3957; rule 10) -------------------------


def _group(message: d.Message, code: int) -> dict[int, d.Avp]:
    avp = message.find(code)
    assert avp is not None, f"no {d.AVPS[(0, code)].name} in the {message.name}"
    return {a.code: a for a in avp.as_grouped()}


def _rfc3957_key(nonce: bytes) -> bytes:
    # RFC 3957 section 5, recomputed here with the standard library: HMAC-SHA1(AAA-key, nonce || NAI).
    return hmac.new(MN_AAA.value, nonce + NAI.encode(), hashlib.sha1).digest()


def test_mn_fa_key_from_a_home_nonce() -> None:
    async def main() -> None:
        server, port = await start_home()
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await fa.connect(port)
        ama = await fa.ask(amr("fa;keys", rrq(keys=True), features=ALL_KEYS))
        assert ama.result_code == ResultCode.SUCCESS, ama.text(C.ERROR_MESSAGE)
        for_node = _group(ama, C.MIP_MN_TO_FA_MSA)
        for_fa = _group(ama, C.MIP_FA_TO_MN_MSA)
        nonce = for_node[C.MIP_NONCE].value
        assert len(nonce) == 16
        assert for_node[C.MIP_MN_AAA_SPI].as_u32() == 2  # the AAA SPI: the request's MN-AAA (CHAP_SPI)
        assert for_node[C.MIP_ALGORITHM_TYPE].as_u32() == d.ALGORITHM_HMAC_SHA1
        assert C.MIP_SESSION_KEY not in for_node  # the node gets the nonce, never the key
        assert for_fa[C.MIP_FA_TO_MN_SPI].as_u32() == MN_FA_KEY_SPI
        assert for_fa[C.MIP_SESSION_KEY].value == _rfc3957_key(nonce)
        assert _rfc3957_key(nonce).hex() not in repr(ama) and _rfc3957_key(nonce).hex() not in repr(for_fa)
        assert ama.u32(C.MIP_MSA_LIFETIME) == decode_profile_avps(ama.avps).lifetime
        # No Diameter HA here: nobody could hand the HA an MN-HA key, so none is made.
        assert ama.find(C.MIP_MN_TO_HA_MSA) is None and ama.find(C.MIP_HA_TO_MN_MSA) is None
        assert d.unknown_mandatory(ama.avps, d.AVPS) is None
        assert server.counters["diameter.keys.mn_fa"] == 1 and "diameter.keys.mn_ha" not in server.counters

        # A renewal gets a fresh nonce and so a fresh key.
        again = await fa.ask(amr("fa;keys", rrq(keys=True), features=ALL_KEYS))
        fresh = _group(again, C.MIP_MN_TO_FA_MSA)[C.MIP_NONCE].value
        assert fresh != nonce
        assert _group(again, C.MIP_FA_TO_MN_MSA)[C.MIP_SESSION_KEY].value == _rfc3957_key(fresh)

        # Only when both the feature vector and the request ask.
        unasked = await fa.ask(amr("fa;keys", rrq(keys=True)))
        no_extension = await fa.ask(amr("fa;keys", rrq(), features=ALL_KEYS))
        for answer in (unasked, no_extension):
            assert answer.result_code == ResultCode.SUCCESS
            assert answer.find(C.MIP_MN_TO_FA_MSA) is None and answer.find(C.MIP_FA_TO_MN_MSA) is None
        # A wrong MN-AAA proof gets no key (4001, nothing but the error).
        refused = await fa.ask(amr("fa;bad", rrq(keys=True, secret=Secret(b"wrong")), features=ALL_KEYS))
        assert refused.result_code == ResultCode.AUTHENTICATION_REJECTED
        assert refused.find(C.MIP_FA_TO_MN_MSA) is None
        await fa.transport.close()
        await server.transport.close()

    run(main)


def test_mn_ha_key_goes_to_the_ha_in_the_har() -> None:
    async def main() -> None:
        server, port = await start_home()
        seen: list[d.Message] = []

        def answer_har(event: peer.RequestReceived, node: peer.DiameterNode) -> None:
            seen.append(event.message)
            node.answer(event.handle, peer.answer_to(event.message, node.identity, 2001), 0.0)

        ha = Client(HA_HOST, realm="home.example", on_request=answer_har)
        await ha.connect(port)
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await fa.connect(port)
        ama = await fa.ask(amr("fa;ha-keys", rrq(keys=True), features=ALL_KEYS))
        assert ama.result_code == ResultCode.SUCCESS, ama.text(C.ERROR_MESSAGE)
        [har] = seen
        nonce_for_node = _group(har, C.MIP_MN_TO_HA_MSA)
        key_for_ha = _group(har, C.MIP_HA_TO_MN_MSA)
        nonce = nonce_for_node[C.MIP_NONCE].value
        assert nonce_for_node[C.MIP_MN_HA_SPI].as_u32() == MN_HA_KEY_SPI
        assert nonce_for_node[C.MIP_MN_AAA_SPI].as_u32() == 2
        assert nonce_for_node[C.MIP_REPLAY_MODE].as_u32() == d.REPLAY_TIMESTAMPS
        assert key_for_ha[C.MIP_SESSION_KEY].value == _rfc3957_key(nonce)
        assert key_for_ha[C.MIP_REPLAY_MODE].as_u32() == d.REPLAY_TIMESTAMPS
        # The HA learns no MN-FA key; the AMA names the same MN-HA nonce but carries no MN-HA key.
        assert har.find(C.MIP_FA_TO_MN_MSA) is None and har.find(C.MIP_MN_TO_FA_MSA) is None
        assert _group(ama, C.MIP_MN_TO_HA_MSA)[C.MIP_NONCE].value == nonce
        assert ama.find(C.MIP_HA_TO_MN_MSA) is None
        fa_nonce = _group(ama, C.MIP_MN_TO_FA_MSA)[C.MIP_NONCE].value
        assert fa_nonce != nonce  # a nonce per key
        assert _group(ama, C.MIP_FA_TO_MN_MSA)[C.MIP_SESSION_KEY].value == _rfc3957_key(fa_nonce)
        assert server.counters["diameter.keys.mn_ha"] == 1
        await fa.transport.close()
        await ha.transport.close()
        await server.transport.close()

    run(main)


# --- an independent client: python-diameter --------------------------------------------------


def _read_message(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 4:
        head += sock.recv(4 - len(head))
    length = struct.unpack("!I", b"\x00" + head[1:4])[0]
    body = head
    while len(body) < length:
        body += sock.recv(length - len(body))
    return body


def test_python_diameter_client_end_to_end() -> None:
    from diameter.message import Message as PdMessage
    from diameter.message.commands import AaMobileNodeAnswer, AaMobileNodeRequest, CapabilitiesExchangeRequest
    from diameter.message.commands.aa_mobile_node import MipMnAaaAuth

    async def main() -> None:
        server, port = await start_home()

        def client() -> AaMobileNodeAnswer:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                cer = CapabilitiesExchangeRequest()
                cer.header.hop_by_hop_identifier = 1
                cer.header.end_to_end_identifier = 1
                cer.origin_host = FA_HOST.encode()
                cer.origin_realm = b"visited.example"
                cer.host_ip_address = "127.0.0.1"
                cer.vendor_id = 0
                cer.product_name = "python-diameter"
                cer.auth_application_id = 2
                sock.sendall(cer.as_bytes())
                cea = PdMessage.from_bytes(_read_message(sock))
                assert cea.result_code == 2001
                request = rrq()
                proof_avp = amr("x", request).find(C.MIP_MN_AAA_AUTH)
                values = {a.code: a.as_u32() for a in proof_avp.as_grouped()}  # type: ignore[union-attr]
                message = AaMobileNodeRequest()
                message.header.application_id = 2
                message.header.hop_by_hop_identifier = 2
                message.header.end_to_end_identifier = 2
                message.session_id = f"{FA_HOST};pd;1"
                message.auth_application_id = 2
                message.user_name = NAI
                message.destination_realm = b"home.example"
                message.origin_host = FA_HOST.encode()
                message.origin_realm = b"visited.example"
                message.mip_reg_request = request
                message.mip_mn_aaa_auth = MipMnAaaAuth(
                    mip_mn_aaa_spi=values[C.MIP_MN_AAA_SPI],
                    mip_auth_input_data_length=values[C.MIP_AUTH_INPUT_DATA_LENGTH],
                    mip_authenticator_length=values[C.MIP_AUTHENTICATOR_LENGTH],
                    mip_authenticator_offset=values[C.MIP_AUTHENTICATOR_OFFSET],
                )
                sock.sendall(message.as_bytes())
                answer = PdMessage.from_bytes(_read_message(sock))
                assert isinstance(answer, AaMobileNodeAnswer)
                return answer

        answer = await asyncio.get_running_loop().run_in_executor(None, client)
        assert answer.result_code == 2001
        assert answer.session_id == f"{FA_HOST};pd;1"
        assert answer.header.hop_by_hop_identifier == 2 and answer.header.end_to_end_identifier == 2
        assert answer.mip_home_agent_address == (1, HA)
        assert answer.mip_mobile_node_address == (1, str(HOME_ADDRESS))
        assert answer.mip_fa_to_ha_msa.mip_algorithm_type == d.ALGORITHM_HMAC_SHA1
        assert len(answer.mip_fa_to_ha_msa.mip_session_key) > 0
        assert answer.mip_msa_lifetime > 0
        await server.transport.close()

    run(main)


def test_bad_peers_get_protocol_answers_and_the_server_carries_on() -> None:
    async def main() -> None:
        aaa = home_service()
        server, port = await start_home(aaa)
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await fa.connect(port)
        # An AVP with the M bit nobody defined: 5001 with the AVP in a Failed-AVP.
        odd = d.Avp(9999, b"\x00\x00\x00\x01", mandatory=True)
        base = amr("bad;1")
        answer = await fa.ask(dataclasses.replace(base, avps=(*base.avps, odd)))
        assert answer.result_code == ResultCode.AVP_UNSUPPORTED
        assert answer.find(C.FAILED_AVP).as_grouped() == (odd,)  # type: ignore[union-attr]
        # Another application: 3007 with the E bit.
        answer = await fa.ask(dataclasses.replace(base, application=4))
        assert answer.result_code == ResultCode.APPLICATION_UNSUPPORTED and answer.error
        # A command of application 2 it does not serve (HAR to the home AAA): 3001.
        answer = await fa.ask(dataclasses.replace(base, command=d.Command.HOME_AGENT_MIP))
        assert answer.result_code == ResultCode.COMMAND_UNSUPPORTED
        # A malformed AVP (its Length runs past the message) on a raw connection: 5014.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        cer = d.Message(
            d.Command.CAPABILITIES_EXCHANGE,
            True,
            avps=(
                d.avp_text(C.ORIGIN_HOST, "c-127-0-0-2"),  # the HA's client name: a known peer
                d.avp_text(C.ORIGIN_REALM, "home.example"),
                d.avp_address(C.HOST_IP_ADDRESS, IPv4Address("127.0.0.1")),
                d.avp_u32(C.VENDOR_ID, 0),
                d.avp_text(C.PRODUCT_NAME, "raw"),
                d.avp_u32(C.AUTH_APPLICATION_ID, 2),
            ),
        )
        writer.write(cer.encode())
        cea = d.decode_message(await _read(reader))
        assert cea.result_code == ResultCode.SUCCESS
        wire = bytearray(dataclasses.replace(amr("bad;2"), hop_by_hop=77).encode())
        wire[20 + 5 : 20 + 8] = (500).to_bytes(3, "big")
        writer.write(bytes(wire))
        answer = d.decode_message(await _read(reader))
        assert (answer.hop_by_hop, answer.result_code) == (77, ResultCode.INVALID_AVP_LENGTH)
        # A stream that cannot be framed: the connection is closed, the server lives on.
        writer.write(b"\x01\x00\x00\x07garbage")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        good = await fa.ask(amr("good;1"))
        assert good.result_code == ResultCode.SUCCESS
        assert server.node.counters["dropped.framing"] == 1 and server.node.counters["avp_unsupported"] == 1
        await fa.transport.close()
        await server.transport.close()

    run(main)


async def _read(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readexactly(4), 10)
    return head + await reader.readexactly(int.from_bytes(head[1:4], "big") - 4)


def test_over_tls_keys_are_sent(tmp_path: Path) -> None:
    import ssl

    from aaa_vpn.net.diameter_server import DiameterHomeServer, DiameterOptions
    from tests.diameter_lab import certificates

    ca, (server_key, server_cert), (client_key, client_cert) = certificates(tmp_path, HOME_HOST, FA_HOST)

    async def main() -> None:
        aaa = home_service()
        options = DiameterOptions(
            HOME_HOST, "home.example", "127.0.0.1", 0,
            tls_cert=str(server_cert), tls_key=str(server_key), tls_ca=str(ca[1]),
        )  # fmt: skip
        server = DiameterHomeServer(aaa, options)
        listener = await server.start()
        port = listener.sockets[0].getsockname()[1]
        context = ssl.create_default_context(cafile=str(ca[1]))
        context.load_cert_chain(str(client_cert), str(client_key))
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await fa.transport.connect("127.0.0.1", port, tls=context)
        await asyncio.wait_for(fa.up.wait(), 10)
        ama = await fa.ask(amr("tls;1"))
        assert ama.result_code == ResultCode.SUCCESS, ama.text(C.ERROR_MESSAGE)  # TLS: keys may go
        assert decode_profile_avps(ama.avps).fa_ha_key is not None
        await fa.transport.close()
        await server.transport.close()

    run(main)


def test_sessions_past_their_lifetime_are_forgotten_without_asr() -> None:
    from aaa_vpn.roles.diameter_home import DiameterHome, DiameterSession

    home = DiameterHome(d.Identity(HOME_HOST, "home.example"), lambda: [], lambda n: bytes(n))
    home.sessions["a"] = DiameterSession("a", "s-a", NAI, FA_HOST, "visited.example", "relay", expires=100.0)
    home.sessions["b"] = DiameterSession("b", "s-b", NAI, FA_HOST, "visited.example", "relay", expires=300.0)
    home.sessions["c"] = DiameterSession("c", "s-c", NAI, FA_HOST, "visited.example", "relay", expires=300.0)
    gone = {"s-a", "s-b"}  # a expired (the store dropped it), b the operator ended, c lives
    asrs = home.ended(200.0, lambda session_id: session_id in gone)
    assert [(m.command, m.session_id, m.text(C.DESTINATION_HOST)) for m in asrs] == [(274, "b", FA_HOST)]
    assert list(home.sessions) == ["c"]


def test_a_bug_costs_one_request_answered_5012() -> None:
    async def main() -> None:
        aaa = home_service()
        server, port = await start_home(aaa)
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await fa.connect(port)
        original = server.home.amr

        def broken(*args: object) -> object:
            raise RuntimeError("a bug")

        server.home.amr = broken  # type: ignore[method-assign,assignment]
        answer = await fa.ask(amr("bug;1"))
        assert answer.result_code == ResultCode.UNABLE_TO_COMPLY
        server.home.amr = original  # type: ignore[method-assign]
        answer = await fa.ask(amr("bug;1"))  # the same Session-Id, a new End-to-End: decided
        assert answer.result_code == ResultCode.SUCCESS
        await fa.transport.close()
        await server.transport.close()

    run(main)


def test_over_tls_the_origin_host_must_be_the_certificates(tmp_path: Path) -> None:
    """RFC 6733 section 13: the FA's certificate names FA_HOST; a CER claiming
    another known peer (the HA) over it is refused 3010, its own is accepted."""
    import ssl

    from aaa_vpn.net.diameter_server import DiameterHomeServer, DiameterOptions
    from tests.diameter_lab import HA_HOST, certificates

    ca, (server_key, server_cert), (client_key, client_cert) = certificates(tmp_path, HOME_HOST, FA_HOST)

    async def main() -> None:
        options = DiameterOptions(
            HOME_HOST, "home.example", "127.0.0.1", 0,
            tls_cert=str(server_cert), tls_key=str(server_key), tls_ca=str(ca[1]),
        )  # fmt: skip
        server = DiameterHomeServer(home_service(), options)
        port = (await server.start()).sockets[0].getsockname()[1]
        context = ssl.create_default_context(cafile=str(ca[1]))
        context.load_cert_chain(str(client_cert), str(client_key))
        impostor = Client(HA_HOST, routes={"home.example": [HOME_HOST]})
        await impostor.transport.connect("127.0.0.1", port, tls=context, server_hostname=HOME_HOST)
        await wait_for(lambda: impostor.node.counters["peer_down.refused"], 10, "the refusal")
        assert server.node.counters["dropped.refused"] == 1 and not server.node.peers()
        honest = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await honest.transport.connect("127.0.0.1", port, tls=context, server_hostname=HOME_HOST)
        await asyncio.wait_for(honest.up.wait(), 10)
        assert [p.host for p in server.node.peers()] == [FA_HOST]
        await honest.transport.close()
        await server.transport.close()

    run(main)


def test_an_amr_relayed_by_the_foreign_aaa_is_decided_as_its_request() -> None:
    """roles/diameter_home.py rule 2: the foreign AAA's proxied AMR (Origin-Host
    an FA of the visited domain the home AAA does not know, a Route-Record
    naming it, the connection the foreign AAA's) is decided as a request of
    client c-127-0-0-3 (role foreign-aaa): the answer carries the session
    root key. Without the Route-Record, or through a peer of another role,
    the FA must be a client here itself (5003)."""
    from tests.mobility import AAAF

    aaaf_host, visited_fa = f"c-{AAAF.replace('.', '-')}", "fa-visited-1"

    async def main() -> None:
        aaa = home_service()
        server, port = await start_home(aaa)
        aaaf = Client(aaaf_host, routes={"home.example": [HOME_HOST]})
        fa = Client(FA_HOST, routes={"home.example": [HOME_HOST]})
        await aaaf.connect(port)
        await fa.connect(port)
        relayed = amr("fa-visited-1;1", origin=visited_fa)
        relayed = dataclasses.replace(relayed, avps=(*relayed.avps, d.avp_text(C.ROUTE_RECORD, visited_fa)))
        ama = await aaaf.ask(relayed)
        assert ama.result_code == ResultCode.SUCCESS, ama.text(C.ERROR_MESSAGE)
        profile = decode_profile_avps(ama.avps)
        assert profile.session_root_key is not None and profile.care_of_address == IPv4Address(FA1)
        [stored] = aaa.store.find_sessions(NAI)
        assert stored.session_id == profile.session_id and stored.session_root_key == profile.session_root_key
        assert stored.care_of_address == IPv4Address(FA1)
        # Not relayed (no Route-Record): the Origin-Host must be an FA of ours.
        direct = await aaaf.ask(amr("fa-visited-1;2", origin=visited_fa))
        assert direct.result_code == ResultCode.AUTHORIZATION_REJECTED
        # Relayed by a peer that is an FA, not a foreign AAA: the same.
        through_fa = await fa.ask(relayed)
        assert through_fa.result_code == ResultCode.AUTHORIZATION_REJECTED
        await aaaf.transport.close()
        await fa.transport.close()
        await server.transport.close()

    run(main)
