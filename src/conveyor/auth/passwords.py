"""Password hashing with argon2id (argon2-cffi's defaults, RFC 9106's second recommended profile)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
MAX_PASSWORD_CHARS = 1024  # hashing cost grows with length: bound what a login may make us hash


def hash_password(password: str) -> str:
    """The argon2id hash of `password`, salt and parameters included."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches; False for a user without a password or an unreadable hash."""
    if not password_hash or len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
