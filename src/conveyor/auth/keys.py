"""API keys: their format (kind prefix, 256-bit body, checksum), hashing, and the `KeyService` that keeps them.

A key reads `cvy_<pat|org|rcp>_<43 base62 chars: 256 random bits><6 base62 chars: CRC32 of what precedes>`.
The checksum lets a mistyped or truncated key be refused (401) before any database look-up; it is no secret.
Only the SHA-256 of a key is stored (a key is 256 random bits, so a fast hash is enough: no dictionary to guess
from). Each key also has a Standard Webhooks signing secret, `whsec_<base64 of 32 random bytes>`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from conveyor.errors import NotFoundError, RateLimitedError, UnauthorizedError, ValidationError
from conveyor.store.db import Database, Op, Row

KEY_KINDS = {"personal": "pat", "org": "org", "recipe": "rcp"}
_KINDS_BY_TAG = {tag: kind for kind, tag in KEY_KINDS.items()}
KEY_START = "cvy_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGIT = {char: value for value, char in enumerate(_ALPHABET)}
BODY_CHARS = 43  # 62**43 > 2**256
CHECK_CHARS = 6  # 62**6 > 2**32
KEY_CHARS = len("cvy_pat_") + BODY_CHARS + CHECK_CHARS
DISPLAY_CHARS = len("cvy_pat_") + 6  # the `prefix` column: kind and the body's first characters
WEBHOOK_SECRET_START = "whsec_"
MAX_LIMIT = 1_000_000  # the largest per-key override of a limit
TOUCH_INTERVAL_MS = 60_000  # `last_used_at` is written at most this often per key
_LIMITS_MAX = 100_000
_KEY_COLUMNS = (
    "id, kind, name, user_id, org_id, recipe_id, prefix, rate_limit_per_min, max_concurrent_jobs, "
    "previous_secret_until, created_at, last_used_at, revoked_at"
)


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def _from_base62(text: str) -> int:
    value = 0
    for char in text:
        value = value * 62 + _DIGIT[char]
    return value


def _checksum(head: str) -> str:
    return _base62(zlib.crc32(head.encode("ascii")), CHECK_CHARS)


def generate_key(kind: str) -> str:
    """A new key of `kind` (personal, org or recipe): 256 random bits and a checksum."""
    if kind not in KEY_KINDS:
        raise ValidationError(f"kind must be one of {', '.join(KEY_KINDS)}")
    head = f"{KEY_START}{KEY_KINDS[kind]}_{_base62(secrets.randbits(256), BODY_CHARS)}"
    return head + _checksum(head)


def looks_like_key(credential: str) -> bool:
    """Whether a credential is meant as an API key (rather than a JWT), well-formed or not."""
    return credential.startswith(KEY_START)


def check_key(key: str) -> str:
    """The kind of a well-formed key; `UnauthorizedError` (401) for a malformed one or a wrong checksum.

    Pure computation: a key refused here never reaches the database.
    """
    tag = key[len(KEY_START) : len(KEY_START) + 3]
    if (
        len(key) != KEY_CHARS
        or not key.startswith(KEY_START)
        or tag not in _KINDS_BY_TAG
        or key[len(KEY_START) + 3] != "_"
        or any(char not in _DIGIT for char in key[len("cvy_pat_") :])
    ):
        raise UnauthorizedError("API key is malformed")
    head, check = key[:-CHECK_CHARS], key[-CHECK_CHARS:]
    if not secrets.compare_digest(_checksum(head), check):
        raise UnauthorizedError("API key is malformed (checksum mismatch)")
    return _KINDS_BY_TAG[tag]


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a key is stored and looked up by."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def display_prefix(key: str) -> str:
    """What lists show of a key: its kind and first few characters (about 36 of its 256 bits)."""
    return key[:DISPLAY_CHARS]


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and the base64 of 32 random bytes."""
    return WEBHOOK_SECRET_START + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just made: its row, and the key and webhook secret in clear (shown this once)."""

    row: Row
    key: str
    webhook_secret: str


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's own limits (None: the settings' defaults)."""

    rate_limit_per_min: int | None
    max_concurrent_jobs: int | None


class RateLimiter:
    """Token buckets per key, in this process's memory: a key may burst a minute's allowance, then refills.

    Each process keeps its own buckets, so N server processes allow up to N times the rate in total.
    """

    def __init__(self, *, max_keys: int = _LIMITS_MAX, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when counted)
        self._max_keys = max_keys
        self._clock = clock

    def take(self, key_id: str, per_min: int) -> float:
        """Takes one request from the key's bucket: 0 when allowed, else the seconds until one is available."""
        now = self._clock()
        rate = per_min / 60.0
        tokens, then = self._buckets.get(key_id, (float(per_min), now))
        tokens = min(float(per_min), tokens + (now - then) * rate)
        if tokens >= 1.0:
            if len(self._buckets) >= self._max_keys and key_id not in self._buckets:
                self._buckets.clear()  # bounded memory; forgetting buckets only grants fresh allowances
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / rate


class KeyService:
    """Creates, lists, revokes and looks up API keys; applies their limits.

    `forget(key_id)` is called on revocation so that the authentication cache drops the key at once.
    """

    def __init__(self, db: Database, *, forget: Callable[[str], None] | None = None) -> None:
        self.db = db
        self._forget = forget
        self.limiter = RateLimiter()
        self._limits: dict[str, KeyLimits] = {}
        self._touched: dict[str, int] = {}  # key id -> when last_used_at was last written (ms)

    async def create(
        self,
        owner: Row,
        kind: str,
        name: str,
        *,
        recipe_id: str | None = None,
        rate_limit_per_min: int | None = None,
        max_concurrent_jobs: int | None = None,
    ) -> CreatedKey:
        """A new key of `owner` (a users row). An org key needs an owner in an organization; a recipe key a
        recipe id (which the caller has checked the owner sees)."""
        name = name.strip()
        if not 0 < len(name) <= 200 or "\x00" in name:
            raise ValidationError("a key name must be 1-200 characters without NUL")
        if kind not in KEY_KINDS:
            raise ValidationError(f"kind must be one of {', '.join(KEY_KINDS)}")
        if (kind == "recipe") != (recipe_id is not None):
            raise ValidationError("a recipe key needs a recipe, and only a recipe key takes one")
        if kind == "org" and not owner["org_id"]:
            raise ValidationError(f"user {owner['name']!r} is in no organization: an org key needs one")
        for label, limit in (("rateLimitPerMin", rate_limit_per_min), ("maxConcurrentJobs", max_concurrent_jobs)):
            if limit is not None and not 1 <= limit <= MAX_LIMIT:
                raise ValidationError(f"{label} must be 1-{MAX_LIMIT}")
        key, secret, key_id = generate_key(kind), new_webhook_secret(), str(uuid.uuid4())
        await self.db.write(
            Op(
                "INSERT INTO api_keys (id, kind, name, user_id, org_id, recipe_id, prefix, key_hash, webhook_secret,"
                " rate_limit_per_min, max_concurrent_jobs, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
                " $10, $11, $12)",
                (
                    key_id,
                    kind,
                    name,
                    owner["id"],
                    owner["org_id"] if kind == "org" else None,
                    recipe_id,
                    display_prefix(key),
                    hash_key(key),
                    secret,
                    rate_limit_per_min,
                    max_concurrent_jobs,
                    _now_ms(),
                ),
            )
        )
        return CreatedKey(await self.get(key_id), key, secret)

    async def get(self, key_id: str, *, user_id: str | None = None) -> Row:
        """A key's row (no hash, no secret); another user's (unless `user_id` is None) is 404 like a missing one."""
        row = None
        if len(key_id) <= 64 and "\x00" not in key_id:
            row = await self.db.fetch_one(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        if row is None or (user_id is not None and row["user_id"] != user_id):
            raise NotFoundError("key", key_id)
        return row

    async def list_keys(self, user_id: str | None) -> list[Row]:
        """A user's keys, revoked ones included, oldest first (None: everyone's). Never the key or its secret."""
        if user_id is None:
            return await self.db.fetch_all(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return await self.db.fetch_all(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at, id", user_id
        )

    async def revoke(self, key_id: str, *, user_id: str | None) -> Row:
        """Revokes a key of `user_id` (None: anyone's); it stops working at once, in every process."""
        row = await self.get(key_id, user_id=user_id)
        await self.db.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", row["id"], _now_ms()
        )
        if self._forget is not None:
            self._forget(row["id"])
        self._limits.pop(row["id"], None)
        return await self.get(row["id"])

    async def rotate_webhook_secret(self, key_id: str, *, user_id: str | None, grace_s: int) -> tuple[str, int]:
        """A new webhook secret for a key; the old one still signs for `grace_s`. Returns (secret, until ms)."""
        row = await self.get(key_id, user_id=user_id)
        if row["revoked_at"] is not None:
            raise NotFoundError("key", key_id)
        secret, until = new_webhook_secret(), _now_ms() + grace_s * 1000
        await self.db.execute(
            "UPDATE api_keys SET previous_webhook_secret = webhook_secret, previous_secret_until = $2,"
            " webhook_secret = $3 WHERE id = $1",
            row["id"],
            until,
            secret,
        )
        return secret, until

    async def signing_secrets(self, key_id: str) -> list[str]:
        """The secrets a webhook of this key is signed with: the current one, and the previous during its grace."""
        row = await self.db.fetch_one(
            "SELECT webhook_secret, previous_webhook_secret, previous_secret_until FROM api_keys WHERE id = $1", key_id
        )
        if row is None:
            return []
        found = [row["webhook_secret"]]
        if row["previous_webhook_secret"] and (row["previous_secret_until"] or 0) > _now_ms():
            found.append(row["previous_webhook_secret"])
        return found

    async def lookup(self, key: str) -> Row | None:
        """The row of a well-formed key (see `check_key`) with its owner's name, flags and organization."""
        row = await self.db.fetch_one(
            "SELECT k.id, k.kind, k.user_id, k.org_id, k.recipe_id, k.revoked_at, k.rate_limit_per_min,"
            " k.max_concurrent_jobs, u.name AS user_name, u.is_admin, u.disabled, u.org_id AS user_org_id"
            " FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1",
            hash_key(key),
        )
        if row is not None:
            if len(self._limits) >= _LIMITS_MAX:
                self._limits.clear()
            self._limits[row["id"]] = KeyLimits(row["rate_limit_per_min"], row["max_concurrent_jobs"])
        return row

    async def touch(self, key_id: str) -> None:
        """Records that a key was used, writing `last_used_at` at most once a minute per key and process."""
        now = _now_ms()
        if now - self._touched.get(key_id, 0) < TOUCH_INTERVAL_MS:
            return
        if len(self._touched) >= _LIMITS_MAX:
            self._touched.clear()
        self._touched[key_id] = now
        await self.db.execute("UPDATE api_keys SET last_used_at = $2 WHERE id = $1", key_id, now)

    def admit(self, key_id: str, default_per_min: int) -> None:
        """Counts one request against the key's rate limit; `RateLimitedError` (429, Retry-After) past it."""
        limits = self._limits.get(key_id)
        per_min = (limits.rate_limit_per_min if limits else None) or default_per_min
        wait = self.limiter.take(key_id, per_min)
        if wait > 0:
            raise RateLimitedError(
                f"this API key is over its rate limit of {per_min} requests per minute",
                retry_after_s=max(1, math.ceil(wait)),
            )

    def concurrency_cap(self, key_id: str, default_max: int) -> int:
        """How many jobs the key may have pending or running at once (its own limit, else the default);
        `JobService.submit` counts against it in the insert itself."""
        limits = self._limits.get(key_id)
        return (limits.max_concurrent_jobs if limits else None) or default_max
