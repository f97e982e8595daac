"""Channel-name rules.

A channel name is 1 to ``MAX_CHANNEL_LENGTH`` characters from ``CHANNEL_CHARS``:
ASCII letters, digits and ``_ - : . @ / = +``. The part before the first ``:`` is
the channel's namespace (``chat:lobby`` is in ``chat``). Names starting with ``#``
are reserved for the hub's own routing (per-user and broadcast delivery) and can
never be named by a client.
"""

from __future__ import annotations

import re

MAX_CHANNEL_LENGTH = 200
CHANNEL_CHARS = "A-Za-z0-9_\\-:.@/=+"
_VALID = re.compile(f"[{CHANNEL_CHARS}]{{1,{MAX_CHANNEL_LENGTH}}}")

#: Internal channel every process subscribes to, for `Hub.broadcast`.
BROADCAST_CHANNEL = "#all"
#: Prefix of the internal per-user channels, for `Hub.send_to_user`.
USER_CHANNEL_PREFIX = "#user:"


def is_valid_channel(name: object) -> bool:
    """Tell whether a client may name this channel.

    Args:
        name: anything taken from a client frame.

    Returns:
        True for a string that follows the rules in this module's docstring.
    """
    return isinstance(name, str) and _VALID.fullmatch(name) is not None


def namespace_of(channel: str) -> str:
    """Return the namespace of a channel: the part before the first ``:``, or ``""``."""
    head, sep, _ = channel.partition(":")
    return head if sep else ""


def user_channel(user: str) -> str:
    """Return the internal channel that reaches every connection of ``user``."""
    return USER_CHANNEL_PREFIX + user
