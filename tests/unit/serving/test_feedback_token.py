"""Feedback tokens: distinct per answer, and the same MAC as every earlier router's."""

from __future__ import annotations

import base64
import hmac

import pytest

from serve_ab.errors import Forbidden
from serve_ab.serving.core.feedback_token import MAC_BYTES, MAX_TOKEN_EPOCH, FeedbackSigner

KEY = b"k" * 32


def _signer() -> FeedbackSigner:
    return FeedbackSigner(KEY, 60, lambda: 1000.0, scope="digits")


def test_every_answer_gets_its_own_nonce_and_every_token_verifies():
    signer = _signer()
    tokens = [signer.issue("same-request-id", "v1", True, 7, 3) for _ in range(10_000)]
    nonces = {t.split(".")[3] for t in tokens}
    assert len(nonces) == 10_000
    proven = {signer.verify(t, "same-request-id").answer_id for t in tokens[:100]}
    assert len(proven) == 100  # one answer id per answer, though the request id repeats


def test_two_signers_do_not_share_their_nonces():
    first, second = _signer(), _signer()
    assert {first.issue("r", "v1").split(".")[3] for _ in range(100)}.isdisjoint(
        {second.issue("r", "v1").split(".")[3] for _ in range(100)})


def test_a_token_from_a_router_that_signed_with_hmac_digest_still_verifies():
    """During a rolling upgrade, routers of the previous release answer too: their tokens
    (a one-shot hmac.digest over the same message) must keep verifying."""
    nonce, flag, expires = "Zm9vYmFy", "a12e3", 1060
    message = f"digits\x00r1\x00v1\x00{expires}\x00{flag}\x00{nonce}".encode()
    mac = base64.urlsafe_b64encode(hmac.digest(KEY, message, "sha256")[:MAC_BYTES]).rstrip(b"=").decode()
    proven = _signer().verify(f"v1.{expires}.{flag}.{nonce}.{mac}", "r1")
    assert (proven.version, proven.assigned, proven.bucket, proven.epoch) == ("v1", True, 12, 3)
    with pytest.raises(Forbidden):
        _signer().verify(f"v1.{expires}.{flag}.{nonce}.{mac}", "r2")


@pytest.mark.parametrize("key_bytes", [16, 32, 63, 64, 65, 200])
def test_the_mac_is_hmac_sha256_for_keys_shorter_and_longer_than_a_block(key_bytes):
    """The MAC is built from precomputed keyed states; it must equal hmac.digest's for any
    key a deployment may hold (SHA-256's block is 64 bytes; a longer key is hashed first)."""
    key = bytes(range(7, 7 + key_bytes))
    signer = FeedbackSigner(key, 60, lambda: 1000.0, scope="digits")
    for message in (b"", b"digits\x00r1\x00v1\x001060\x00a12e3\x00Zm9vYmFy", "é".encode() * 100):
        assert signer._hmac_sha256(message) == hmac.digest(key, message, "sha256")


def test_a_token_proves_when_its_answer_was_given():
    """The controller refuses feedback on answers older than the reports it still remembers,
    whose repeats it could not tell (serve_ab.rollout.feedback): the token says how old."""
    now_s = [1000.0]
    signer = FeedbackSigner(KEY, 60, lambda: now_s[0], scope="digits")
    token = signer.issue("r1", "v2", True, 7, 3)
    now_s[0] = 1030.0
    assert signer.verify(token, "r1").answered_after_s == 999.0  # the expiry is rounded up to a second
    assert signer.verify(signer.issue("r2", "v2", assigned=False), "r2").answered_after_s == 1029.0
    now_s[0] = 1030.4
    assert 1029.4 < signer.verify(signer.issue("r3", "v2"), "r3").answered_after_s < 1030.4


def test_an_epoch_past_what_a_token_can_name_is_signed_as_not_said():
    """A token names its routing epoch in at most 12 digits: one naming a longer epoch was
    refused as malformed, and with it every feedback on the answer (403). Past the format's
    last epoch the token says none (-1: counted under the weights now) and verifies."""
    signer = _signer()
    for epoch, named in ((MAX_TOKEN_EPOCH, MAX_TOKEN_EPOCH), (MAX_TOKEN_EPOCH + 1, -1), (10**15, -1)):
        proven = signer.verify(signer.issue("r1", "v1", True, 42, epoch), "r1")
        assert (proven.version, proven.bucket, proven.epoch) == ("v1", 42, named)
