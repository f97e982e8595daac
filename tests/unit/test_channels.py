"""Channel-name rules and namespaces."""

from __future__ import annotations

import pytest

from wshub.core.channels import (
    BROADCAST_CHANNEL,
    MAX_CHANNEL_LENGTH,
    USER_CHANNEL_PREFIX,
    is_valid_channel,
    namespace_of,
    user_channel,
)


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "room",
        "chat:lobby",
        "A-Z_a-z.0-9",
        "user@example.com",
        "path/to/room",
        "key=value+more",
        ":leading-colon",
        "---",
        "x" * MAX_CHANNEL_LENGTH,
    ],
)
def test_valid_names(name: str) -> None:
    """Names of 1 to MAX_CHANNEL_LENGTH characters from the allowed set are valid."""
    assert is_valid_channel(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * (MAX_CHANNEL_LENGTH + 1),
        "has space",
        "tab\there",
        "trailing-newline\n",
        "\nleading-newline",
        "é",
        "emoji😀",
        "wild*card",
        "hash#inside",
        "back\\slash",
        "quote'",
        'quote"',
        "nul\x00",
        "comma,separated",
    ],
)
def test_invalid_names(name: str) -> None:
    """Empty, too long, and names with any other character are invalid."""
    assert not is_valid_channel(name)


def test_max_length_is_200() -> None:
    """The documented limit: 200 characters fit, 201 do not."""
    assert MAX_CHANNEL_LENGTH == 200
    assert is_valid_channel("c" * 200)
    assert not is_valid_channel("c" * 201)


@pytest.mark.parametrize("name", [BROADCAST_CHANNEL, user_channel("bob"), "#", "#room"])
def test_internal_names_are_never_valid_for_clients(name: str) -> None:
    """Names starting with # are the hub's own routing channels; clients cannot name them."""
    assert name.startswith("#")
    assert not is_valid_channel(name)


@pytest.mark.parametrize("value", [None, 1, b"room", ["room"], {"room": 1}])
def test_non_strings_are_invalid(value: object) -> None:
    """Anything taken from a client frame that is not a string is invalid, without raising."""
    assert not is_valid_channel(value)


@pytest.mark.parametrize(
    ("channel", "namespace"),
    [
        ("chat:lobby", "chat"),
        ("chat:lobby:2", "chat"),
        ("lobby", ""),
        (":lobby", ""),
        ("chat:", "chat"),
        ("a.b:c", "a.b"),
    ],
)
def test_namespace_is_the_part_before_the_first_colon(channel: str, namespace: str) -> None:
    """The namespace is what precedes the first ``:``; no colon means no namespace."""
    assert namespace_of(channel) == namespace


def test_user_channel_is_prefixed() -> None:
    """A user's internal channel is the prefix plus the user name, as it is."""
    assert user_channel("alice") == USER_CHANNEL_PREFIX + "alice" == "#user:alice"
    assert user_channel("zoë") == "#user:zoë"
