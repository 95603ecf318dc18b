"""Checks of what callers send to the model store (`analytics.store`): names, branch names, file names and YAML,
connection targets. Each returns the value as it is stored, or raises the 4xx error that says what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from conveyor.analytics.semantic import MAX_FILE_BYTES, MODEL_FILE, NAME_RE
from conveyor.errors import BadRequestError, NotFoundError, PayloadTooLargeError

CONNECTION_KINDS = ("duckdb", "sqlite", "postgres")
MAX_MODEL_NAME = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BRANCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/-]{0,199}$")


def no_nul(value: str, kind: str) -> str:
    """An id or name from a caller: one holding NUL names nothing (PostgreSQL text cannot hold it)."""
    if "\x00" in value:
        raise NotFoundError(kind, value)
    return value


def model_name(name: str, what: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_MODEL_NAME or _CONTROL.search(name):
        raise BadRequestError(f"a {what} name is 1 to {MAX_MODEL_NAME} characters without control characters")
    return name


def branch_name(name: str) -> str:
    """A branch name: letters, digits, space and `._/-`, starting with a letter or digit, at most 200 characters."""
    if not _BRANCH_NAME.match(name) or name != name.strip():
        raise BadRequestError(
            "a branch name is 1 to 200 characters of letters, digits, space and ._/- starting with a letter or digit"
        )
    return name


def check_file_name(file_name: str) -> None:
    stem, dot, suffix = file_name.rpartition(".")
    if file_name == MODEL_FILE or (dot and suffix in ("view", "topic") and NAME_RE.match(stem)):
        return
    raise BadRequestError(
        f"file name {file_name[:80]!r} is not `model`, `<name>.view` or `<name>.topic` (name: an identifier of at most"
        " 64 characters)"
    )


def checked_yaml(file_name: str, text: str) -> str:
    """A file's YAML as stored: a known file name, at most the file size limit, and a YAML mapping."""
    check_file_name(file_name)
    if len(text.encode()) > MAX_FILE_BYTES:
        raise PayloadTooLargeError(f"file {file_name!r} is over {MAX_FILE_BYTES} bytes")
    if "\x00" in text:
        raise BadRequestError(f"file {file_name!r} holds a NUL character")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise BadRequestError(f"file {file_name!r} is not valid YAML{where}") from None
    if data is not None and not isinstance(data, dict):
        raise BadRequestError(f"file {file_name!r} must hold a YAML mapping")
    return text


def connection_target(kind: str, target: str) -> str:
    """A connection's target as stored: an existing file's absolute path, or a PostgreSQL URL."""
    if kind not in CONNECTION_KINDS:
        raise BadRequestError(f"a connection is one of {', '.join(CONNECTION_KINDS)}, not {kind!r}")
    if not target or len(target) > 4096 or "\x00" in target:
        raise BadRequestError("a connection needs a file path or URL of at most 4096 characters")
    if kind == "postgres":
        if not target.startswith(("postgresql://", "postgres://")):
            raise BadRequestError("a postgres connection is a postgresql:// URL")
        return target
    path = Path(target).expanduser().resolve()
    if not path.is_file():
        raise BadRequestError(f"no {kind} database file at {path}")
    return str(path)
