"""Publish hooks: typed namespaces and ``@hub.on_publish`` at every publish entry point.

`PublishPipeline.prepare` is what happens to a publication before the broker sees it:

1. `Namespace.validate`: with ``Namespace(model=...)``, the data must fit the model
   and becomes its ``model_dump(mode="json")`` (`InvalidPublication` otherwise);
2. the namespace's hooks, in the order registered: ``async def hook(conn, channel,
   data) -> data``. Each gets the previous one's result and returns the data to
   publish (strip text, stamp a server timestamp, store it first). ``conn`` is the
   publishing `Connection`, or None for server-side publishes (``hub.publish``, the
   HTTP API). Raising `RPCError(code, message)` refuses the publish with that code.

It runs once per publication, at its entry point, never in fan-out: what it returns
is what the broker carries, history keeps and every subscriber, in every process,
receives. Publications arriving from the broker (another process, a `Publisher`) are
trusted as they are.

Protocol clients' publishes are prepared in the endpoint's reader, in frame order
(permissions first), and the result travels on the command as `Prepared`, which
`Hub.publish` unwraps without preparing again and without awaiting: the publish lane's
order guarantee (`wshub.server.publish_lane`) stands however long a hook takes.
Server-side publishes are prepared inside `Hub.publish`, before `Delivery.publish`.
A channel whose namespace has neither a model nor hooks costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from wshub.core.channels import namespace_of
from wshub.core.errors import ErrorCode, ProtocolError, RPCError
from wshub.hub.permissions import WILDCARD, Namespace, Permissions

if TYPE_CHECKING:
    from wshub.hub.connection import Connection

__all__ = ["OnPublish", "Prepared", "PublishPipeline", "refusal"]

#: ``async def hook(conn, channel, data) -> data``; ``conn`` is None for server code.
OnPublish = Callable[["Connection | None", str, Any], Awaitable[Any]]
H = TypeVar("H", bound=OnPublish)


class Prepared:
    """Data that went through `PublishPipeline.prepare` already (validated, hooked).

    `Hub.publish` publishes ``data`` as it is, without awaiting anything first.
    """

    __slots__ = ("data",)

    def __init__(self, data: object) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Prepared({self.data!r})"


class PublishPipeline:
    """The validation and hooks of one hub's publications.

    Args:
        permissions: the hub's rules, whose namespaces carry the models.
    """

    def __init__(self, permissions: Permissions) -> None:
        self.permissions = permissions
        self.hooks: dict[str, list[OnPublish]] = {}

    def on_publish(self, namespace: str) -> Callable[[H], H]:
        """Decorator registering ``hook`` for the channels of ``namespace``.

        ``namespace`` is a namespace's name (``"chat"`` for ``chat:lobby``, ``""``
        for channels without ``:``), or ``"*"`` for the namespaces not listed by name
        in ``Hub(namespaces=...)`` (like the ``"*"`` rules). Several hooks of one
        namespace run in the order they were registered.
        """
        if not isinstance(namespace, str) or ":" in namespace:
            raise ValueError(f"on_publish takes a namespace name (no ':'), not {namespace!r}")

        def register(hook: H) -> H:
            self.hooks.setdefault(namespace, []).append(hook)
            return hook

        return register

    def _hooks_for(self, channel: str) -> list[OnPublish]:
        hooks = self.hooks
        if not hooks:
            return []
        name = namespace_of(channel)
        found = hooks.get(name)
        if found is not None:
            return found
        namespaces = self.permissions.namespaces
        if WILDCARD in hooks and (namespaces is None or name not in namespaces):
            return hooks[WILDCARD]
        return []

    def needed(self, channel: str, space: Namespace | None = None) -> bool:
        """Whether a publication to ``channel`` has anything to go through."""
        if space is None:
            space = self.permissions.namespace(channel)
        return (space is not None and space.model is not None) or bool(self._hooks_for(channel))

    async def prepare(
        self,
        conn: Connection | None,
        channel: str,
        data: object,
        space: Namespace | None = None,
    ) -> object:
        """Validate ``data`` against the namespace's model, then run its hooks.

        Args:
            conn: the publishing connection; None for server-side publishes.
            channel: the channel.
            data: the data as given.
            space: the channel's namespace, when the caller looked it up already.

        Returns:
            The data to publish.

        Raises:
            InvalidPublication: the data does not fit the namespace's model.
            RPCError: a hook refused the publication.
        """
        if space is None:
            space = self.permissions.namespace(channel)
        if space is not None and space.model is not None:
            data = space.validate(channel, data)
        for hook in self._hooks_for(channel):
            data = await hook(conn, channel, data)
        return data


class _WireCode(str):
    """An application's error code where the wire expects an `ErrorCode` (``.value``)."""

    __slots__ = ()

    @property
    def value(self) -> str:
        return str(self)


def refusal(exc: RPCError, request_id: int | str | None = None) -> ProtocolError:
    """The `ProtocolError` that sends a hook's `RPCError` to the client with its code."""
    code = cast(ErrorCode, _WireCode(exc.code))
    return ProtocolError(code, exc.message or exc.code, request_id)
