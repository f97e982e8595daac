"""Answering one client command: its result as a reply, or the error it raised.

Every error an op handler or an RPC can raise maps to an error reply here; an
unexpected exception is logged (without the frame, which may carry a token) and
answered ``internal``. See `wshub.server.endpoint`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from wshub.core.errors import BrokerUnavailable, ErrorCode, ProtocolError, PublishTimeout, RPCError
from wshub.core.protocol import Command, Op, error_reply, reply
from wshub.hub.connection import Connection

__all__ = ["Result", "answer"]

logger = logging.getLogger("wshub.endpoint")

Result = dict[str, Any] | None


async def answer(
    conn: Connection, command: Command, run: Awaitable[Result], send_result: bool = True
) -> bool:
    """Await ``run`` and send its result (or the error it raised) to the client.

    Returns:
        Whether ``run`` succeeded.
    """
    request_id = command.id
    try:
        result = await run
    except ProtocolError as exc:
        # Errors raised past parsing (hub limits, permissions) do not know the id.
        error_id = request_id if exc.request_id is None else exc.request_id
        conn.send(error_reply(error_id, exc.code, exc.message))
        return False
    except RPCError as exc:  # an RPC handler refused, with a code of its own
        conn.send(error_reply(request_id, exc.code, exc.message))
        return False
    except PublishTimeout as exc:  # a BrokerUnavailable, but maybe published
        conn.send(error_reply(request_id, ErrorCode.TIMEOUT, str(exc) or "no answer"))
        return False
    except BrokerUnavailable as exc:
        conn.send(error_reply(request_id, ErrorCode.UNAVAILABLE, str(exc) or "broker down"))
        return False
    except Exception:
        # The op and channel give the context; the frame itself may carry a token.
        op, channel = command.op.value, command.channel
        if command.op is Op.RPC:
            method = command.method
            logger.exception(
                "connection %s (user %s): internal error in rpc %r",
                conn.id,
                conn.user,
                method,
                extra={"connection": conn.id, "user": conn.user, "op": op, "method": method},
            )
            conn.send(error_reply(request_id, ErrorCode.INTERNAL, "internal error"))
            return False
        logger.exception(
            "connection %s (user %s): internal error in %s on channel %s",
            conn.id,
            conn.user,
            op,
            channel,
            extra={"connection": conn.id, "user": conn.user, "op": op, "channel": channel},
        )
        conn.send(error_reply(request_id, ErrorCode.INTERNAL, "internal error"))
        return False
    if send_result and request_id is not None and result is not None:
        conn.send(reply(request_id, result))
    return True
