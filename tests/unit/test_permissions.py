"""Channel permissions: namespaces, access levels, personal channels and custom hooks."""

from __future__ import annotations

import pytest

from wshub.core.errors import ErrorCode, ProtocolError
from wshub.hub.permissions import (
    DEFAULT_NAMESPACE,
    PERSONAL,
    Access,
    Namespace,
    Permissions,
)

pytestmark = pytest.mark.anyio


def test_access_levels() -> None:
    """ANY lets everyone in, AUTHENTICATED only users, NOBODY no client at all."""
    assert Access.ANY.allows(None) and Access.ANY.allows("ada")
    assert not Access.AUTHENTICATED.allows(None) and Access.AUTHENTICATED.allows("ada")
    assert not Access.NOBODY.allows(None) and not Access.NOBODY.allows("ada")


async def forbidden(check: object) -> str:
    """Await a permission check that must refuse; return its message."""
    with pytest.raises(ProtocolError) as info:
        await check  # type: ignore[misc]
    assert info.value.code is ErrorCode.FORBIDDEN
    return info.value.message


async def test_without_namespaces_any_channel_is_open() -> None:
    """With no namespaces configured, anyone may subscribe and publish to ordinary channels."""
    perms = Permissions()
    for channel in ("room", "chat:lobby", "whatever:x"):
        assert await perms.check_subscribe(None, channel) is DEFAULT_NAMESPACE
        assert await perms.check_publish(None, channel, {}) is DEFAULT_NAMESPACE


async def test_unknown_namespace_is_refused_when_namespaces_are_configured() -> None:
    """A channel outside the listed namespaces is refused, for subscribe and publish."""
    perms = Permissions({"chat": Namespace()})
    assert await perms.check_subscribe("ada", "chat:lobby") == Namespace()
    assert "unknown namespace 'news'" in await forbidden(perms.check_subscribe("ada", "news:x"))
    assert "unknown namespace 'news'" in await forbidden(perms.check_publish("ada", "news:x", 1))
    await forbidden(perms.check_subscribe("ada", "plain"))  # namespace "" is not listed


async def test_empty_namespace_covers_channels_without_a_colon() -> None:
    """Listing the namespace "" opens channels without a colon."""
    perms = Permissions({"": Namespace(publish=Access.AUTHENTICATED)})
    await perms.check_subscribe(None, "lobby")
    await perms.check_publish("ada", "lobby", 1)
    await forbidden(perms.check_publish(None, "lobby", 1))


async def test_authenticated_namespace_refuses_anonymous() -> None:
    """Access.AUTHENTICATED refuses anonymous connections and lets users in."""
    space = Namespace(subscribe=Access.AUTHENTICATED, publish=Access.AUTHENTICATED)
    perms = Permissions({"members": space})
    await forbidden(perms.check_subscribe(None, "members:x"))
    await forbidden(perms.check_publish(None, "members:x", 1))
    assert await perms.check_subscribe("ada", "members:x") is space
    assert await perms.check_publish("ada", "members:x", 1) is space


async def test_nobody_namespace_refuses_every_client() -> None:
    """Access.NOBODY refuses users and anonymous clients alike."""
    perms = Permissions({"news": Namespace(publish=Access.NOBODY)})
    await perms.check_subscribe(None, "news:today")
    await forbidden(perms.check_publish("ada", "news:today", 1))
    await forbidden(perms.check_publish(None, "news:today", 1))


@pytest.mark.parametrize("namespaces", [None, {"chat": Namespace()}])
async def test_personal_channel_is_readable_by_its_user_only(
    namespaces: dict[str, Namespace] | None,
) -> None:
    """`user:<id>` is for `<id>` alone, whether or not namespaces are configured."""
    perms = Permissions(namespaces)
    assert await perms.check_subscribe("ada", "user:ada") is PERSONAL
    await forbidden(perms.check_subscribe("ada", "user:bob"))
    await forbidden(perms.check_subscribe(None, "user:ada"))
    await forbidden(perms.check_subscribe(None, "user:None"))
    await forbidden(perms.check_publish("ada", "user:ada", 1))
    await forbidden(perms.check_publish("ada", "user:bob", 1))


async def test_personal_rule_holds_even_with_an_open_user_namespace() -> None:
    """Configuring `user` with ANY access does not open other users' personal channels."""
    perms = Permissions({"user": Namespace(subscribe=Access.ANY)})
    await perms.check_subscribe("ada", "user:ada")
    await forbidden(perms.check_subscribe("ada", "user:bob"))
    await forbidden(perms.check_subscribe(None, "user:bob"))
    await forbidden(perms.check_subscribe(None, "user:None"))


async def test_hooks_run_after_the_rules_with_user_channel_and_data() -> None:
    """Hooks get (user, channel[, data]); False refuses; they are skipped when a rule refuses."""
    calls: list[tuple[object, ...]] = []

    async def can_subscribe(user: str | None, channel: str) -> bool:
        calls.append(("sub", user, channel))
        return not channel.endswith(":secret")

    async def can_publish(user: str | None, channel: str, data: object) -> bool:
        calls.append(("pub", user, channel, data))
        return data != "spam"

    perms = Permissions(
        {"chat": Namespace(), "news": Namespace(publish=Access.NOBODY)},
        can_subscribe=can_subscribe,
        can_publish=can_publish,
    )
    await perms.check_subscribe("ada", "chat:lobby")
    await forbidden(perms.check_subscribe("ada", "chat:secret"))
    await perms.check_publish("ada", "chat:lobby", {"t": 1})
    await forbidden(perms.check_publish(None, "chat:lobby", "spam"))
    await forbidden(perms.check_publish("ada", "news:x", "hi"))  # refused by the rule first
    await forbidden(perms.check_subscribe("ada", "other:x"))  # unknown namespace first
    assert calls == [
        ("sub", "ada", "chat:lobby"),
        ("sub", "ada", "chat:secret"),
        ("pub", "ada", "chat:lobby", {"t": 1}),
        ("pub", None, "chat:lobby", "spam"),
    ]


async def test_namespace_lookup() -> None:
    """`namespace()` finds the rules by the part before the first colon."""
    chat = Namespace(history_size=10, history_ttl=60)
    perms = Permissions({"chat": chat})
    assert perms.namespace("chat:a:b") is chat
    assert perms.namespace("user:ada") is PERSONAL
    assert perms.namespace("nope:x") is None
    assert Permissions().namespace("anything") is DEFAULT_NAMESPACE


@pytest.mark.parametrize(
    "options",
    [
        {"history_size": 10},
        {"history_size": 10, "history_ttl": 0},
        {"history_size": -1},
        {"history_ttl": -1.0},
    ],
)
def test_namespace_refuses_a_history_that_keeps_nothing(options: dict[str, float]) -> None:
    """history_size without a positive history_ttl (or negative values) is refused at once."""
    with pytest.raises(ValueError):
        Namespace(**options)  # type: ignore[arg-type]


def test_namespace_with_history_and_ttl_is_accepted() -> None:
    """A history with a size and a ttl is fine; a ttl alone (no size) keeps no history."""
    assert Namespace(history_size=10, history_ttl=1).history_size == 10
    assert Namespace(history_ttl=5).history_size == 0
