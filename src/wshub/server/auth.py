"""JWT authentication, and the settings that turn it on.

The scheme-free parts (`Identity`, `Authenticator`, the 4001 refusal) live in
`wshub.hub.identity` and are re-exported here; importing this module makes
`authenticator_from_settings` the default of every `Hub` built without ``auth=``.

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

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt

from wshub.hub.identity import (
    ANONYMOUS,
    Authenticator,
    AuthError,
    Identity,
    reject,
    set_default_authenticator,
    websocket_identity,
)
from wshub.settings import Settings

__all__ = [
    "ANONYMOUS",
    "AuthError",
    "Authenticator",
    "Identity",
    "JWTAuthenticator",
    "authenticator_from_settings",
    "reject",
    "websocket_identity",
]


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


set_default_authenticator(authenticator_from_settings)
