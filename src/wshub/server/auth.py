"""Authentication: who a connection belongs to, decided at the handshake or by the first frame.

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jwt
from starlette.exceptions import WebSocketException
from starlette.websockets import WebSocket, WebSocketState

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

    def handshake_token(self, websocket: WebSocket) -> str | None:
        """Return the token the handshake carries, if any (header, cookie, then query)."""
        scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return websocket.cookies.get(self.cookie_name) or (
            websocket.query_params.get(self.query_param) or None
        )

    async def __call__(self, websocket: WebSocket) -> Identity | None:
        """Authenticate a handshake.

        Returns:
            The identity, or None when the handshake carries no token (the caller
            then waits for a ``connect`` frame, or lets it in as anonymous).

        Raises:
            AuthError: a token was present and is not valid.
        """
        token = self.handshake_token(websocket)
        return None if token is None else await self.verify(token)


_HMAC = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class JWTAuthenticator(Authenticator):
    """Verifies JSON Web Tokens with PyJWT.

    Only the algorithms listed are accepted: a token signed with another one, or
    with ``alg: none``, is refused. HMAC and public-key algorithms can't be mixed,
    so a public key can never be used as an HMAC secret.

    Args:
        key: the HMAC secret, or the PEM public key for RS*/PS*/ES*/EdDSA.
        algorithms: the accepted algorithms.
        audience, issuer: when set, the ``aud`` / ``iss`` claims must match.
        leeway: seconds of clock skew allowed on ``exp`` and ``nbf``; connections
            expire at ``exp`` plus the leeway, when the token stops being accepted.
        user_claim: the claim holding the user id.
        info_claim: the claim holding public user info (a JSON object), if any.
        require_exp: refuse tokens without ``exp``.
        **options: see `Authenticator`.

    Raises:
        ValueError: no algorithm, an unknown one, or HMAC mixed with public-key ones.
    """

    def __init__(
        self,
        key: str | bytes,
        *,
        algorithms: Iterable[str] = ("HS256",),
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        user_claim: str = "sub",
        info_claim: str = "info",
        require_exp: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.algorithms = list(algorithms)
        chosen = set(self.algorithms)
        if not chosen or not chosen <= _HMAC | _ASYMMETRIC:
            raise ValueError(f"algorithms must be chosen from {sorted(_HMAC | _ASYMMETRIC)}")
        if chosen & _HMAC and chosen & _ASYMMETRIC:
            raise ValueError("HMAC and public-key algorithms cannot share one key")
        self.key = key
        self.audience, self.issuer, self.leeway = audience, issuer, leeway
        self.user_claim, self.info_claim = user_claim, info_claim
        self._require = [user_claim, "exp"] if require_exp else [user_claim]

    @classmethod
    def from_public_key_file(cls, path: str | Path, **kwargs: Any) -> JWTAuthenticator:
        """Build an authenticator for RS256/ES256 tokens from a PEM public key file."""
        kwargs.setdefault("algorithms", ("RS256", "ES256"))
        return cls(Path(path).read_bytes(), **kwargs)

    async def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": self._require},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not valid yet") from None
        except jwt.PyJWTError as exc:
            # PyJWTError, not only InvalidTokenError: a token whose header names an allowed
            # algorithm of another key type (ES256 against an RSA key) raises InvalidKeyError.
            raise AuthError(f"invalid token: {type(exc).__name__}") from None
        user = claims[self.user_claim]
        if not isinstance(user, str | int) or isinstance(user, bool) or user == "":
            raise AuthError(f"invalid token: claim {self.user_claim!r} is not an id")
        info = claims.get(self.info_claim)
        expires = claims.get("exp")
        return Identity(
            str(user),
            # The connection lasts as long as the token would still be accepted.
            float(expires) + self.leeway if isinstance(expires, int | float) else None,
            info if isinstance(info, dict) else None,
        )


async def reject(websocket: WebSocket, code: int, reason: str) -> WebSocketException:
    """Accept (if needed) and build the exception that closes with ``code``.

    Raise the result from an endpoint or dependency: Starlette's exception handler
    then sends the close frame, and the endpoint's own code never runs.
    """
    if websocket.client_state is WebSocketState.CONNECTING:
        await websocket.accept()
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


def authenticator_from_settings(settings: Settings) -> Authenticator | None:
    """Build the JWT authenticator the settings describe, or None when they set no key."""
    common: dict[str, Any] = {
        "allow_anonymous": settings.allow_anonymous,
        "cookie_name": settings.auth_cookie,
        "audience": settings.jwt_audience,
        "issuer": settings.jwt_issuer,
        "leeway": settings.jwt_leeway,
    }
    algorithms = [a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()]
    if settings.jwt_public_key_file:
        return JWTAuthenticator.from_public_key_file(
            settings.jwt_public_key_file, algorithms=algorithms or ("RS256", "ES256"), **common
        )
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.get_secret_value()
        return JWTAuthenticator(secret, algorithms=algorithms or ("HS256",), **common)
    return None
