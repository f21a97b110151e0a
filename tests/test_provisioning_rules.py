"""The shared input rules (aaa_vpn/service/provisioning.py): whatever JSON an
API client sends, a kind's rules either make a valid record or raise the
operator's ValidationError -- never another exception (which the server
would answer with 500)."""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aaa_vpn.model import QosClass, ValidationError, VpnRecord
from aaa_vpn.service.provisioning import KINDS, QOS, VPN, KindRules

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
#: Values each field would accept, so that records also come out valid, not only refused.
PLAUSIBLE = st.sampled_from(
    ["192.0.2.7", "10.1.0.0/16", "gw1", "static", "dynamic", "fa", "manual", "aes256gcm16", 256, 46, True]
) | st.just({"hex": "00112233445566778899aabbccddeeff"})


def bodies(rules: KindRules) -> st.SearchStrategy[dict[str, Any]]:
    members = sorted(rules.members | {"unknown"})
    return st.dictionaries(st.sampled_from(members), JSON | PLAUSIBLE, max_size=len(members))


@pytest.mark.parametrize("collection", sorted(KINDS))
def test_any_json_is_a_record_or_a_validation_error(collection: str) -> None:
    rules = KINDS[collection][0]

    @settings(max_examples=300, deadline=None)
    @given(body=bodies(rules) | JSON)
    def check(body: Any) -> None:
        try:
            record = rules.from_json(body)
        except ValidationError:
            return
        assert isinstance(record, rules.record)

    check()


@given(body=bodies(VPN))
@settings(max_examples=200, deadline=None)
def test_any_change_is_a_record_or_a_validation_error(body: dict[str, Any]) -> None:
    old = VpnRecord("mn1@home.example", IPv4Network("10.1.0.0/16"), "gw1", "gold", id=3)
    try:
        new = VPN.changed(old, body, fixed=("nai",))
    except ValidationError:
        return
    assert isinstance(new, VpnRecord) and new.nai == old.nai and new.id == 3


def test_messages() -> None:
    with pytest.raises(ValidationError, match=r"^unknown QoS class field 'dcsp'$"):
        QOS.from_json({"name": "q", "dcsp": 1})
    with pytest.raises(ValidationError, match=r"^invalid DSCP 'x': expected an integer$"):
        QOS.from_json({"name": "q", "dscp": "x"})
    with pytest.raises(ValidationError, match=r"^invalid DSCP 99: 0..63$"):
        QOS.from_json({"name": "q", "dscp": 99})
    with pytest.raises(ValidationError, match=r"^the QoS class in the body is not the one in the path$"):
        QOS.changed(QosClass("q"), {"name": "other"})
    assert QOS.changed(QosClass("q"), {"dscp": 46}) == QosClass("q", dscp=46)
