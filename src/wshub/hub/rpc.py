"""RPC: application methods that protocol clients call by name (``@hub.rpc``).

A handler is ``async def handler(conn: Connection, params) -> result``. When ``params``
is annotated with a Pydantic model, the frame's ``params`` are validated into it (an
invalid one is refused with ``bad_request``, naming the field); otherwise the handler
gets them as decoded. A Pydantic result (or a list or dict of them) is sent as
``model_dump(mode="json")``; anything else must be JSON as it is. The registry stays
introspectable for schema generators: `RPCRegistry.methods` maps each name to its
`RPCMethod` (``handler``, ``params_model``, ``result_model``, ``summary``).

The protocol endpoint runs every call in a task of its own, tracked per connection by
`RPCCalls` (at most ``max_rpc_in_flight`` at once, all cancelled when the connection
ends), so a slow handler delays neither pings nor deliveries nor the connection's
other frames. Errors are the endpoint's to answer: `wshub.core.errors.RPCError` gives
its code and message, `ProtocolError` its code, anything else ``internal`` (logged).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import re
import typing
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from wshub.core.errors import ErrorCode, ProtocolError
from wshub.hub.connection import Connection

__all__ = ["RPCCalls", "RPCHandler", "RPCMethod", "RPCRegistry", "invalid_params_message"]

logger = logging.getLogger("wshub.rpc")

RPCHandler = Callable[..., Awaitable[Any]]
H = TypeVar("H", bound=RPCHandler)

#: A method name: what ``op: rpc`` frames may carry (1 to 100 characters, see `Op.RPC`).
METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,99}")
#: Validation errors named in one ``bad_request`` message, at most.
_MAX_ERRORS_SHOWN = 5


@dataclasses.dataclass(frozen=True, slots=True)
class RPCMethod:
    """One registered RPC method.

    Attributes:
        name: what clients send as ``method``.
        handler: the ``async def handler(conn, params)`` (or ``handler(conn)``).
        params_model: the Pydantic model ``params`` is validated into, or None (any JSON).
        result_model: the Pydantic model the handler's return annotation names, or None.
        summary: the handler's docstring ("" without one).
        takes_params: whether the handler has a ``params`` parameter.
    """

    name: str
    handler: RPCHandler
    params_model: type[BaseModel] | None
    result_model: type[BaseModel] | None
    summary: str = ""
    takes_params: bool = True

    async def call(self, conn: Connection, params: Any) -> Any:
        """Validate ``params``, run the handler and return its result as JSON-ready values.

        Raises:
            ProtocolError: ``bad_request`` when ``params`` does not fit ``params_model``.
            Exception: whatever the handler raises.
        """
        if self.params_model is not None:
            try:
                # Absent (or null) params validate as {}: a model whose fields all have defaults.
                params = self.params_model.model_validate({} if params is None else params)
            except ValidationError as exc:
                raise ProtocolError(ErrorCode.BAD_REQUEST, invalid_params_message(exc)) from None
        if self.takes_params:
            result = await self.handler(conn, params)
        else:
            result = await self.handler(conn)
        return jsonable(result)


def invalid_params_message(exc: ValidationError) -> str:
    """``invalid params: room: Field required; limit: ...``, from pydantic's error locations."""
    errors = exc.errors()
    parts = []
    for error in errors[:_MAX_ERRORS_SHOWN]:
        where = ".".join(str(part) for part in error["loc"]) or "params"
        parts.append(f"{where}: {error['msg']}")
    if len(errors) > _MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - _MAX_ERRORS_SHOWN} more")
    return "invalid params: " + "; ".join(parts)


def jsonable(value: Any) -> Any:
    """``value`` with every Pydantic model in it (also in lists, tuples, dicts) dumped as JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    return value


def _model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def describe(name: str, handler: RPCHandler) -> RPCMethod:
    """Read a handler's signature and annotations into an `RPCMethod`.

    Raises:
        TypeError: ``handler`` is not an ``async def`` taking ``(conn)`` or ``(conn, params)``.
        ValueError: ``name`` is not a method name (`METHOD_NAME`).
    """
    if not METHOD_NAME.fullmatch(name):
        raise ValueError(f"RPC method name {name!r} must match {METHOD_NAME.pattern}")
    if not inspect.iscoroutinefunction(handler):
        raise TypeError(f"RPC method {name!r}: the handler must be an async def")
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in inspect.signature(handler).parameters.values() if p.kind in kinds]
    if not positional:
        raise TypeError(f"RPC method {name!r}: the handler must take (conn) or (conn, params)")
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # an annotation that does not resolve: no models, any JSON
        hints = {}
    takes_params = len(positional) >= 2
    params_model = _model(hints.get(positional[1].name)) if takes_params else None
    return RPCMethod(
        name=name,
        handler=handler,
        params_model=params_model,
        result_model=_model(hints.get("return")),
        summary=inspect.getdoc(handler) or "",
        takes_params=takes_params,
    )


class RPCRegistry:
    """The RPC methods of one hub, by name."""

    def __init__(self) -> None:
        self._methods: dict[str, RPCMethod] = {}

    def register(self, name: str, handler: RPCHandler) -> RPCMethod:
        """Register ``handler`` as method ``name``.

        Raises:
            ValueError: ``name`` is taken already, or is not a method name.
            TypeError: ``handler`` is not a fitting ``async def``.
        """
        if name in self._methods:
            raise ValueError(f"RPC method {name!r} is registered already")
        method = self._methods[name] = describe(name, handler)
        return method

    def decorator(self, name: str | None = None) -> Callable[[H], H]:
        """``@hub.rpc("name")`` (or ``@hub.rpc()``: the function's name); returns it unchanged."""

        def register(handler: H) -> H:
            self.register(name if name is not None else handler.__name__, handler)
            return handler

        return register

    def methods(self) -> dict[str, RPCMethod]:
        """Every registered method by name (a copy), in registration order."""
        return dict(self._methods)

    def get(self, name: str) -> RPCMethod | None:
        """The method registered as ``name``, or None."""
        return self._methods.get(name)

    async def call(self, conn: Connection, name: str, params: Any) -> Any:
        """Run method ``name`` for ``conn`` and return its JSON-ready result.

        Raises:
            ProtocolError: ``not_found`` for an unknown method, ``bad_request`` for
                invalid params.
            Exception: whatever the handler raises (`RPCError` included).
        """
        method = self._methods.get(name)
        if method is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"unknown method {name!r}")
        return await method.call(conn, params)


class RPCCalls:
    """One connection's RPC calls in flight, each in a task of its own.

    Args:
        limit: calls running at once, at most (``max_rpc_in_flight``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def full(self) -> bool:
        """Whether ``limit`` calls are running: the next one is refused."""
        return len(self._tasks) >= self.limit

    def start(self, make: Callable[[], Coroutine[Any, Any, Any]], name: str = "wshub-rpc") -> bool:
        """Run ``make()`` (a call that answers itself) in a task, unless `full`.

        Returns:
            False when `full`: nothing was run.
        """
        if self.full:
            return False
        task = asyncio.create_task(self._run(make), name=name)
        self._tasks.add(task)
        return True

    async def _run(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        try:
            # Made here: a task cancelled before it ran leaves no coroutine un-awaited.
            await make()
        except Exception:  # the endpoint answers every error; this is a last resort
            logger.exception("an RPC call failed outside its handler")
        finally:
            # Freed as soon as the call is answered, not one loop iteration later.
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        """Cancel every call in flight (the connection ended) and wait for them to finish."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
