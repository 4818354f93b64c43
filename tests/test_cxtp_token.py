"""Authorization Token (RFC 4067 §2.5.1) against the self-computed check values
in docs/protocol.md ("Token check values")."""

from __future__ import annotations

import pytest

import cxtp
from cxtp import ProtocolError, compute_token, verify_token
from cxtp.token import key_fingerprint

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f10111213")
SEQ = 0x1A2B3C4D


@pytest.mark.parametrize("previous, cdbs, token", [
    ("2001:db8::100", b"", "69619059"),                                   # no CDB
    ("2001:db8::100", bytes.fromhex("00010100"), "93717144"),            # 4-octet request block
    ("2001:db8::100", bytes.fromhex("0001010000000000"), "18a7cdcf"),    # request block padded to 8
    ("192.0.2.10", b"", "76b9cce3"),                                      # IPv4 previous address
])
def test_token_check_values(previous, cdbs, token):
    assert compute_token(KEY, previous, SEQ, cdbs) == bytes.fromhex(token)


def test_token_of_our_request_block_encoding():
    # what we send (Length 1, 8 octets) is the third check value
    block = cxtp.ContextDataBlock.request(1).encode()
    assert compute_token(KEY, "2001:db8::100", SEQ, block).hex() == "18a7cdcf"


def test_verify_token_accepts_and_rejects():
    token = bytes.fromhex("69619059")
    assert verify_token(KEY, "2001:db8::100", SEQ, b"", token)
    assert not verify_token(KEY, "2001:db8::100", SEQ, b"", bytes.fromhex("69619058"))
    assert not verify_token(KEY, "2001:db8::100", SEQ + 1, b"", token)
    assert not verify_token(KEY, "2001:db8::101", SEQ, b"", token)
    assert not verify_token(KEY[:-1] + b"\x00", "2001:db8::100", SEQ, b"", token)


@pytest.mark.parametrize("key, previous, seq", [
    (b"", "2001:db8::100", 1),
    ("text", "2001:db8::100", 1),
    (KEY, "2001:db8::100", -1),
    (KEY, "2001:db8::100", 1 << 32),
    (KEY, "nonsense", 1),
])
def test_bad_token_inputs(key, previous, seq):
    with pytest.raises(ProtocolError):
        compute_token(key, previous, seq)


def test_fingerprint_is_not_the_key():
    assert key_fingerprint(KEY) != KEY and len(key_fingerprint(KEY)) == 32
