"""Password hashing with argon2id (argon2-cffi's defaults, RFC 9106's second recommended profile)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
MAX_PASSWORD_CHARS = 1024  # hashing cost grows with length: bound what a login may make us hash


def hash_password(password: str) -> str:
    """The argon2id hash of `password`, salt and parameters included."""
    return _hasher.hash(password)


_DUMMY_HASH = _hasher.hash("a password nobody has")


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches; False for a user without a password or an unreadable hash.

    An unknown user is checked against a dummy hash, so the time taken does not tell which names exist.
    """
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False
