"""RFC test vectors and independent checks for aaa_vpn.wire.radius.

* RFC 2865 section 7.1 and 7.2: the example packets (shared secret
  "xyzzy5461"), byte for byte: User-Password hiding (section 5.2) and the
  Response Authenticator (section 3).
* RFC 2868 section 3.5: the salt scheme, against an implementation written
  here straight from the RFC's formulas and against pyrad's SaltDecrypt.
* RFC 3579 section 3.2: Message-Authenticator, against a plain HMAC-MD5
  computed here and against pyrad.
"""

from __future__ import annotations

import hashlib
import hmac

import pyrad.packet
import pytest

from aaa_vpn.wire.radius import (
    compute_message_authenticator,
    encode_reply,
    hide_user_password,
    load_dictionary,
    recover_user_password,
    response_authenticator,
    salt_decrypt,
    salt_encrypt,
    verify_message_authenticator,
)

RFC2865_SECRET = b"xyzzy5461"

# RFC 2865 section 7.1 "User Telnet to Specified Host": Access-Request from
# NAS 192.168.1.16 port 3 for user "nemo", password "arctangent".
RFC2865_7_1_REQUEST = bytes.fromhex(
    "01 00 00 38 0f 40 3f 94 73 97 80 57 bd 83 d5 cb"
    "98 f4 22 7a 01 06 6e 65 6d 6f 02 12 0d be 70 8d"
    "93 d4 13 ce 31 96 e4 3f 78 2a 0a ee 04 06 c0 a8"
    "01 10 05 06 00 00 00 03"
)
# ... and its Access-Accept: Service-Type Login, Login-Service Telnet,
# Login-IP-Host 192.168.1.3.
RFC2865_7_1_ACCEPT = bytes.fromhex(
    "02 00 00 26 86 fe 22 0e 76 24 ba 2a 10 05 f6 bf9b 55 e0 b2 06 06 00 00 00 01 0f 06 00 00 00 000e 06 c0 a8 01 03"
)
# RFC 2865 section 7.2 "Framed User Authenticating with CHAP": user "flopsy".
RFC2865_7_2_REQUEST = bytes.fromhex(
    "01 01 00 47 2a ee 86 f0 8d 0d 55 96 9c a5 97 8e"
    "0d 33 67 a2 01 08 66 6c 6f 70 73 79 03 13 16 e9"
    "75 57 c3 16 18 58 95 f2 93 ff 63 44 07 72 75 04"
    "06 c0 a8 01 10 05 06 00 00 00 14 06 06 00 00 00"
    "02 07 06 00 00 00 01"
)
# ... and its Access-Accept (Framed-User, PPP, 255.255.255.254, Framed-Routing,
# Van Jacobson compression, MTU 1500; the RFC's prose and dump disagree on
# Service-Type, erratum 1469: the dump is what is hashed).
RFC2865_7_2_ACCEPT = bytes.fromhex(
    "02 01 00 38 15 ef bc 7d ab 26 cf a3 dc 34 d9 c0"
    "3c 86 01 a4 06 06 00 00 00 02 07 06 00 00 00 01"
    "08 06 ff ff ff fe 0a 06 00 00 00 02 0d 06 00 00"
    "00 01 0c 06 00 00 05 dc"
)


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def test_rfc2865_7_1_user_password_hiding() -> None:
    authenticator = RFC2865_7_1_REQUEST[4:20]
    # Attribute 2 (User-Password) starts at offset 26: type 02, length 0x12.
    assert RFC2865_7_1_REQUEST[26:28] == b"\x02\x12"
    hidden = RFC2865_7_1_REQUEST[28:44]
    assert recover_user_password(hidden, RFC2865_SECRET, authenticator) == b"arctangent"
    ours = hide_user_password(b"arctangent", RFC2865_SECRET, authenticator)
    assert ours == hidden, f"User-Password: expected {_hex(hidden)}, got {_hex(ours)}"
    # pyrad agrees (independent implementation of section 5.2)
    pkt = pyrad.packet.AuthPacket(secret=RFC2865_SECRET, authenticator=authenticator)
    assert pkt.PwCrypt(b"arctangent") == hidden


@pytest.mark.parametrize(
    ("request_packet", "reply"),
    [
        (RFC2865_7_1_REQUEST, RFC2865_7_1_ACCEPT),
        (RFC2865_7_2_REQUEST, RFC2865_7_2_ACCEPT),
    ],
    ids=["7.1", "7.2"],
)
def test_rfc2865_response_authenticator(request_packet: bytes, reply: bytes) -> None:
    got = response_authenticator(reply, request_packet[4:20], RFC2865_SECRET)
    assert got == reply[4:20], f"Response Authenticator: expected {_hex(reply[4:20])}, got {_hex(got)}"


# --- RFC 2868 section 3.5 -------------------------------------------------------------------


def rfc2868_encrypt(secret: bytes, ra: bytes, salt: bytes, password: bytes) -> bytes:
    """RFC 2868 section 3.5, written from the RFC text with no shared code:

    P = Data-Length || Password, padded with zeros to a multiple of 16;
    b(1) = MD5(S + R + A), c(1) = p(1) xor b(1);
    b(i) = MD5(S + c(i-1)), c(i) = p(i) xor b(i); String = c(1) + ... + c(n).
    """
    p = bytes([len(password)]) + password
    while len(p) % 16:
        p += b"\x00"
    c: list[bytes] = []
    for i in range(len(p) // 16):
        b = hashlib.md5(secret + (ra + salt if i == 0 else c[i - 1])).digest()
        c.append(bytes(x ^ y for x, y in zip(p[16 * i : 16 * i + 16], b, strict=True)))
    return salt + b"".join(c)


SECRET = b"testing123-shared-secret"
RA = bytes(range(0xA0, 0xB0))
SALT = b"\x85\x3c"


@pytest.mark.parametrize("length", [0, 1, 15, 16, 31, 32, 47, 64, 200, 239])
def test_salt_encrypt_matches_rfc_formula(length: int) -> None:
    value = bytes((i * 7 + 3) & 0xFF for i in range(length))
    expected = rfc2868_encrypt(SECRET, RA, SALT, value)
    got = salt_encrypt(value, SECRET, RA, SALT)
    assert got == expected, f"salt-encrypted {length} octets: expected {_hex(expected)}, got {_hex(got)}"
    assert len(got) == 2 + 16 * ((length + 1 + 15) // 16)
    assert salt_decrypt(got, SECRET, RA) == value


def test_salt_encrypt_three_blocks_by_hand() -> None:
    # 40 octets of value -> 41 octets of plaintext -> 3 blocks. Each block
    # checked separately so a failure names the block.
    value = b"0123456789abcdefghijklmnopqrstuvwxyzABCD"
    got = salt_encrypt(value, SECRET, RA, SALT)
    assert got[:2] == SALT
    c1, c2, c3 = got[2:18], got[18:34], got[34:50]
    p = bytes([40]) + value + b"\x00" * 7
    b1 = hashlib.md5(SECRET + RA + SALT).digest()
    assert c1 == bytes(x ^ y for x, y in zip(p[:16], b1, strict=True)), "block 1"
    b2 = hashlib.md5(SECRET + c1).digest()
    assert c2 == bytes(x ^ y for x, y in zip(p[16:32], b2, strict=True)), "block 2 chains on c1"
    b3 = hashlib.md5(SECRET + c2).digest()
    assert c3 == bytes(x ^ y for x, y in zip(p[32:48], b3, strict=True)), "block 3 chains on c2"


@pytest.mark.parametrize("length", [1, 16, 32, 64, 239])
def test_salt_scheme_against_pyrad(length: int) -> None:
    value = bytes((i * 13 + 1) & 0xFF for i in range(length))
    pkt = pyrad.packet.AuthPacket(code=pyrad.packet.AccessAccept, secret=SECRET, dict=load_dictionary())
    pkt.request_authenticator = RA  # a reply decrypts with the request's authenticator
    assert pkt.SaltDecrypt(salt_encrypt(value, SECRET, RA, SALT)) == value
    # and the other way round: pyrad encrypts, we decrypt
    assert salt_decrypt(pkt.SaltCrypt(value), SECRET, RA) == value


def test_salt_limits_and_errors() -> None:
    with pytest.raises(ValueError, match="239"):
        salt_encrypt(b"x" * 240, SECRET, RA, SALT)
    with pytest.raises(ValueError, match="most significant bit"):
        salt_encrypt(b"x", SECRET, RA, b"\x05\x00")
    good = salt_encrypt(b"secret", SECRET, RA, SALT)
    with pytest.raises(ValueError, match="multiple of 16"):
        salt_decrypt(good[:-1], SECRET, RA)
    with pytest.raises(ValueError, match="most significant bit"):
        salt_decrypt(b"\x05" + good[1:], SECRET, RA)
    with pytest.raises(ValueError):
        salt_decrypt(good, b"wrong secret", RA)


# --- RFC 3579 section 3.2: Message-Authenticator ---------------------------------------------


def test_message_authenticator_of_pyrad_request() -> None:
    req = pyrad.packet.AuthPacket(code=pyrad.packet.AccessRequest, secret=SECRET, dict=load_dictionary(), id=7)
    req["User-Name"] = "mn1@home.example"
    req.add_message_authenticator()
    raw = req.RequestPacket()
    assert verify_message_authenticator(raw, SECRET)
    assert not verify_message_authenticator(raw, b"other secret")
    # independent: HMAC-MD5 over the packet with the M-A value zeroed
    offset = raw.index(b"\x50\x12") + 2
    zeroed = raw[:offset] + bytes(16) + raw[offset + 16 :]
    assert raw[offset : offset + 16] == hmac.new(SECRET, zeroed, hashlib.md5).digest()
    tampered = bytearray(raw)
    tampered[-1] ^= 1
    assert not verify_message_authenticator(bytes(tampered), SECRET)


def test_encode_reply_is_accepted_by_pyrad() -> None:
    req = pyrad.packet.AuthPacket(code=pyrad.packet.AccessRequest, secret=SECRET, dict=load_dictionary(), id=42)
    req["User-Name"] = "mn1@home.example"
    req.add_message_authenticator()
    raw_req = req.RequestPacket()
    reply = encode_reply(2, 42, req.authenticator, SECRET, [b"\x1b\x06\x00\x00\x07\x08"])
    # Message-Authenticator first (BlastRADIUS), Session-Timeout after it
    assert reply[20:22] == b"\x50\x12", f"first attribute: expected 50 12, got {_hex(reply[20:22])}"
    assert reply[38:] == b"\x1b\x06\x00\x00\x07\x08"
    decoded = pyrad.packet.AuthPacket(packet=reply, secret=SECRET, dict=load_dictionary())
    assert req.VerifyReply(decoded, reply, enforce_ma=True)
    # RFC 3579 section 3.2: for a reply, the M-A is keyed over the request authenticator
    expected = hmac.new(
        SECRET,
        reply[:4] + req.authenticator + b"\x50\x12" + bytes(16) + reply[38:],
        hashlib.md5,
    ).digest()
    assert reply[22:38] == expected
    assert compute_message_authenticator(reply, SECRET, req.authenticator) == expected
    assert verify_message_authenticator(reply, SECRET, req.authenticator)
    assert raw_req[4:20] == req.authenticator


def test_encode_reply_size_limit() -> None:
    with pytest.raises(ValueError, match="4096"):
        encode_reply(2, 1, RA, SECRET, [b"\x12\xff" + b"x" * 253] * 17)
