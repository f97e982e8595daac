"""The hub's application hooks: ``@hub.rpc``, ``@hub.on_connect``, ``@hub.on_publish``.

`AppHooks` is the part of the `Hub` facade that holds what the application
registers: RPC methods, connect hooks and publish hooks (the latter run by
`wshub.hub.publishing` on server-side publishes).
"""

from __future__ import annotations

from collections.abc import Callable

from wshub.hub.hooks import ConnectHooks
from wshub.hub.hooks import F as ConnectHookT
from wshub.hub.permissions import Permissions
from wshub.hub.publish_hooks import H, PublishPipeline
from wshub.hub.rpc import H as RPCHandlerT
from wshub.hub.rpc import RPCMethod, RPCRegistry

__all__ = ["AppHooks"]


class AppHooks:
    """The RPC methods, connect hooks and publish hooks an application registers.

    Args:
        permissions: the hub's permissions (the publish hooks read its namespaces).
    """

    def __init__(self, permissions: Permissions) -> None:
        self.publish_pipeline = PublishPipeline(permissions)
        self.rpc_registry = RPCRegistry()
        self.connect_hooks = ConnectHooks()

    def rpc(self, name: str | None = None) -> Callable[[RPCHandlerT], RPCHandlerT]:
        """Decorator: ``@hub.rpc("name")`` on ``async def handler(conn, params) -> result``.

        Protocol clients call it with ``{"op":"rpc","id":N,"method":"name","params":..}``.
        A ``params`` annotated with a Pydantic model is validated into it; a model result
        is sent as ``model_dump(mode="json")``. Raise `wshub.RPCError` to answer with
        an error code of your own. See `wshub.hub.rpc`.
        """
        return self.rpc_registry.decorator(name)

    def rpc_methods(self) -> dict[str, RPCMethod]:
        """The RPC methods by name: each `RPCMethod` has ``.handler``, ``.params_model``,
        ``.result_model`` (a Pydantic model class or None) and ``.summary``."""
        return self.rpc_registry.methods()

    def on_connect(self, hook: ConnectHookT) -> ConnectHookT:
        """Decorator: run ``async def hook(conn) -> None`` as each protocol connection opens.

        After authentication, before the welcome; ``await conn.subscribe(channel)`` in it
        subscribes the client server-side (listed in the welcome as ``subscribed``).
        Raise `wshub.RPCError` to refuse: close 4003. Protocol endpoint only. See
        `wshub.hub.hooks`.
        """
        return self.connect_hooks.add(hook)

    def on_publish(self, namespace: str) -> Callable[[H], H]:
        """Decorator: run ``async def hook(conn, channel, data) -> data`` on publishes.

        The hook runs for every publication to the channels of ``namespace`` (``"*"``:
        the namespaces not listed by name), after the permissions and the namespace's
        model, before the broker: what it returns is what history keeps and every
        subscriber receives. ``conn`` is the publishing `Connection`, None for
        server-side publishes (`publish`, the HTTP API). Raise `wshub.RPCError` to
        refuse with that code. Publications from a `Publisher` (other processes,
        straight to Redis) do not run it. See `wshub.hub.publish_hooks`.
        """
        return self.publish_pipeline.on_publish(namespace)
