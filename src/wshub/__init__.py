"""wshub: a real-time WebSocket hub for FastAPI.

One `Hub` per process routes publications to connections, through a broker that
spans processes and hosts. See the README for a tour and DESIGN.md for the rules.
"""

from wshub.brokers import Broker, BrokerState, Publication, PublishResult, broker_from_url
from wshub.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from wshub.connection import Connection, ConnectionState
from wshub.endpoint import ProtocolEndpoint
from wshub.errors import (
    BrokerUnavailable,
    CloseCode,
    ErrorCode,
    ProtocolError,
    PublishError,
    WshubError,
)
from wshub.fastapi import mount
from wshub.hub import Hub, HubStats
from wshub.sendqueue import OverflowPolicy
from wshub.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "Broker",
    "BrokerState",
    "BrokerUnavailable",
    "CloseCode",
    "Connection",
    "ConnectionState",
    "ErrorCode",
    "Hub",
    "HubStats",
    "OverflowPolicy",
    "ProtocolEndpoint",
    "ProtocolError",
    "PublishError",
    "PublishResult",
    "Publication",
    "Settings",
    "WshubError",
    "__version__",
    "broker_from_url",
    "mount",
]
