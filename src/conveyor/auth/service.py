"""Users, organizations and tokens in the store; `authenticate` turns an Authorization header into a Principal."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.auth.keys import KeyService, check_key, looks_like_key
from conveyor.auth.passwords import MAX_PASSWORD_CHARS, hash_password, verify_password
from conveyor.auth.principal import Principal
from conveyor.auth.tokens import Scope, TokenCodec
from conveyor.errors import ConflictError, ForbiddenError, NotFoundError, UnauthorizedError, ValidationError
from conveyor.store.db import Database, Op, Row

log = logging.getLogger("conveyor.auth")
ADMIN_PASSWORD_FILE = "initial-admin-password"
_CHECKED_MAX = 4096
MAX_NAME = 200

_USER_COLUMNS = "id, name, email, is_admin, disabled, org_id, created_at"
_TOKEN_OWNER = (
    "SELECT t.revoked_at, u.id, u.name, u.is_admin, u.disabled, u.org_id"
    " FROM auth_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1"
)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    token_id: str
    user_id: str
    expires_at_ms: int
    scopes: tuple[Scope, ...]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_name(name: str) -> str:
    name = name.strip()
    if not 0 < len(name) <= MAX_NAME or "\x00" in name:
        raise ValidationError(f"a name must be 1-{MAX_NAME} characters without NUL")
    return name


class AuthService:
    """Everything about who may call: users, organizations, tokens and their revocation."""

    def __init__(self, db: Database, codec: TokenCodec, *, max_token_ttl_s: int) -> None:
        self.db = db
        self.codec = codec
        self.max_token_ttl_ms = max_token_ttl_s * 1000
        # token -> (caller, the database's outside-writes counter when its token and user were read).
        self._checked: dict[str, tuple[Principal, int]] = {}
        self.keys = KeyService(db, forget=lambda key_id: self._forget(api_key_id=key_id))

    # Users and organizations

    async def ensure_admin(self, name: str, password: str, data_dir: Path) -> Row | None:
        """Creates the first admin when there is no user yet; returns it (None when users exist).

        Without a configured password a random one is written to `<data_dir>/initial-admin-password` (0600):
        it is never logged.
        """
        if await self.db.fetch_val("SELECT COUNT(*) FROM users") > 0:
            return None
        generated = not password
        password = password or secrets.token_urlsafe(18)
        try:
            admin = await self.create_user(name, password=password, is_admin=True)
        except ConflictError:
            return None  # another process created it first (and wrote its password)
        if generated:
            # Written only by the process whose admin was stored, so the file never holds a password of nobody.
            path = data_dir / ADMIN_PASSWORD_FILE
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(password + "\n")
            log.warning("created admin user %r; its password is in %s", name, path)
        return admin

    async def create_user(
        self,
        name: str,
        *,
        password: str | None = None,
        is_admin: bool = False,
        email: str | None = None,
        org: str | None = None,
    ) -> Row:
        name = _check_name(name)
        if password is not None and not 8 <= len(password) <= MAX_PASSWORD_CHARS:
            raise ValidationError(f"a password must be 8-{MAX_PASSWORD_CHARS} characters")
        if email is not None and (len(email) > 320 or "@" not in email):
            raise ValidationError("email must be an address of at most 320 characters")
        org_id = (await self.ensure_org(org))["id"] if org else None
        password_hash = await asyncio.to_thread(hash_password, password) if password else None
        user_id = str(uuid.uuid4())
        rows = await self.db.write(
            Op(
                "INSERT INTO users (id, name, email, password_hash, is_admin, disabled, created_at, org_id)"
                " VALUES ($1, $2, $3, $4, $5, 0, $6, $7) ON CONFLICT (name) DO NOTHING",
                (user_id, name, email, password_hash, int(is_admin), _now_ms(), org_id),
            )
        )
        if rows[0] != 1:
            raise ConflictError(f"user {name!r} already exists")
        return await self.get_user(user_id)

    async def ensure_org(self, name: str) -> Row:
        """The organization named `name`, created if missing."""
        name = _check_name(name)
        await self.db.write(
            Op(
                "INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                (str(uuid.uuid4()), name, _now_ms()),
            )
        )
        row = await self.db.fetch_one("SELECT id, name, created_at FROM organizations WHERE name = $1", name)
        if row is None:
            raise NotFoundError("organization", name)
        return row

    async def get_user(self, ref: str) -> Row:
        """A user by id or name."""
        if "\x00" in ref or len(ref) > MAX_NAME:
            raise NotFoundError("user", ref[:MAX_NAME])
        row = await self.db.fetch_one(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1 OR name = $1", ref)
        if row is None:
            raise NotFoundError("user", ref)
        return row

    async def list_users(self) -> list[Row]:
        return await self.db.fetch_all(
            f"SELECT u.{_USER_COLUMNS.replace(', ', ', u.')}, o.name AS org FROM users u"
            " LEFT JOIN organizations o ON o.id = u.org_id ORDER BY u.created_at, u.id"
        )

    async def set_disabled(self, ref: str, disabled: bool) -> Row:
        """Disables (or enables again) a user: every token of theirs stops working at once."""
        user = await self.get_user(ref)
        await self.db.execute("UPDATE users SET disabled = $2 WHERE id = $1", user["id"], int(disabled))
        self._forget(user_id=user["id"])
        return await self.get_user(user["id"])

    async def check_password(self, name: str, password: str) -> Row:
        """The user these credentials belong to; 401 alike for an unknown name, a wrong password or a disabled user."""
        row = None
        if len(name) <= MAX_NAME and "\x00" not in name:
            row = await self.db.fetch_one(f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE name = $1", name)
        ok = await asyncio.to_thread(verify_password, row["password_hash"] if row else None, password)
        if row is None or not ok or row["disabled"]:
            raise UnauthorizedError("wrong user name or password")
        return row

    # Tokens

    async def issue_token(
        self, user: Row, scopes: Iterable[Scope], expires_in_ms: int, *, parent: Principal | None = None
    ) -> IssuedToken:
        """Signs a token for `user` and records it (so that it can be revoked by its id).

        A token issued by another (`parent`) lives no longer than it and is revoked with it.
        """
        scopes = tuple(scopes)
        if not scopes:
            raise ValidationError("a token needs at least one scope")
        if not 0 < expires_in_ms <= self.max_token_ttl_ms:
            raise ValidationError(f"expires_in must be 1-{self.max_token_ttl_ms} milliseconds")
        if user["disabled"]:
            raise ForbiddenError(f"user {user['name']!r} is disabled")
        not_after = parent.token_expires_at if parent is not None else None
        token, claims = self.codec.issue(user["id"], scopes, expires_in_ms, not_after=not_after)
        await self.db.execute(
            "INSERT INTO auth_tokens (id, user_id, scopes, created_at, expires_at, parent_id)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            claims.token_id,
            user["id"],
            json.dumps([s.to_claim() for s in scopes]),
            _now_ms(),
            claims.expires_at * 1000,
            parent.token_id if parent is not None else None,
        )
        return IssuedToken(token, claims.token_id, user["id"], claims.expires_at * 1000, scopes)

    async def revoke_token(self, token_id: str, *, by: Principal | None = None) -> None:
        """Revokes a token; `by` (an API caller) may revoke only its own user's tokens unless an admin."""
        row = None
        if len(token_id) <= 64 and "\x00" not in token_id:
            row = await self.db.fetch_one("SELECT id, user_id, revoked_at FROM auth_tokens WHERE id = $1", token_id)
        if row is None or (by is not None and not by.acts_as_admin and row["user_id"] != by.user_id):
            raise NotFoundError("token", token_id)
        if by is not None and token_id != by.token_id and not by.unlimited_manager:
            # A narrow token (an exec token handed to a client) may revoke itself, not its user's other tokens.
            raise ForbiddenError("revoking another token needs a token with manage all")
        # The token and every token issued from it, down the line.
        revoked = await self.db.execute_returning(
            "WITH RECURSIVE tree(id) AS (SELECT CAST($1 AS VARCHAR(36))"
            " UNION SELECT t.id FROM auth_tokens t JOIN tree ON t.parent_id = tree.id)"
            " UPDATE auth_tokens SET revoked_at = $2 WHERE id IN (SELECT id FROM tree) AND revoked_at IS NULL"
            " RETURNING id",
            token_id,
            _now_ms(),
        )
        for gone in {token_id, *(r["id"] for r in revoked)}:
            self.codec.forget(gone)
            self._forget(token_id=gone)

    async def authenticate(self, authorization: str | None, acting_user: str | None = None) -> Principal:
        """The caller named by an `Authorization: Bearer <jwt or API key>` header (or a bare `<API key>`, as
        GPTBots' older docs show); 401 for anything else. `acting_user` (`?userId=`) is whom an org key acts for;
        any other credential may name only its own user (by id or name: Omni's clients send it), else 403."""
        if not authorization:
            raise UnauthorizedError("missing Authorization header (Bearer token)")
        scheme, _, credentials = authorization.partition(" ")
        if looks_like_key(authorization.strip()):
            return await self._authenticate_key(authorization.strip(), acting_user)
        if scheme.lower() != "bearer" or not credentials.strip():
            raise UnauthorizedError("Authorization must be `Bearer <token>`")
        token = credentials.strip()
        if looks_like_key(token):
            return await self._authenticate_key(token, acting_user)
        caller = await self._authenticate_jwt(token)
        _only_self(caller, acting_user)
        return caller

    async def _authenticate_jwt(self, token: str) -> Principal:
        claims = self.codec.verify(token)  # signature, audience and expiry, on every request
        # Revocation and disabling act at once: the token's row and its user are read on every request, unless
        # nothing was committed since they were last read — by this process (which drops the entry when it
        # revokes or disables) or, as the database tells cheaply (SQLite), by any other.
        version = self.db.outside_writes()
        checked = self._checked.get(token)
        if checked is not None and version is not None and checked[1] == version:
            return checked[0]
        row = await self.db.fetch_one(_TOKEN_OWNER, claims.token_id)
        if row is None or row["id"] != claims.user_id:
            raise UnauthorizedError("token is not valid: unknown token")
        if row["revoked_at"] is not None:
            raise UnauthorizedError("token revoked")
        if row["disabled"]:
            raise UnauthorizedError("user disabled")
        caller = Principal(
            user_id=row["id"],
            user_name=row["name"],
            is_admin=bool(row["is_admin"]),
            org_id=row["org_id"],
            scopes=claims.scopes,
            token_id=claims.token_id,
            token_expires_at=claims.expires_at,
        )
        if version is not None:
            if len(self._checked) >= _CHECKED_MAX:
                self._checked.clear()
            self._checked[token] = (caller, version)
        return caller

    async def _authenticate_key(self, key: str, acting_user: str | None) -> Principal:
        """The caller an API key stands for; see `keys_principal` for what each kind may do."""
        check_key(key)  # a malformed key or a wrong checksum is refused here, before the database is asked
        cache_key = key if acting_user is None else f"{key}\x00{acting_user}"
        version = self.db.outside_writes()  # as for JWTs: revocation acts at once, in every process
        checked = self._checked.get(cache_key)
        if checked is not None and version is not None and checked[1] == version:
            caller = checked[0]
        else:
            row = await self.keys.lookup(key)
            if row is None:
                raise UnauthorizedError("API key is not valid: unknown key")
            if row["revoked_at"] is not None:
                raise UnauthorizedError("API key revoked")
            if row["disabled"]:
                raise UnauthorizedError("user disabled")
            caller = await self._key_principal(row, acting_user)
            if version is not None:
                if len(self._checked) >= _CHECKED_MAX:
                    self._checked.clear()
                self._checked[cache_key] = (caller, version)
        assert caller.api_key_id is not None
        await self.keys.touch(caller.api_key_id)
        return caller

    async def _key_principal(self, row: Row, acting_user: str | None) -> Principal:
        """A personal key acts as its user with `manage all`; a recipe key as its user with `exec Workflow` on its
        recipe only; an org key with `exec Workflow` for the organization's user named by `acting_user` (by id or
        name; default its creator). `acting_user` with another kind of key, or naming anyone outside the
        organization, is 403."""
        kind, key_id = row["kind"], row["id"]
        if kind != "org" and acting_user is not None and acting_user not in (row["user_id"], row["user_name"]):
            raise ForbiddenError(_SOMEONE_ELSE)
        user: Row = {"id": row["user_id"], "name": row["user_name"], "is_admin": row["is_admin"]}
        scopes = (Scope("manage", "all"),)
        if kind == "recipe":
            scopes = (Scope("exec", "Workflow", frozenset({row["recipe_id"]})),)
        elif kind == "org":
            scopes = (Scope("exec", "Workflow"),)
            if acting_user is not None:
                user = await self._org_member(row["org_id"], acting_user)
        return Principal(
            user_id=user["id"],
            user_name=user["name"],
            # An org key acting for an admin must not carry the admin's powers; a PAT acts as its user fully.
            is_admin=bool(user["is_admin"]) and kind == "personal",
            org_id=row["org_id"] or row["user_org_id"],
            scopes=scopes,
            api_key_id=key_id,
            key_kind=kind,
        )

    async def _org_member(self, org_id: str | None, ref: str) -> Row:
        row = None
        if org_id and 0 < len(ref) <= MAX_NAME and "\x00" not in ref:
            row = await self.db.fetch_one(
                "SELECT id, name, is_admin, disabled, org_id FROM users WHERE (id = $1 OR name = $1) AND org_id = $2",
                ref,
                org_id,
            )
        # The same answer for a user elsewhere and for nobody: the key learns nothing beyond its organization.
        if row is None:
            raise ForbiddenError(f"user {ref[:MAX_NAME]!r} is not in this key's organization")
        if row["disabled"]:
            raise ForbiddenError(f"user {row['name']!r} is disabled")
        return row

    def _forget(
        self, *, token_id: str | None = None, user_id: str | None = None, api_key_id: str | None = None
    ) -> None:
        for token, (caller, _) in list(self._checked.items()):
            if (
                (token_id is not None and caller.token_id == token_id)
                or caller.user_id == user_id
                or (api_key_id is not None and caller.api_key_id == api_key_id)
                # An org key's entries are cached under the users it acts for: disabling its creator drops them all.
                or (user_id is not None and caller.api_key_id is not None)
            ):
                self._checked.pop(token, None)

    async def token_info(self, token_id: str) -> dict[str, Any] | None:
        row = await self.db.fetch_one(
            "SELECT id, user_id, scopes, created_at, expires_at, revoked_at FROM auth_tokens WHERE id = $1", token_id
        )
        return None if row is None else dict(row)


_SOMEONE_ELSE = "userId names another user: only organization API keys act for other users"


def _only_self(caller: Principal, acting_user: str | None) -> None:
    """A token or personal/recipe key may send `userId` only naming its own user (403 otherwise)."""
    if acting_user is not None and acting_user not in (caller.user_id, caller.user_name):
        raise ForbiddenError(_SOMEONE_ELSE)
