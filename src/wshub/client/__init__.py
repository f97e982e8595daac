"""The Python client of wire protocol v1 (docs/protocol.md); see `wshub.client.session`."""

import logging as _logging

from wshub.client.frames import split_frames, token_expiry
from wshub.client.models import (
    ClientError,
    ClientState,
    HistoryPage,
    Message,
    PresenceEvent,
    Recovery,
    StateChange,
)
from wshub.client.reconnect import backoff_delay, reconnect_policy
from wshub.client.session import Client
from wshub.client.subscriptions import ChannelPositions, Subscription

# The client logs on "wshub.client" and never prints: without logging configured by the
# application, nothing reaches stderr (no "last resort" output beside a raised error).
_logging.getLogger("wshub.client").addHandler(_logging.NullHandler())

__all__ = [
    "ChannelPositions",
    "Client",
    "ClientError",
    "ClientState",
    "HistoryPage",
    "Message",
    "PresenceEvent",
    "Recovery",
    "StateChange",
    "Subscription",
    "backoff_delay",
    "reconnect_policy",
    "split_frames",
    "token_expiry",
]
