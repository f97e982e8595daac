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
history: a read with the channel's options (every subscribe and read by the hub)
creates it at offset 0 with a new epoch and the ttl; the next publish continues it,
or, when it is gone again, starts a new epoch at offset 1, so a client holding an
offset of the old epoch learns it cannot recover.

Idempotency keys: ``<prefix>i:{c}:<key>``, a string ``<offset>:<epoch>`` (``1`` for a
channel without history) expiring after the idempotency window, written by the
publish script itself so that two retries racing from two processes publish once.
"""

from __future__ import annotations

from typing import Any, Final

from redis.asyncio import Redis

from wshub.brokers.base import HistoryOptions, Idempotency, Publication, PublishResult
from wshub.brokers.history import (
    ENTRY_OVERHEAD,
    NO_HISTORY,
    HistoryPage,
    StreamPosition,
    new_epoch,
)
from wshub.brokers.redis_scripts import (
    PUBLISH_ONCE,
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
_once_script = LuaScript(PUBLISH_ONCE)

#: Between the prefix and the hash-tagged channel in an idempotency key's name.
IDEMPOTENCY_INFIX: Final = "i:"


def idempotency_key_name(prefix: str, channel: str, key: str) -> str:
    """The Redis key remembering ``key`` for ``channel``: ``<prefix>i:{<channel>}:<key>``.

    The channel is a hash tag, so that in a cluster the key lives in the slot of the
    channel's other keys (channel names never contain braces).
    """
    return f"{prefix}{IDEMPOTENCY_INFIX}{{{channel}}}:{key}"


def publish_once_command(
    prefix: str, channel: str, payload: bytes, idempotency: Idempotency
) -> tuple[bytes | str | int, ...]:
    """The ``EVALSHA`` publishing ``payload`` (no history) unless ``idempotency``'s key
    was seen within its window; its reply is PUBLISH's, or -1 for a duplicate."""
    key = idempotency_key_name(prefix, channel, idempotency.key)
    window = milliseconds(idempotency.window)
    return ("EVALSHA", _once_script.sha, 1, key, prefix + channel, payload, window)


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

    #: The publish script (the cluster engine's variant SPUBLISHes).
    publish_script = _publish_script

    def keys(self, channel: str) -> list[str]:
        """The keys of ``channel``'s history: its meta hash, then its stream."""
        return [self._prefix + META_INFIX + channel, self._prefix + STREAM_INFIX + channel]

    def pubsub_channel(self, channel: str) -> str:
        """The Redis channel the publish script publishes ``channel``'s publications on."""
        return self._prefix + channel

    def idempotency_key(self, channel: str, key: str) -> str:
        """The key remembering a publish's idempotency ``key`` (see `idempotency_key_name`)."""
        return idempotency_key_name(self._prefix, channel, key)

    #: The publish scripts, by SHA1, for `PublishPipeline`'s NOSCRIPT fallback.
    SCRIPTS = {
        _publish_script.sha: _publish_script.source,
        _once_script.sha: _once_script.source,
    }

    def publish_command(
        self,
        channel: str,
        data: bytes,
        origin: str | None,
        options: HistoryOptions,
        idempotency: Idempotency | None = None,
    ) -> tuple[bytes | str | int, ...]:
        """The ``EVALSHA`` that gives a publication the channel's next offset, keeps it
        and publishes it, in one atomic step (run it through `PublishPipeline`).

        Args:
            channel: the channel name without the prefix.
            data: the payload, a JSON text.
            origin: the publishing client's id, if any.
            options: how many publications (and bytes) to keep, and for how long.
            idempotency: publish only if its key was not seen within its window.

        Returns:
            The command; `publish_result` reads its reply.
        """
        keys = self.keys(channel)
        if idempotency is not None:
            keys.append(self.idempotency_key(channel, idempotency.key))
        args: list[bytes | str | int] = [
            self.pubsub_channel(channel),
            data,
            offset_header_rest(origin),
            options.size,
            milliseconds(options.ttl),
            new_epoch(),  # used only if the history has to start anew
            max(options.max_bytes, 0),
            ENTRY_OVERHEAD,
            "" if origin is None else origin,
        ]
        if idempotency is not None:
            args.append(milliseconds(idempotency.window))
        return ("EVALSHA", self.publish_script.sha, len(keys), *keys, *args)

    def publish_result(self, reply: Any) -> PublishResult:
        """The offset and epoch in the publish script's reply; counts its evictions."""
        offset, epoch, evicted = reply[0], reply[1], reply[2]
        self.evictions += int(evicted)
        return PublishResult(int(offset), _text(epoch))

    async def read(
        self,
        client: Redis,
        channel: str,
        since: int | None,
        limit: int | None,
        options: HistoryOptions | None = None,
    ) -> HistoryPage:
        """Read a page of ``channel``'s history (see `wshub.history.History.history`).

        Args:
            client: the connection pool.
            channel: the channel name without the prefix.
            since: read after this offset, oldest first; None: the newest ``limit``.
            limit: at most this many; None for all kept, 0 for the position only.
            options: the channel's options: a missing history is created (new epoch).

        Returns:
            The page, judged complete as `wshub.history.MemoryHistory.read` does.

        Raises:
            RedisError: Redis failed the script.
        """
        args = _read_args(since, limit)
        if options is not None:
            args += [new_epoch(), milliseconds(options.ttl)]
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
