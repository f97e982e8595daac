"""JWT verification, key and algorithm rules, and where a handshake carries its token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.websockets import WebSocket

from wshub.server.auth import AuthError, Identity, JWTAuthenticator, authenticator_from_settings
from wshub.settings import Settings

SECRET = "unit-test-secret-that-is-long-enough-for-hs512-0123456789abcdef!"
OTHER_SECRET = "another-secret-nobody-should-trust-for-wshub-0123456789abcdefgh"


def claims(**extra: Any) -> dict[str, Any]:
    """Claims of a valid token for ada, overridable."""
    return {"sub": "ada", "exp": int(time.time()) + 300, **extra}


def hs256(key: str = SECRET, alg: str = "HS256", **extra: Any) -> str:
    """A token signed with an HMAC key."""
    return jwt.encode(claims(**extra), key, algorithm=alg)


def b64(obj: object) -> str:
    """Base64url of a JSON value, without padding, as in a JWT."""
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


def alg_none_token(**extra: Any) -> str:
    """An unsigned token crafted by hand: header {"alg":"none"}, an empty signature."""
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(**extra))}."


def public_pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of a private key's public half."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def refused(auth: JWTAuthenticator, token: str) -> str:
    """Verify a token that must be refused; return the AuthError's reason."""
    with pytest.raises(AuthError) as info:
        await auth.verify(token)
    return info.value.reason


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithms",
    [("HS256", "RS256"), ("ES256", "HS512"), ("HS384", "EdDSA")],
)
def test_hmac_and_public_key_algorithms_cannot_be_mixed(algorithms: tuple[str, ...]) -> None:
    """Mixing HMAC with public-key algorithms would let a public key act as an HMAC secret."""
    with pytest.raises(ValueError, match="cannot share one key"):
        JWTAuthenticator(SECRET, algorithms=algorithms)


@pytest.mark.parametrize("algorithms", [(), ("none",), ("HS256", "XS999"), ("hs256",)])
def test_unknown_or_no_algorithm_is_refused(algorithms: tuple[str, ...]) -> None:
    """An empty list, `none`, or a name outside the known set raises ValueError."""
    with pytest.raises(ValueError, match="algorithms must be chosen from"):
        JWTAuthenticator(SECRET, algorithms=algorithms)


def test_defaults() -> None:
    """HS256 only, anonymous off, cookie `wshub_token`, query parameter `token`."""
    auth = JWTAuthenticator(SECRET)
    assert auth.algorithms == ["HS256"]
    assert not auth.allow_anonymous
    assert (auth.cookie_name, auth.query_param) == ("wshub_token", "token")


# -- verification ------------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


async def test_valid_token_gives_user_expiry_and_info() -> None:
    """A valid HS256 token yields the `sub`, the `exp` and the `info` object."""
    exp = int(time.time()) + 60
    identity = await JWTAuthenticator(SECRET).verify(hs256(exp=exp, info={"name": "Ada"}))
    assert identity == Identity("ada", float(exp), {"name": "Ada"})


async def test_integer_user_claim_is_a_string_id_and_non_object_info_is_dropped() -> None:
    """A numeric custom user claim becomes its string; a non-object `info` is ignored."""
    auth = JWTAuthenticator(SECRET, user_claim="uid")
    identity = await auth.verify(hs256(uid=42, info="not-an-object"))
    assert identity.user == "42" and identity.info is None


@pytest.mark.parametrize("uid", ["", True, ["ada"], {"id": 1}, 1.5])
async def test_user_claim_that_is_not_an_id_is_refused(uid: object) -> None:
    """An empty, boolean, list, object or float user claim is not an id."""
    auth = JWTAuthenticator(SECRET, user_claim="uid")
    assert await refused(auth, hs256(uid=uid)) == "invalid token: claim 'uid' is not an id"


async def test_token_without_exp_never_expires_unless_required() -> None:
    """No `exp`: accepted with no expiry by default, refused with require_exp."""
    token = jwt.encode({"sub": "ada"}, SECRET, algorithm="HS256")
    assert (await JWTAuthenticator(SECRET).verify(token)).expires_at is None
    assert "MissingRequiredClaimError" in await refused(
        JWTAuthenticator(SECRET, require_exp=True), token
    )


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda: "not-a-jwt", "invalid token: DecodeError"),
        (lambda: "a.b.c", "invalid token: DecodeError"),
        (lambda: "", "invalid token: DecodeError"),
        (lambda: hs256(key=OTHER_SECRET), "invalid token: InvalidSignatureError"),
        (lambda: hs256(exp=int(time.time()) - 10), "token expired"),
        (lambda: hs256(nbf=int(time.time()) + 60), "token not valid yet"),
        (lambda: alg_none_token(), "invalid token: InvalidAlgorithmError"),
        (lambda: hs256(alg="HS512"), "invalid token: InvalidAlgorithmError"),
        (lambda: jwt.encode({"x": 1}, SECRET), "invalid token: MissingRequiredClaimError"),
        (lambda: hs256(sub=42), "invalid token: InvalidSubjectError"),
        (lambda: hs256(sub=["ada"]), "invalid token: InvalidSubjectError"),
    ],
    ids=[
        "malformed",
        "three-garbage-parts",
        "empty",
        "forged-signature",
        "expired",
        "not-yet-valid",
        "alg-none",
        "alg-outside-allow-list",
        "no-sub",
        "int-sub",
        "list-sub",
    ],
)
async def test_bad_tokens_are_refused(make_token: Callable[[], str], reason: str) -> None:
    """Every kind of bad token raises AuthError with a reason that never quotes the token."""
    # Tokens are made when the test runs: their claims carry times, and a long run
    # could outlast a token made when the module was collected.
    token = make_token()
    got = await refused(JWTAuthenticator(SECRET), token)
    assert got == reason
    assert not token or token not in got


async def test_tampered_payload_is_refused() -> None:
    """Changing the claims of a signed token breaks its signature."""
    header, _, signature = hs256().split(".")
    forged = f"{header}.{b64(claims(sub='admin'))}.{signature}"
    assert await refused(JWTAuthenticator(SECRET), forged) == "invalid token: InvalidSignatureError"


async def test_audience_and_issuer_must_match_when_configured() -> None:
    """With audience/issuer set, a missing or different `aud`/`iss` is refused."""
    auth = JWTAuthenticator(SECRET, audience="wshub", issuer="https://id.example")
    good = {"aud": "wshub", "iss": "https://id.example"}
    assert (await auth.verify(hs256(**good))).user == "ada"
    assert "InvalidAudienceError" in await refused(auth, hs256(**{**good, "aud": "other"}))
    assert "InvalidIssuerError" in await refused(auth, hs256(**{**good, "iss": "https://evil"}))
    assert "MissingRequiredClaimError" in await refused(auth, hs256(iss="https://id.example"))
    assert "MissingRequiredClaimError" in await refused(auth, hs256(aud="wshub"))


async def test_audience_is_refused_when_none_is_expected() -> None:
    """PyJWT refuses a token carrying `aud` when the authenticator expects none."""
    assert "InvalidAudienceError" in await refused(JWTAuthenticator(SECRET), hs256(aud="x"))


async def test_leeway_tolerates_small_clock_skew() -> None:
    """`exp` just passed and `nbf` just ahead are accepted within the leeway."""
    auth = JWTAuthenticator(SECRET, leeway=30)
    now = int(time.time())
    assert (await auth.verify(hs256(exp=now - 5))).user == "ada"
    assert (await auth.verify(hs256(nbf=now + 5))).user == "ada"
    assert await refused(auth, hs256(exp=now - 60)) == "token expired"


async def test_expiry_includes_the_leeway() -> None:
    """The connection expires when the token stops being accepted: `exp` plus the leeway."""
    exp = int(time.time()) + 60
    identity = await JWTAuthenticator(SECRET, leeway=10).verify(hs256(exp=exp))
    assert identity.expires_at == exp + 10


async def test_custom_user_and_info_claims() -> None:
    """`user_claim` and `info_claim` pick other claims."""
    auth = JWTAuthenticator(SECRET, user_claim="uid", info_claim="profile")
    token = jwt.encode({"uid": "bob", "profile": {"n": 1}}, SECRET, algorithm="HS256")
    assert await auth.verify(token) == Identity("bob", None, {"n": 1})
    assert "MissingRequiredClaimError" in await refused(auth, hs256())


# -- public keys ---------------------------------------------------------------------------


async def test_rs256_and_es256_from_a_public_key_file(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """`from_public_key_file` accepts RS256 and ES256 tokens signed by the matching private key."""
    rsa_file, ec_file = tmp_path / "rsa.pem", tmp_path / "ec.pem"
    rsa_file.write_bytes(public_pem(rsa_key))
    ec_file.write_bytes(public_pem(ec_key))
    rs = JWTAuthenticator.from_public_key_file(rsa_file)
    es = JWTAuthenticator.from_public_key_file(str(ec_file), audience="wshub")
    assert rs.algorithms == ["RS256", "ES256"]
    assert (await rs.verify(jwt.encode(claims(), rsa_key, algorithm="RS256"))).user == "ada"
    token = jwt.encode(claims(sub="bob", aud="wshub"), ec_key, algorithm="ES256")
    assert (await es.verify(token)).user == "bob"


async def test_token_signed_by_another_private_key_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """An RS256 token from a key pair we don't trust fails its signature check."""
    (tmp_path / "k.pem").write_bytes(public_pem(rsa_key))
    auth = JWTAuthenticator.from_public_key_file(tmp_path / "k.pem")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), stranger, algorithm="RS256")
    assert await refused(auth, token) == "invalid token: InvalidSignatureError"


async def test_allowed_algorithm_of_another_key_type_is_refused_not_raised(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """ES256 is allowed by default but the key is RSA: an AuthError, not PyJWT's InvalidKeyError."""
    (tmp_path / "k.pem").write_bytes(public_pem(rsa_key))
    auth = JWTAuthenticator.from_public_key_file(tmp_path / "k.pem")
    token = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    assert await refused(auth, token) == "invalid token: InvalidKeyError"


async def test_public_key_used_as_hmac_secret_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """The classic key-confusion attack: HS256 signed with the public PEM is refused."""
    pem = public_pem(rsa_key)
    auth = JWTAuthenticator(pem, algorithms=["RS256"])
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert await refused(auth, token) == "invalid token: InvalidAlgorithmError"


# -- settings --------------------------------------------------------------------------------


def test_no_key_in_settings_means_no_authenticator() -> None:
    """Without a secret or public key file, authentication is off."""
    assert authenticator_from_settings(Settings()) is None


def test_authenticator_from_a_secret_in_settings() -> None:
    """jwt_secret builds an HS256 authenticator with the settings' aud, iss, leeway and cookie."""
    settings = Settings(
        jwt_secret=SECRET,
        jwt_audience="wshub",
        jwt_issuer="me",
        jwt_leeway=3,
        auth_cookie="session",
        allow_anonymous=True,
    )
    auth = authenticator_from_settings(settings)
    assert isinstance(auth, JWTAuthenticator)
    assert auth.algorithms == ["HS256"] and auth.key == SECRET
    assert (auth.audience, auth.issuer, auth.leeway) == ("wshub", "me", 3)
    assert auth.cookie_name == "session" and auth.allow_anonymous


def test_authenticator_from_a_public_key_file_in_settings(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """jwt_public_key_file builds a public-key authenticator; jwt_algorithms narrows it."""
    (tmp_path / "k.pem").write_bytes(public_pem(ec_key))
    settings = Settings(jwt_public_key_file=str(tmp_path / "k.pem"), jwt_algorithms=" ES256 , ")
    auth = authenticator_from_settings(settings)
    assert isinstance(auth, JWTAuthenticator)
    assert auth.algorithms == ["ES256"] and auth.key == public_pem(ec_key)


def test_mixed_algorithms_in_settings_are_refused() -> None:
    """A misconfigured jwt_algorithms fails loudly at startup."""
    with pytest.raises(ValueError):
        authenticator_from_settings(Settings(jwt_secret=SECRET, jwt_algorithms="HS256,RS256"))


# -- where the token comes from ------------------------------------------------------------------


def handshake(headers: dict[str, str] | None = None, query: str = "") -> WebSocket:
    """A Starlette WebSocket for a handshake with these headers and query string."""

    async def receive() -> Any:
        raise AssertionError("not used")

    async def send(message: Any) -> None:
        raise AssertionError("not used")

    scope = {
        "type": "websocket",
        "path": "/ws",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    return WebSocket(scope, receive, send)


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({"Authorization": "Bearer tok-h"}, "", "tok-h"),
        ({"Authorization": "bearer   tok-h  "}, "", "tok-h"),
        ({"Cookie": "a=1; wshub_token=tok-c"}, "", "tok-c"),
        ({}, "token=tok-q", "tok-q"),
        ({"Authorization": "Bearer tok-h", "Cookie": "wshub_token=tok-c"}, "token=tok-q", "tok-h"),
        ({"Cookie": "wshub_token=tok-c"}, "token=tok-q", "tok-c"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "token=tok-q", "tok-q"),
        ({"Authorization": "Bearer "}, "", None),
        ({"Cookie": "other=1"}, "token=", None),
        ({}, "", None),
    ],
)
def test_handshake_token_sources_in_order(
    headers: dict[str, str], query: str, expected: str | None
) -> None:
    """Bearer header first, then the cookie, then `?token=`; empty values count as absent."""
    assert JWTAuthenticator(SECRET).handshake_token(handshake(headers, query)) == expected


def test_cookie_and_query_names_are_configurable() -> None:
    """`cookie_name` and `query_param` choose where else to look."""
    auth = JWTAuthenticator(SECRET, cookie_name="session", query_param="jwt")
    assert auth.handshake_token(handshake({"Cookie": "session=c"})) == "c"
    assert auth.handshake_token(handshake({"Cookie": "wshub_token=c"}, "token=q")) is None
    assert auth.handshake_token(handshake(query="jwt=q")) == "q"


async def test_call_returns_none_without_a_token_and_raises_for_a_bad_one() -> None:
    """`auth(websocket)` is None without a token, the identity for a good one, AuthError else."""
    auth = JWTAuthenticator(SECRET)
    assert await auth(handshake()) is None
    identity = await auth(handshake({"Authorization": f"Bearer {hs256()}"}))
    assert identity is not None and identity.user == "ada"
    with pytest.raises(AuthError):
        await auth(handshake(query="token=garbage"))
