"""The Lua scripts of the Redis engine, and how they are run.

Each script runs atomically inside Redis, so that what must happen together does:
assigning an offset, keeping the publication and publishing it (one step, so the
offset order is the delivery order in every process); reading a history's position
with its entries (one consistent snapshot); dropping expired presence entries before
reading the rest. Times come from Redis's ``TIME``, never a process's clock, so that
hosts with skewed clocks agree on what has expired.

Keys and arguments are documented at the top of each script; docs/redis.md describes
the keys themselves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

# Lua helpers shared by the scripts: the server's clock in ms, and calling a command
# with a long argument list in slices (unpack() is limited by Lua's C stack, ~8000).
_PRELUDE: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function call_sliced(command, key, args)
  for i = 1, #args, 1000 do
    redis.call(command, key, unpack(args, i, math.min(i + 999, #args)))
  end
end
"""

#: Publish with history. KEYS: meta hash, stream, and optionally the idempotency key.
#: ARGV: 1 the pub/sub channel, 2 the data, 3 the envelope header after the offset
#: (`redis_wire.offset_header_rest`), 4 history size, 5 ttl in ms, 6 a fresh epoch (used
#: only when the meta is missing), 7 the byte cap (0: none), 8 the bytes counted per
#: entry besides its data, 9 the origin (empty: none), 10 the idempotency window in ms
#: (with KEYS[3]). Returns ``{offset, epoch, evicted, duplicate}``, ``evicted`` the
#: entries dropped by the byte cap (not those trimmed by size), ``duplicate`` 1 when
#: the idempotency key was seen within its window: then nothing was kept or published
#: and offset and epoch are the first publish's.
PUBLISH_WITH_HISTORY: Final = (
    _PRELUDE
    + r"""
local meta, stream, once = KEYS[1], KEYS[2], KEYS[3]
if once then
  -- A retry of a publish that went through: answer its result, publish nothing.
  local seen = redis.call('GET', once)
  if seen then
    local first, first_epoch = string.match(seen, '^(%d+):(.*)$')
    return {tonumber(first), first_epoch, 0, 1}
  end
end
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- The history is new, expired, or lost with Redis's data: a new epoch starts.
  -- Stream entries that outlived their meta (evicted alone) belong to the old one.
  epoch = ARGV[6]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch)
end
local offset = redis.call('HINCRBY', meta, 'offset', 1)
redis.call('HSET', meta, 'ttl', ARGV[5])
-- The id carries the offset, then the time kept: reads skip entries older than ttl.
local id = string.format('%d-%d', offset, now_ms())
local fields = {'data', ARGV[2]}
if ARGV[9] ~= '' then
  fields[3], fields[4] = 'from', ARGV[9]
end
redis.call('XADD', stream, id, unpack(fields))
-- `bytes` in the meta: the running total of the stream's entries, each counted as
-- its data's length plus a fixed overhead. An entry alone in its stream (a new
-- history, or a stream lost without its meta) restarts the count.
local overhead = tonumber(ARGV[8])
local total
local length = redis.call('XLEN', stream)
if length == 1 then
  total = #ARGV[2] + overhead
  redis.call('HSET', meta, 'bytes', total)
else
  total = redis.call('HINCRBY', meta, 'bytes', #ARGV[2] + overhead)
end
-- Trim the oldest entries: first down to `size`, then while over the byte cap.
local excess, cap, evicted = length - tonumber(ARGV[4]), tonumber(ARGV[7]), 0
if excess > 0 or (cap > 0 and total > cap) then
  local start, first_kept = '-', nil
  while not first_kept do
    local batch = redis.call('XRANGE', stream, start, '+', 'COUNT', math.max(excess, 0) + 16)
    if #batch == 0 then
      break
    end
    for _, entry in ipairs(batch) do
      if excess <= 0 and (cap <= 0 or total <= cap) then
        first_kept = entry[1]
        break
      end
      local flat, size = entry[2], 0
      for i = 1, #flat, 2 do
        if flat[i] == 'data' then
          size = #flat[i + 1]
        end
      end
      total = total - size - overhead
      if excess > 0 then
        excess = excess - 1
      else
        evicted = evicted + 1
      end
    end
    start = '(' .. batch[#batch][1]
  end
  if first_kept then
    redis.call('XTRIM', stream, 'MINID', first_kept)
  else
    redis.call('DEL', stream)
  end
  redis.call('HSET', meta, 'bytes', math.max(total, 0))
end
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('PEXPIRE', stream, ARGV[5])
if once then
  redis.call('SET', once, string.format('%d', offset) .. ':' .. epoch, 'PX', ARGV[10])
end
local payload = '\30{"offset":' .. string.format('%d', offset) .. ARGV[3] .. '\n' .. ARGV[2]
redis.call('PUBLISH', ARGV[1], payload)
return {offset, epoch, evicted, 0}
"""
)

#: Read a history. KEYS: meta hash, stream. ARGV: 1 ``since`` or ``newest``, 2 the first
#: offset wanted (``since`` only), 3 how many live entries at most (empty: all), 4 a
#: fresh epoch (empty: none), 5 the history ttl in ms (with 4). Without a history and
#: with a fresh epoch, the history starts now: the meta is created at offset 0 with that
#: epoch, expiring after the ttl (a publish then continues it). Returns ``{}`` without
#: history (and no fresh epoch), else ``{epoch, offset, entry...}`` where each entry is
#: ``{id, {field, value, ...}}``; oldest first for ``since``, newest first else.
READ_HISTORY: Final = (
    _PRELUDE
    + r"""
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'ttl')
if not meta[1] then
  if not ARGV[4] or ARGV[4] == '' then
    return {}
  end
  -- Stream entries that outlived their meta belong to an old epoch.
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[4], 'offset', 0, 'ttl', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {ARGV[4], '0'}
end
local cutoff = -1
if meta[3] then
  cutoff = now_ms() - tonumber(meta[3])
end
local count = tonumber(ARGV[3])
local out = {meta[1], meta[2]}
local function keep(batch)
  for _, entry in ipairs(batch) do
    if tonumber(string.match(entry[1], '%-(%d+)$')) >= cutoff then
      out[#out + 1] = entry
    end
  end
end
if count == 0 then
  return out
end
if ARGV[1] == 'newest' then
  -- Expired entries are the oldest: dropping them from the newest ones is exact.
  if count then
    keep(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', count))
  else
    keep(redis.call('XREVRANGE', KEYS[2], '+', '-'))
  end
  return out
end
-- Expired entries come first: read on past them until `count` live ones are found.
local start = ARGV[2]
while true do
  local batch
  if count then
    batch = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', count)
  else
    batch = redis.call('XRANGE', KEYS[2], start, '+')
  end
  keep(batch)
  if not count or #out - 2 >= count or #batch < count then
    return out
  end
  start = '(' .. batch[#batch][1]
end
"""
)

#: Publish without history, once per idempotency key. KEYS: the idempotency key. ARGV:
#: 1 the pub/sub channel, 2 the payload, 3 the window in ms. Returns what PUBLISH
#: returns (the receivers), or -1 when the key was seen within its window (a retry of
#: a publish that went through: nothing is published again).
PUBLISH_ONCE: Final = r"""
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then
  return -1
end
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""

#: Add or refresh presence entries. KEYS: entries hash, expiry sorted set. ARGV: 1 ttl
#: in ms, then pairs of client id and entry JSON. Both keys live at least ttl longer.
PRESENCE_ADD: Final = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
local expires = now_ms() + ttl
local entries, expiries, n = {}, {}, 0
for i = 2, #ARGV, 2 do
  entries[n + 1], entries[n + 2] = ARGV[i], ARGV[i + 1]
  expiries[n + 1], expiries[n + 2] = expires, ARGV[i]
  n = n + 2
end
call_sliced('HSET', KEYS[1], entries)
call_sliced('ZADD', KEYS[2], expiries)
for _, key in ipairs(KEYS) do
  -- Never shorten: other processes' entries in the key may live longer.
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
return n / 2
"""
)

#: Read presence. KEYS: entries hash, expiry sorted set. Drops the entries whose
#: expiry has passed (their process stopped refreshing them), then returns the rest
#: as ``HGETALL`` does.
PRESENCE_READ: Final = (
    _PRELUDE
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms())
if #expired > 0 then
  call_sliced('HDEL', KEYS[1], expired)
  call_sliced('ZREM', KEYS[2], expired)
end
return redis.call('HGETALL', KEYS[1])
"""
)


class LuaScript:
    """A Lua script run by its SHA1 (``EVALSHA``), sent whole only when Redis lacks it.

    Args:
        source: the script.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(
        self, client: Redis, keys: Sequence[str], args: Sequence[bytes | str | int]
    ) -> Any:
        """Run the script on ``client``.

        Args:
            client: the connection pool to run it on.
            keys: the keys it touches (``KEYS``).
            args: its arguments (``ARGV``).

        Returns:
            The script's reply, as redis-py parses it (bytes, ints, nested lists).

        Raises:
            RedisError: the command failed (connection, timeout, script error).
        """
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # A restarted (or flushed) Redis forgot the script: EVAL runs it, caching
            # it again. NOSCRIPT means it did not run, so running it now is no retry.
            return await client.eval(self.source, len(keys), *keys, *args)


def milliseconds(seconds: float) -> int:
    """Turn a ttl in seconds into the whole milliseconds Redis takes (at least 1).

    Args:
        seconds: the ttl; fractions are kept to the millisecond, rounded up.

    Returns:
        The ttl in ms; never 0, which PEXPIRE would take as "delete now".
    """
    return max(1, math.ceil(seconds * 1000))
