"""The key hierarchy (docs/design.md section 3) and its HKDF (RFC 5869)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from aaa_vpn import keys
from aaa_vpn.secret import Secret

FA = IPv4Address("192.0.2.1")
HA = IPv4Address("192.0.2.2")


def test_hkdf_rfc5869_test_case_1() -> None:
    # RFC 5869 appendix A.1 (SHA-256, basic test case)
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = bytes.fromhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    assert keys.hkdf_sha256(ikm, info, 42, salt) == okm


def test_hkdf_rfc5869_test_case_3_no_salt_no_info() -> None:
    # RFC 5869 appendix A.3: zero-length salt and info
    ikm = bytes.fromhex("0b" * 22)
    okm = bytes.fromhex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    assert keys.hkdf_sha256(ikm, b"", 42) == okm


@given(ikm=st.binary(min_size=1, max_size=64), info=st.binary(max_size=80), length=st.integers(1, 200))
def test_hkdf_matches_cryptography(ikm: bytes, info: bytes, length: int) -> None:
    expected = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)
    assert keys.hkdf_sha256(ikm, info, length) == expected


def test_directions_and_paths_get_different_keys() -> None:
    srk = Secret(bytes(range(32)))
    forward = keys.derive_sa_key(srk, b"fa-ha", FA, HA, 1, 36)
    backward = keys.derive_sa_key(srk, b"fa-ha", HA, FA, 1, 36)
    other_path = keys.derive_sa_key(srk, b"fa-gw:1", FA, HA, 1, 36)
    next_epoch = keys.derive_sa_key(srk, b"fa-ha", FA, HA, 2, 36)
    assert len(forward) == 36
    assert len({forward.value, backward.value, other_path.value, next_epoch.value}) == 4


def test_ike_psk_is_the_same_for_both_peers() -> None:
    srk = keys.new_session_root_key()
    assert keys.derive_ike_psk(srk, b"fa-ha", FA, HA, 1) == keys.derive_ike_psk(srk, b"fa-ha", HA, FA, 1)
    assert keys.derive_ike_psk(srk, b"fa-ha", FA, HA, 1) != keys.derive_ike_psk(srk, b"fa-ha", FA, HA, 2)


def test_session_root_keys_are_fresh_and_never_shown() -> None:
    a, b = keys.new_session_root_key(), keys.new_session_root_key()
    assert len(a) == 32 and a != b
    assert a.value.hex() not in repr(a) and "redacted" in repr(a)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=80), st.integers(1, 200))
def test_the_cached_derivation_is_hkdf(ikm: bytes, info: bytes, length: int) -> None:
    # Twice: the second time from the cached HMAC states of the root key.
    assert keys._hkdf(Secret(ikm), info, length) == keys.hkdf_sha256(ikm, info, length)
    assert keys._hkdf(Secret(ikm), info, length) == keys.hkdf_sha256(ikm, info, length)


@given(
    ikm=st.binary(min_size=1, max_size=64),
    wanted=st.lists(st.tuples(st.binary(max_size=80), st.integers(8, 64)), max_size=8),
)
def test_derive_all_is_hkdf_and_the_recorder_derives_nothing(ikm: bytes, wanted: list[tuple[bytes, int]]) -> None:
    """A KeyRecorder answers each derivation with a distinct placeholder and
    remembers it; derive_all then gives from a real key what HKDF-SHA256 gives
    (cryptography's, the oracle), and never caches the recorder."""
    recorder = keys.KeyRecorder(len(ikm))
    placeholders = [keys._hkdf(recorder, info, length) for info, length in wanted]
    assert recorder.derivations == wanted
    assert [len(p) for p in placeholders] == [length for _info, length in wanted]
    assert len(set(placeholders)) == len(placeholders) == len(recorder.placeholders)
    assert recorder.value not in keys._PRK_CACHE
    derived = keys.derive_all(Secret(ikm), keys.expansions(recorder.derivations))
    expected = [
        HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm) for info, length in wanted
    ]
    assert derived == expected


def test_derive_all_refuses_what_it_cannot_derive() -> None:
    with pytest.raises(ValueError, match=r"1\.\.64"):
        keys.expansions([(b"info", 65)])
    recorder = keys.KeyRecorder()
    with pytest.raises(ValueError, match="distinct"):
        for _ in range(300):  # one octet: 256 values at most
            keys._hkdf(recorder, b"info", 1)
