"""wshub: a real-time WebSocket hub for FastAPI.

One `Hub` per process routes publications to connections, through a broker that
spans processes and hosts. See the README for a tour, docs/architecture.md for
the layers and docs/protocol.md for the wire protocol.
"""

import typing as _typing

from wshub.brokers import Broker, BrokerState, Publication, PublishResult, broker_from_url
from wshub.core.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from wshub.core.errors import (
    BrokerUnavailable,
    CloseCode,
    ErrorCode,
    ProtocolError,
    PublishError,
    RPCError,
    WshubError,
)
from wshub.core.sendqueue import OverflowPolicy
from wshub.hub.connection import Connection, ConnectionState
from wshub.hub.facade import Hub, HubStats
from wshub.hub.permissions import Access, Namespace
from wshub.server.auth import Authenticator, AuthError, Identity, JWTAuthenticator
from wshub.server.endpoint import ProtocolEndpoint
from wshub.server.fastapi import add_health_routes, mount
from wshub.server.sse import mount_sse
from wshub.settings import Settings

if _typing.TYPE_CHECKING:
    from wshub.publisher import Publisher as Publisher

__version__ = "0.1.0"


def __getattr__(name: str) -> _typing.Any:
    # Publisher needs the `redis` extra: import it only when asked for.
    if name == "Publisher":
        from wshub.publisher import Publisher

        return Publisher
    raise AttributeError(f"module 'wshub' has no attribute {name!r}")


__all__ = [
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "Access",
    "AuthError",
    "Authenticator",
    "Broker",
    "BrokerState",
    "BrokerUnavailable",
    "CloseCode",
    "Connection",
    "ConnectionState",
    "ErrorCode",
    "Hub",
    "HubStats",
    "Identity",
    "JWTAuthenticator",
    "Namespace",
    "OverflowPolicy",
    "ProtocolEndpoint",
    "ProtocolError",
    "Publication",
    "PublishError",
    "PublishResult",
    "Publisher",
    "RPCError",
    "Settings",
    "WshubError",
    "__version__",
    "add_health_routes",
    "broker_from_url",
    "mount",
    "mount_sse",
]
