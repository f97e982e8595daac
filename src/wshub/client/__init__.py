"""The Python client of wire protocol v1 (docs/protocol.md); see `wshub.client.session`."""

from wshub.client.session import (
    ChannelPositions,
    Client,
    ClientError,
    ClientState,
    HistoryPage,
    Message,
    PresenceEvent,
    Recovery,
    StateChange,
    Subscription,
    backoff_delay,
    reconnect_policy,
    split_frames,
    token_expiry,
)

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
