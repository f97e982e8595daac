"""The Python client's Sans-I/O helpers: backoff, close policy, frame splitting, positions."""

from __future__ import annotations

import base64

import orjson

from wshub.client import (
    ChannelPositions,
    backoff_delay,
    reconnect_policy,
    split_frames,
    token_expiry,
)


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    """The ceiling doubles per attempt up to the cap; the delay is uniform below it."""
    top = [backoff_delay(n, 0.1, 2.0, lambda: 1.0) for n in range(7)]
    assert top == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert backoff_delay(3, 0.1, 2.0, lambda: 0.0) == 0.0
    assert backoff_delay(10_000, 0.5, 30.0, lambda: 0.5) == 15.0


def test_close_codes_map_to_reauth_later_or_retry() -> None:
    """4001/4003 need a new token; 1013/4029 wait; the rest retry."""
    assert [reconnect_policy(c) for c in (4001, 4003, 1013, 4029, 1001, 1012, 4008)] == [
        "reauth",
        "reauth",
        "later",
        "later",
        "retry",
        "retry",
        "retry",
    ]


def test_split_frames_skips_empty_and_bad_lines() -> None:
    """Packed frames come apart on newlines; a bad line is dropped, the rest kept."""
    text = '{"op":"ping"}\n\nnot json\n{"id":1,"result":{}}'
    assert split_frames(text) == [{"op": "ping"}, {"id": 1, "result": {}}]


def test_token_expiry_reads_a_jwt_exp_only() -> None:
    """``exp`` of a JWT in seconds; None for anything else."""
    payload = base64.urlsafe_b64encode(orjson.dumps({"exp": 1900000000})).rstrip(b"=").decode()
    assert token_expiry(f"h.{payload}.s") == 1900000000.0
    assert token_expiry("opaque") is None
    assert token_expiry("a.!!.c") is None
    assert token_expiry(None) is None


def test_positions_dedupe_and_resubscribe_fields() -> None:
    """Old offsets are duplicates; a resubscribe asks since the last one, with its epoch."""
    p = ChannelPositions()
    assert p.resubscribe_fields("a") == {}
    p.apply_subscribe("a", {"offset": 3, "epoch": "e"}, asked=False)
    assert [p.accept("a", n) for n in (4, 4, 2, 5, None)] == [True, False, False, True, True]
    assert p.resubscribe_fields("a") == {"since": 5, "epoch": "e"}


def test_recovery_result_delivers_new_messages_or_resets() -> None:
    """recovered=True yields the unseen messages; recovered=False resets to the server."""
    p = ChannelPositions()
    p.apply_subscribe("a", {"offset": 1, "epoch": "e"}, asked=False)
    result = {
        "offset": 3,
        "epoch": "e",
        "recovered": True,
        "messages": [{"offset": n} for n in (1, 2, 3)],
    }
    assert p.apply_subscribe("a", result, asked=True) == ([{"offset": 2}, {"offset": 3}], True)
    lost = {"offset": 9, "epoch": "f", "recovered": False, "messages": []}
    assert p.apply_subscribe("a", lost, asked=True) == ([], False)
    assert p.resubscribe_fields("a") == {"since": 9, "epoch": "f"}


def test_an_empty_channels_epoch_is_learnt_later() -> None:
    """Joined without an epoch (an old server), a later position read supplies it."""
    p = ChannelPositions()
    p.apply_subscribe("a", {"offset": 0, "epoch": ""}, asked=False)
    p.accept("a", 1)
    p.learn_epoch("a", {"offset": 1, "epoch": "e7"})
    assert p.resubscribe_fields("a") == {"since": 1, "epoch": "e7"}


def test_4002_stops_the_client() -> None:
    """4002 (no subprotocol the server speaks) cannot be cured by retrying or a new token."""
    assert reconnect_policy(4002) == "stop"
