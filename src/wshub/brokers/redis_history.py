"""Channel histories kept in Redis: one stream and one meta hash per channel.

Keys, for a channel ``c`` and the broker's prefix (docs/redis.md, "History"):

- ``<prefix>history-meta:c``, a hash: ``epoch`` (random, set when the hash is
  created), ``offset`` (the newest publication's offset), ``ttl`` (ms, the last
  publish's history ttl), ``bytes`` (the stream's entries counted as
  ``len(data) + ENTRY_OVERHEAD`` each);
- ``<prefix>history:c``, a stream of the last ``size`` publications within
  ``max_bytes``, the entry id ``<offset>-<unix ms when kept>``, the fields ``data``
  and, with an origin, ``from``.

Both keys expire ``ttl`` after the last publish. A missing meta hash means no
history: reads report `NO_HISTORY` and the next publish starts a new epoch at offset
1, so a client holding an offset of the old epoch learns it cannot recover.
"""

from __future__ import annotations

from typing import Any, Final

from redis.asyncio import Redis

from wshub.brokers.base import HistoryOptions, Publication, PublishResult
from wshub.brokers.history import (
    ENTRY_OVERHEAD,
    NO_HISTORY,
    HistoryPage,
    StreamPosition,
    new_epoch,
)
from wshub.brokers.redis_scripts import (
    PUBLISH_WITH_HISTORY,
    READ_HISTORY,
    LuaScript,
    milliseconds,
)
from wshub.brokers.redis_wire import offset_header_rest

#: Between the prefix and the channel in the name of a channel's history stream.
STREAM_INFIX: Final = "history:"
#: Between the prefix and the channel in the name of a channel's history meta hash.
META_INFIX: Final = "history-meta:"

_publish_script = LuaScript(PUBLISH_WITH_HISTORY)
_read_script = LuaScript(READ_HISTORY)


class RedisHistory:
    """Writes and reads channel histories in Redis; the broker supplies the connection.

    Args:
        prefix: the broker's key and channel prefix.

    Attributes:
        evictions: entries this process's publishes dropped by a byte cap.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self.evictions = 0

    def keys(self, channel: str) -> list[str]:
        """The keys of ``channel``'s history: its meta hash, then its stream."""
        return [self._prefix + META_INFIX + channel, self._prefix + STREAM_INFIX + channel]

    #: The publish script, by SHA1, for `PublishPipeline`'s NOSCRIPT fallback.
    SCRIPTS = {_publish_script.sha: _publish_script.source}

    def publish_command(
        self, channel: str, data: bytes, origin: str | None, options: HistoryOptions
    ) -> tuple[bytes | str | int, ...]:
        """The ``EVALSHA`` that gives a publication the channel's next offset, keeps it
        and publishes it, in one atomic step (run it through `PublishPipeline`).

        Args:
            channel: the channel name without the prefix.
            data: the payload, a JSON text.
            origin: the publishing client's id, if any.
            options: how many publications (and bytes) to keep, and for how long.

        Returns:
            The command; `publish_result` reads its reply.
        """
        keys = self.keys(channel)
        args: list[bytes | str | int] = [
            self._prefix + channel,
            data,
            offset_header_rest(origin),
            options.size,
            milliseconds(options.ttl),
            new_epoch(),  # used only if the history has to start anew
            max(options.max_bytes, 0),
            ENTRY_OVERHEAD,
        ]
        if origin is not None:
            args.append(origin)
        return ("EVALSHA", _publish_script.sha, len(keys), *keys, *args)

    def publish_result(self, reply: Any) -> PublishResult:
        """The offset and epoch in the publish script's reply; counts its evictions."""
        offset, epoch, evicted = reply
        self.evictions += int(evicted)
        return PublishResult(int(offset), _text(epoch))

    async def read(
        self, client: Redis, channel: str, since: int | None, limit: int | None
    ) -> HistoryPage:
        """Read a page of ``channel``'s history (see `wshub.history.History.history`).

        Args:
            client: the connection pool.
            channel: the channel name without the prefix.
            since: read after this offset, oldest first; None: the newest ``limit``.
            limit: at most this many; None for all kept, 0 for the position only.

        Returns:
            The page, judged complete as `wshub.history.MemoryHistory.read` does.

        Raises:
            RedisError: Redis failed the script.
        """
        args = _read_args(since, limit)
        reply = await _read_script(client, self.keys(channel), args)
        if not reply:
            return HistoryPage(NO_HISTORY, [], since is None or since == 0)
        position = StreamPosition(int(reply[1]), _text(reply[0]))
        publications = [_publication(entry) for entry in reply[2:]]
        if since is None:
            publications.reverse()  # read newest first
            return HistoryPage(position, publications)
        return _page_after(position, publications, since, limit)


def _read_args(since: int | None, limit: int | None) -> list[bytes | str | int]:
    """The read script's ARGV: after ``since``, or the newest ``limit`` ("" means all)."""
    if since is None:
        return ["newest", "", "" if limit is None else limit]
    # Completeness is judged by the first entry after `since`: fetch it even for
    # limit 0. Offsets start at 1, so a negative `since` starts at 0.
    return ["since", max(since + 1, 0), "" if limit is None else max(limit, 1)]


def _page_after(
    position: StreamPosition, publications: list[Publication], since: int, limit: int | None
) -> HistoryPage:
    """Build the page for a read after ``since``, judged as `MemoryHistory.read` does."""
    oldest = publications[0].offset if publications else position.offset + 1
    complete = since >= position.offset or oldest == since + 1
    kept = publications if limit is None else publications[:limit]
    return HistoryPage(position, kept, complete)


def _publication(entry: list[Any]) -> Publication:
    """Turn a stream entry ``[id, [field, value, ...]]`` back into a publication."""
    entry_id, flat = entry
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    origin = fields.get(b"from")
    offset = int(entry_id.partition(b"-")[0])
    return Publication(fields[b"data"], offset, None if origin is None else _text(origin))


def _text(value: bytes | str) -> str:
    """A reply's text: bytes from a normal connection, str if the URL asked to decode."""
    return value.decode() if isinstance(value, bytes) else value
