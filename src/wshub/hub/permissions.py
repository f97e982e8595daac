"""Per-channel permissions: namespaces with rules, personal channels, and custom hooks.

A channel's namespace is the part of its name before the first ``:``. Each
namespace has a `Namespace`: who may subscribe, who may publish, and the options
later features read (history, presence). Rules apply to clients of the protocol
endpoint; server code (``hub.publish``, ``conn.subscribe``) is trusted.

Personal channels ``user:<id>`` can only be read by the user ``<id>``; clients
can't publish to them (the server can, e.g. with ``hub.publish("user:ada", ...)``).

When namespaces are configured, a channel in a namespace that is not listed is
refused, so that a typo cannot open a channel nobody meant to open, unless a
``"*"`` entry gives rules for every namespace not listed. Channels without a
``:`` belong to the namespace ``""``.

A namespace may also type its publications: ``Namespace(model=ChatMessage)``
validates every publication to its channels against the pydantic model, at every
publish entry point (protocol clients, ``hub.publish``, the HTTP API, `Publisher`),
and publishes ``model_dump(mode="json")`` (defaults filled in, types normalised).
Refusals are `InvalidPublication` (a `PublishError`): ``bad_request`` on the wire,
400 from the HTTP API. Publications arriving from the broker are not validated again.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from wshub.core.channels import namespace_of
from wshub.core.errors import ErrorCode, ProtocolError, PublishError

PERSONAL_NAMESPACE = "user"
#: The key of the rules for namespaces not listed by name.
WILDCARD = "*"

#: ``can_subscribe(user, channel)``: an extra check after the namespace rules.
SubscribeHook = Callable[[str | None, str], Awaitable[bool]]
#: ``can_publish(user, channel, data)``: an extra check after the namespace rules.
PublishHook = Callable[[str | None, str, object], Awaitable[bool]]


class Access(enum.StrEnum):
    """Who may do something in a namespace."""

    ANY = "any"  # anonymous connections included
    AUTHENTICATED = "authenticated"
    NOBODY = "nobody"  # no client; server code only

    def allows(self, user: str | None) -> bool:
        """Tell whether a connection of ``user`` (None when anonymous) is allowed."""
        return self is Access.ANY or (self is Access.AUTHENTICATED and user is not None)


@dataclasses.dataclass(frozen=True, slots=True)
class Namespace:
    """Rules and options for the channels of one namespace.

    Attributes:
        subscribe: who may subscribe.
        publish: who may publish.
        history_size: publications kept for recovery (0: no history).
        history_ttl: seconds publications are kept.
        history_max_bytes: bytes of history kept per channel at most (each publication
            counts its data's length plus 256), the oldest dropped first; 0 or None: no
            cap but ``history_size`` and the memory broker's ``history_max_memory``.
        presence: track who is in each channel.
        join_leave: send join/leave frames to subscribers.
        model: a pydantic model every publication to the namespace's channels must
            validate against; what is published is its ``model_dump(mode="json")``
            (see `Namespace.validate`). None: any JSON value.
    """

    subscribe: Access = Access.ANY
    publish: Access = Access.ANY
    history_size: int = 0
    history_ttl: float = 0.0
    history_max_bytes: int | None = 1024 * 1024
    presence: bool = False
    join_leave: bool = False
    model: type[BaseModel] | None = None

    def __post_init__(self) -> None:
        # A history with no ttl would keep each publication for no time at all:
        # refuse it here rather than let recovery fail quietly later.
        if self.history_size < 0 or self.history_ttl < 0:
            raise ValueError("history_size and history_ttl cannot be negative")
        if self.history_max_bytes is not None and self.history_max_bytes < 0:
            raise ValueError("history_max_bytes cannot be negative (0 or None: no cap)")
        if self.history_size > 0 and self.history_ttl <= 0:
            raise ValueError("a namespace that keeps history needs history_ttl > 0 (seconds)")
        if self.model is not None and not (
            isinstance(self.model, type) and issubclass(self.model, BaseModel)
        ):
            raise TypeError(f"model must be a pydantic BaseModel subclass, not {self.model!r}")

    def validate(self, channel: str, data: object) -> object:
        """Validate ``data`` published to ``channel`` against `model`, if any.

        Returns:
            ``data`` unchanged without a model; else the validated model's
            ``model_dump(mode="json")``: defaults filled in, types normalised, ready
            for JSON. A model instance is validated (and dumped) like a dict.

        Raises:
            InvalidPublication: ``data`` does not fit the model; its message names
                the first offending field.
        """
        model = self.model
        if model is None:
            return data
        try:
            if isinstance(data, BaseModel):
                data = data.model_dump()
            return model.model_validate(data).model_dump(mode="json")
        except ValidationError as exc:
            raise InvalidPublication(channel, model, exc) from None


class InvalidPublication(PublishError):
    """Data that does not fit its namespace's model (`Namespace.model`).

    A `PublishError`: protocol clients get ``bad_request`` with this message, the
    HTTP API answers 400 with it, and ``hub.publish`` and `Publisher` raise it.

    Attributes:
        channel: the channel published to.
        model: the namespace's model.
        errors: pydantic's errors (``ValidationError.errors()``, JSON-ready).
        message: "invalid data for 'chat:lobby' (ChatMessage): text: String should
            have at least 1 character", naming the first offending field.
    """

    def __init__(self, channel: str, model: type[BaseModel], error: ValidationError) -> None:
        self.channel = channel
        self.model = model
        details = error.errors(include_url=False, include_context=False, include_input=False)
        self.errors: list[dict[str, Any]] = [dict(detail) for detail in details]
        self.message = f"invalid data for {channel!r} ({model.__name__}): " + _describe(self.errors)
        super().__init__(self.message)


def _describe(errors: list[dict[str, Any]]) -> str:
    """The first error as ``text: String should ...``, and how many more there are."""
    if not errors:
        return "invalid"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "data"
    text = f"{where}: {first.get('msg', 'invalid')}"
    if len(errors) > 1:
        more = len(errors) - 1
        text += f" (and {more} more error{'s' if more > 1 else ''})"
    return text


DEFAULT_NAMESPACE = Namespace()
PERSONAL = Namespace(subscribe=Access.AUTHENTICATED, publish=Access.NOBODY)


class Permissions:
    """Decides whether a client may subscribe or publish to a channel.

    Args:
        namespaces: rules per namespace; None lets any client use any channel
            (except other users' personal channels).
        can_subscribe: an async hook run after the rules; False refuses.
        can_publish: an async hook run after the rules; False refuses.
    """

    def __init__(
        self,
        namespaces: Mapping[str, Namespace] | None = None,
        *,
        can_subscribe: SubscribeHook | None = None,
        can_publish: PublishHook | None = None,
    ) -> None:
        self.namespaces = dict(namespaces) if namespaces is not None else None
        self.can_subscribe = can_subscribe
        self.can_publish = can_publish

    def namespace(self, channel: str) -> Namespace | None:
        """Return the rules for ``channel``, or None when its namespace is not configured."""
        name = namespace_of(channel)
        if self.namespaces is None:
            return PERSONAL if name == PERSONAL_NAMESPACE else DEFAULT_NAMESPACE
        found = self.namespaces.get(name)
        if found is None and name == PERSONAL_NAMESPACE:
            return PERSONAL
        return found if found is not None else self.namespaces.get(WILDCARD)

    async def check_subscribe(self, user: str | None, channel: str) -> Namespace:
        """Check a client's subscribe.

        Returns:
            The channel's namespace.

        Raises:
            ProtocolError: ``forbidden``.
        """
        space = self._known(channel)
        if not space.subscribe.allows(user):
            raise _forbidden(f"subscribing to {channel!r} is not allowed")
        personal = namespace_of(channel) == PERSONAL_NAMESPACE
        if personal and (user is None or channel != f"user:{user}"):
            raise _forbidden("personal channels are readable by their user only")
        if self.can_subscribe is not None and not await self.can_subscribe(user, channel):
            raise _forbidden(f"subscribing to {channel!r} is not allowed")
        return space

    async def check_publish(self, user: str | None, channel: str, data: object) -> Namespace:
        """Check a client's publish.

        Raises:
            ProtocolError: ``forbidden``.
        """
        space = self._known(channel)
        if not space.publish.allows(user):
            raise _forbidden(f"publishing to {channel!r} is not allowed")
        if self.can_publish is not None and not await self.can_publish(user, channel, data):
            raise _forbidden(f"publishing to {channel!r} is not allowed")
        return space

    def _known(self, channel: str) -> Namespace:
        space = self.namespace(channel)
        if space is None:
            raise _forbidden(f"unknown namespace {namespace_of(channel)!r}")
        return space


def _forbidden(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN, message)
