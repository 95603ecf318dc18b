"""JWTs shaped like Omnitool's: `scopes: [{action, subject, conditions}]`, `issuerId`, `tokenId`, `iat`, `exp`.

HS256 only (an explicit allow-list: `alg: none` and RS/HS confusion are refused by PyJWT before any claim is
read), and our `iss` and `aud` are required and checked. A verified token's claims are kept in a bounded
cache (decoding costs ~26 µs); its expiry is checked again on every use, and revocation is the caller's look-up.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from conveyor.errors import UnauthorizedError, ValidationError

ALGORITHMS = ["HS256"]
MAX_TOKEN_CHARS = 8192
MAX_SCOPES = 20
MAX_RECIPES_PER_SCOPE = 1000
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
_CACHE_MAX = 4096

# The pairs that may run a recipe: Omnitool's `exec Workflow`, and `manage`/`all` which include everything.
RUN_ACTIONS = frozenset({"exec", "manage"})
RUN_SUBJECTS = frozenset({"Workflow", "all"})


@dataclass(frozen=True, slots=True)
class Scope:
    """One permission: `action` on `subject`, limited to `recipe_ids` unless that is None."""

    action: str
    subject: str
    recipe_ids: frozenset[str] | None = None

    def grants(self, action: str, subject: str) -> bool:
        return self.action in (action, "manage") and self.subject in (subject, "all")

    def to_claim(self) -> dict[str, Any]:
        conditions = {} if self.recipe_ids is None else {"id": {"$in": sorted(self.recipe_ids)}}
        return {"action": self.action, "subject": self.subject, "conditions": conditions}


def make_scope(action: str, subject: str, recipe_ids: Iterable[str] = ()) -> Scope:
    """A scope from user input, checked: names are short identifiers, recipe ids are bounded."""
    for what, value in (("action", action), ("subject", subject)):
        if not _NAME.match(value):
            raise ValidationError(f"{what} must be a name of letters, digits and _.:- (at most 64), got {value!r}")
    ids = [str(r) for r in recipe_ids]
    if len(ids) > MAX_RECIPES_PER_SCOPE or any(not 0 < len(r) <= 64 or "\x00" in r for r in ids):
        raise ValidationError(f"at most {MAX_RECIPES_PER_SCOPE} recipe ids of 1-64 characters")
    return Scope(action, subject, frozenset(ids) if ids else None)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """A verified token's content."""

    token_id: str
    user_id: str
    issued_at: int
    expires_at: int  # epoch seconds, as `exp`
    scopes: tuple[Scope, ...]


class TokenCodec:
    """Signs and verifies tokens with one secret, issuer and audience."""

    def __init__(self, secret: bytes, *, issuer: str, audience: str) -> None:
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self._verified: dict[str, TokenClaims] = {}

    def issue(
        self, user_id: str, scopes: Iterable[Scope], expires_in_ms: int, *, not_after: int | None = None
    ) -> tuple[str, TokenClaims]:
        """A new token for `user_id`, valid for `expires_in_ms` milliseconds (rounded up to the second), and
        never past `not_after` (epoch seconds) when given."""
        now = time.time()
        expires_at = math.ceil(now + expires_in_ms / 1000)
        claims = TokenClaims(
            token_id=str(uuid.uuid4()),
            user_id=user_id,
            issued_at=int(now),
            expires_at=expires_at if not_after is None else min(expires_at, not_after),
            scopes=tuple(scopes),
        )
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "issuerId": user_id,
            "tokenId": claims.token_id,
            "iat": claims.issued_at,
            "exp": claims.expires_at,
            "scopes": [scope.to_claim() for scope in claims.scopes],
        }
        return jwt.encode(payload, self._secret, algorithm="HS256"), claims

    def verify(self, token: str) -> TokenClaims:
        """The claims of a valid, unexpired token of ours; anything else raises UnauthorizedError (401)."""
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at <= time.time():
                self._verified.pop(token, None)
                raise UnauthorizedError("token expired")
            return cached
        if len(token) > MAX_TOKEN_CHARS:
            raise UnauthorizedError("token is not valid")
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("token expired") from None
        except jwt.PyJWTError as exc:
            raise UnauthorizedError(f"token is not valid: {exc}") from None
        claims = _claims(payload)
        if len(self._verified) >= _CACHE_MAX:
            self._verified.clear()  # simplest bound: tokens are re-verified after a clear
        self._verified[token] = claims
        return claims

    def forget(self, token_id: str) -> None:
        """Drops a revoked token from the cache (its look-up would refuse it anyway)."""
        for token, claims in list(self._verified.items()):
            if claims.token_id == token_id:
                self._verified.pop(token, None)


def _claims(payload: Mapping[str, Any]) -> TokenClaims:
    token_id, user_id = payload.get("tokenId"), payload.get("issuerId")
    raw_scopes = payload.get("scopes")
    if not isinstance(token_id, str) or not isinstance(user_id, str) or not isinstance(raw_scopes, list):
        raise UnauthorizedError("token is not valid: tokenId, issuerId and scopes are required")
    if len(raw_scopes) > MAX_SCOPES:
        raise UnauthorizedError("token is not valid: too many scopes")
    return TokenClaims(
        token_id=token_id,
        user_id=user_id,
        issued_at=int(payload["iat"]),
        expires_at=int(payload["exp"]),
        scopes=tuple(_scope(raw) for raw in raw_scopes),
    )


def _scope(raw: Any) -> Scope:
    if not isinstance(raw, dict) or not isinstance(raw.get("action"), str) or not isinstance(raw.get("subject"), str):
        raise UnauthorizedError("token is not valid: a scope needs an action and a subject")
    conditions = raw.get("conditions") or {}
    if not isinstance(conditions, dict) or set(conditions) - {"id"}:
        # A condition we cannot enforce must not be dropped silently: that would widen the token.
        raise UnauthorizedError("token is not valid: only the `id` condition is supported")
    recipe_ids: frozenset[str] | None = None
    if "id" in conditions:
        cond = conditions["id"]
        if isinstance(cond, str):
            recipe_ids = frozenset({cond})
        elif isinstance(cond, dict) and set(cond) == {"$in"} and isinstance(cond["$in"], list):
            if not all(isinstance(r, str) for r in cond["$in"]):
                raise UnauthorizedError("token is not valid: recipe ids must be strings")
            recipe_ids = frozenset(cond["$in"])
        else:
            raise UnauthorizedError('token is not valid: the id condition must be "<id>" or {"$in": [...]}')
    return Scope(raw["action"], raw["subject"], recipe_ids)
