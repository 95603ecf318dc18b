"""The JWT signing secret: from settings, or generated once into the data directory (mode 0600)."""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from pathlib import Path

MIN_SECRET_BYTES = 32
SECRET_FILE = "jwt-secret"
log = logging.getLogger("conveyor.auth")


class SecretConfigError(Exception):
    """The configured secret cannot be used; start-up stops with this message."""


def load_signing_secret(configured: str, data_dir: Path) -> bytes:
    """The configured secret if set (at least 32 bytes), else the data directory's, created on first use."""
    if configured:
        secret = configured.encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise SecretConfigError(
                f"CONVEYOR_AUTH__JWT_SECRET is {len(secret)} bytes; HS256 needs at least {MIN_SECRET_BYTES} "
                "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        return secret
    return _secret_file(data_dir / SECRET_FILE)


def _secret_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_existing(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    return _read_existing(path)


def _read_existing(path: Path) -> bytes:
    # Another process may have created the file a moment ago and be writing it: wait briefly for its content.
    for _ in range(50):
        secret = path.read_bytes().strip()
        if secret:
            break
        time.sleep(0.02)
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretConfigError(f"{path} holds {len(secret)} bytes; a signing secret needs {MIN_SECRET_BYTES}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); setting it to 0600", path, mode)
        path.chmod(0o600)
    return secret
