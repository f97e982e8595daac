"""Identity: who a connection belongs to, decided at the handshake or by the first frame.

An `Authenticator` turns a token into an `Identity` (or raises `AuthError`) and
knows where a handshake carries tokens: the ``Authorization: Bearer`` header, a
cookie, or the ``token`` query parameter (in that order). Browsers can set none
of the headers and query strings end up in access logs, so the protocol endpoint
also takes the token from a first frame ``{"op":"connect","token":...}``.

Failures close the connection with 4001 *after* accepting it: a browser never
sees the HTTP status of a refused handshake, so a close code is the only way it
can tell "bad token" (do not retry with it) from "network down" (retry).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any

from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketState

from wshub.core.codecs import refusal_subprotocol
from wshub.core.errors import CloseCode, WshubError
from wshub.core.protocol import truncate_reason
from wshub.settings import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection belongs to.

    Attributes:
        user: the user id, or None for an anonymous connection.
        expires_at: Unix time when the credentials expire (the connection then
            closes with 4001 unless refreshed), or None.
        info: public information about the user, shown to others in presence.
    """

    user: str | None = None
    expires_at: float | None = None
    info: dict[str, Any] | None = None


ANONYMOUS = Identity()


class AuthError(WshubError):
    """Credentials missing, invalid or expired; the connection closes with 4001.

    Attributes:
        reason: a short explanation, sent as the close reason (never the token).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Authenticator(abc.ABC):
    """Verifies tokens and finds them in a WebSocket handshake.

    Args:
        allow_anonymous: let connections without any token in as anonymous.
        cookie_name: the cookie that may carry the token.
        query_param: the query parameter that may carry the token.
    """

    def __init__(
        self,
        *,
        allow_anonymous: bool = False,
        cookie_name: str = "wshub_token",
        query_param: str = "token",
    ) -> None:
        self.allow_anonymous = allow_anonymous
        self.cookie_name = cookie_name
        self.query_param = query_param

    @abc.abstractmethod
    async def verify(self, token: str) -> Identity:
        """Check a token and return whom it identifies.

        Raises:
            AuthError: the token is invalid, expired or not yet valid.
        """

    def handshake_token(self, websocket: HTTPConnection) -> str | None:
        """Return the token the handshake carries, if any (header, cookie, then query).

        Any HTTP connection works: a WebSocket handshake, or a plain request (SSE).
        """
        scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return websocket.cookies.get(self.cookie_name) or (
            websocket.query_params.get(self.query_param) or None
        )

    async def __call__(self, websocket: HTTPConnection) -> Identity | None:
        """Authenticate a handshake.

        Returns:
            The identity, or None when the handshake carries no token (the caller
            then waits for a ``connect`` frame, or lets it in as anonymous).

        Raises:
            AuthError: a token was present and is not valid.
        """
        token = self.handshake_token(websocket)
        return None if token is None else await self.verify(token)


async def reject(websocket: WebSocket, code: int, reason: str) -> WebSocketException:
    """Accept (if needed) and build the exception that closes with ``code``.

    Raise the result from an endpoint or dependency: Starlette's exception handler
    then sends the close frame, and the endpoint's own code never runs.
    """
    if websocket.client_state is WebSocketState.CONNECTING:
        offered = list(websocket.scope.get("subprotocols") or [])
        # One of the client's offers, so that browsers see the close code (not 1006).
        await websocket.accept(subprotocol=refusal_subprotocol(offered))
    return WebSocketException(code=code, reason=truncate_reason(reason))


def websocket_identity(
    authenticator: Authenticator,
) -> Callable[[WebSocket], Any]:
    """Build a FastAPI dependency that authenticates a library-mode WebSocket endpoint.

    On failure the socket is accepted and closed with 4001 and a reason before the
    endpoint runs. Without a token, the connection is anonymous only when the
    authenticator allows it.

    Example::

        @app.websocket("/ws/chat")
        async def chat(ws: WebSocket, who: Identity = Depends(websocket_identity(auth))):
            async with hub.connect(ws, identity=who) as conn: ...
    """

    async def dependency(websocket: WebSocket) -> Identity:
        try:
            identity = await authenticator(websocket)
        except AuthError as exc:
            raise await reject(websocket, CloseCode.UNAUTHORIZED, exc.reason) from None
        if identity is not None:
            return identity
        if authenticator.allow_anonymous:
            return ANONYMOUS
        raise await reject(websocket, CloseCode.UNAUTHORIZED, "missing token")

    return dependency


#: Builds the authenticator a hub uses when given none, from its settings.
AuthenticatorFactory = Callable[[Settings], Authenticator | None]
_default_factory: AuthenticatorFactory = lambda settings: None  # noqa: E731


def set_default_authenticator(factory: AuthenticatorFactory) -> None:
    """Choose how a `Hub` built without ``auth=`` gets its authenticator.

    The hub knows no token scheme: `wshub.server.auth` registers the JWT one here
    when ``wshub`` is imported, so ``WSHUB_JWT_SECRET`` alone turns JWT auth on.
    """
    global _default_factory
    _default_factory = factory


def default_authenticator(settings: Settings) -> Authenticator | None:
    """The authenticator the registered factory builds for ``settings`` (None: anonymous)."""
    return _default_factory(settings)
