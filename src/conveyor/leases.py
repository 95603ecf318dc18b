"""Lease owners: who holds a job or a webhook delivery, and whether that holder is a dead process of this host.

An owner is `<host>:<pid>:<nonce>`. `<host>` must name one pid namespace of one boot of one machine, since a
pid only means something there: recovery checks an owner "on this host" by its pid (`os.kill(pid, 0)`) rather
than waiting for its lease to lapse. A hostname alone is not enough — the pods of one Deployment share their
first characters, containers of one pod share the whole name, and each has its own pid 1 — so `<host>` is the
hostname's start plus a digest of the full hostname, the kernel's boot id and the pid namespace.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import socket
from pathlib import Path


@functools.cache
def host_identity() -> str:
    """This process's host part of an owner (at most 35 characters)."""
    name = socket.gethostname()
    parts = [name]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        pass
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:10]
    return f"{name[:24]}-{digest}"


def new_owner() -> str:
    """A fresh owner for this process (VARCHAR(64): 35 + 1 + pid + 1 + 8 always fits)."""
    return f"{host_identity()}:{os.getpid()}:{secrets.token_hex(4)}"


def local_owners_pattern() -> str:
    """A `LIKE … ESCAPE '\\'` pattern matching the owners of this host (its `_` and `%` taken literally)."""
    prefix = f"{host_identity()}:"
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def owner_is_dead(owner: str) -> bool:
    """Whether the process named in an owner of this host (`host:pid:nonce`) has exited."""
    try:
        pid = int(owner.split(":")[1])
    except (IndexError, ValueError):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
