"""Every frame the integration tests exchange through `WireClient`, checked against /asyncapi.json.

`install` wraps `WireClient.send` and `WireClient.next` (tests/integration/wire.py) so
that each frame sent and received is recorded, once per shape (the op and the JSON
types of its fields, recursively): a session exchanges many thousands of frames, but
only some hundreds of shapes. `problems` validates the recorded sample against the
matching message of the AsyncAPI document (`wshub.ops.asyncapi.document`, built in
process), so the document cannot drift from what the server really sends and accepts.

Which schema a frame is checked against:

- a client frame: the message named by its ``op``, but only once the server answered
  it with a ``result`` (or for ``pong``, which has no reply): frames the server
  refused are expected to be refused by the document too, which is not checked here;
- a server frame with an ``op``: that message (``welcome``, ``message``, ``gap``...);
  with ``error``: ``error``; with ``result``: the ``<op>Reply`` of the request it
  answers (matched by ``id`` on the same client; rpc results are any JSON, skipped).

tests/integration/conftest.py installs it for the session and checks at the end;
tests/integration/test_wire_conformance.py checks what was recorded so far.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from jsonschema import Draft7Validator, validators

from wshub.core.protocol import Op
from wshub.ops.asyncapi import document

from .wire import Frame, WireClient

#: The shapes recorded, each with one frame of that shape and its schema name.
SAMPLES: dict[tuple[str, str], Frame] = {}
#: Frames not matched to a schema, by reason (for the report; not failures).
SKIPPED: dict[str, int] = {}
_OPS = {op.value for op in Op}


def shape(value: object) -> object:
    """The JSON types of ``value``, recursively (lists by their items' distinct shapes)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(sorted({repr(shape(v)) for v in value})))
    if isinstance(value, bool):
        return "bool"
    return type(value).__name__


def _record(name: str, frame: Frame) -> None:
    key = (name, repr(shape(frame)))
    if key not in SAMPLES and len(SAMPLES) < 5000:
        SAMPLES[key] = frame


def _skip(reason: str) -> None:
    SKIPPED[reason] = SKIPPED.get(reason, 0) + 1


def _sent(client: WireClient, frame: object) -> None:
    if not isinstance(frame, dict):
        return
    op = frame.get("op")
    if op == Op.PONG:
        _record(Op.PONG, frame)
        return
    if not isinstance(op, str) or op not in _OPS:
        return
    request_id = frame.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        _skip("client frame without a usable id")  # none, or a bad-input test's
        return
    requests = client.__dict__.setdefault("_frame_log_requests", {})
    requests[request_id] = (op, frame)


def _received(client: WireClient, frame: Frame) -> None:
    op = frame.get("op")
    if isinstance(op, str):
        _record(op, frame)
        return
    if "error" in frame:
        _record("error", frame)
        request_id = frame.get("id")
        if isinstance(request_id, int | str):
            client.__dict__.get("_frame_log_requests", {}).pop(request_id, None)
        return
    if "result" not in frame:
        _skip("server frame without op, result or error")
        return
    requests: dict[Any, tuple[str, Frame]] = client.__dict__.get("_frame_log_requests", {})
    request_id = frame.get("id")
    request = requests.pop(request_id, None) if isinstance(request_id, int | str) else None
    if request is None:
        _skip("reply to an unknown request")
        return
    request_op, request_frame = request
    _record(request_op, request_frame)  # the server accepted it
    if request_op == Op.RPC:
        _skip("rpc result (any JSON)")
        return
    _record(f"{request_op}Reply", frame)


def install() -> Callable[[], None]:
    """Wrap `WireClient.send` and `WireClient.next` to record frames; returns the undo."""
    send, next_ = WireClient.send, WireClient.next

    async def recording_send(self: WireClient, frame: object) -> None:
        await send(self, frame)
        _sent(self, frame)

    async def recording_next(self: WireClient, within: float = 5.0) -> Frame:
        frame = await next_(self, within)
        if isinstance(frame, dict):
            _received(self, frame)
        return frame

    WireClient.send = recording_send  # type: ignore[method-assign]
    WireClient.next = recording_next  # type: ignore[method-assign]

    def undo() -> None:
        WireClient.send, WireClient.next = send, next_  # type: ignore[method-assign]

    return undo


def _strict_integers(checker: Any, instance: object) -> bool:
    # The server's rule (wshub.core.protocol): 1.0 and True are not integers.
    return isinstance(instance, int) and not isinstance(instance, bool)


#: Draft 7 with the server's integers; JSON Schema itself counts 1.0 as an integer.
StrictValidator = validators.extend(
    Draft7Validator,
    type_checker=Draft7Validator.TYPE_CHECKER.redefine("integer", _strict_integers),
)


@functools.cache
def message_validator(name: str) -> Any:
    """A validator of the payload of message ``name`` of the protocol's AsyncAPI document."""
    doc = document()
    if name not in doc["channels"]["hub"]["messages"]:
        raise KeyError(name)
    root = {
        "$ref": f"#/channels/hub/messages/{name}/payload",
        "channels": doc["channels"],
        "components": doc["components"],
    }
    return StrictValidator(root)


def validate(name: str, frame: object) -> list[str]:
    """What the document's message ``name`` finds wrong with ``frame``."""
    try:
        validator = message_validator(name)
    except KeyError:
        return [f"no message {name!r} in the document"]
    return [f"{list(e.absolute_path)}: {e.message[:300]}" for e in validator.iter_errors(frame)]


def problems() -> list[str]:
    """Every recorded frame the document does not accept, one line each."""
    found = []
    for (name, _), frame in sorted(SAMPLES.items(), key=lambda item: item[0]):
        for error in validate(name, frame):
            found.append(f"{name} {frame!r:.300}: {error}")
    return found
