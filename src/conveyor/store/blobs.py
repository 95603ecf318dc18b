"""The blob store: file contents by opaque key, behind a protocol a shared backend (S3) can implement later.

`LocalBlobStore` keeps each blob as one file under a directory, fanned out as `ab/cd/<key>` so no directory
grows past a few thousand entries. A blob is written to a temporary file next to its final place and renamed
over it (`os.replace`), so a crash never leaves a half-written file under a key. File I/O runs in worker
threads in batches of about 1 MiB, so a large upload neither blocks the event loop nor sits whole in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import tempfile
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from conveyor.errors import NotFoundError, PayloadTooLargeError

if TYPE_CHECKING:
    from conveyor.settings import Settings

CHUNK_SIZE = 64 * 1024
BATCH_SIZE = 16 * CHUNK_SIZE  # bytes handed to one worker-thread call
_KEY = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob as written: its key, its size in bytes and the hex SHA-256 of its content."""

    key: str
    size: int
    sha256: str


class BlobStore(Protocol):
    """Where file contents live; keys are chosen by the store."""

    async def put_stream(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> StoredBlob:
        """Writes chunks to a new blob; over `max_bytes` nothing is kept and `PayloadTooLargeError` is raised."""
        ...

    async def put_bytes(self, data: bytes) -> StoredBlob:
        """Writes `data` as a new blob."""
        ...

    def open(self, key: str) -> AsyncGenerator[bytes, None]:
        """The blob's content in chunks of `CHUNK_SIZE` bytes; `NotFoundError` when there is none.

        An async generator, so a reader that stops early can close it (`contextlib.aclosing`).
        """
        ...

    async def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The whole blob; `PayloadTooLargeError` when it is over `max_bytes`, `NotFoundError` when missing."""
        ...

    async def delete(self, key: str) -> None:
        """Removes the blob; a missing blob is not an error."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A path on this machine holding the blob, or `None` when the backend keeps blobs elsewhere."""
        ...


def _too_large(max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"file is over the limit of {max_bytes:,} bytes", details={"max_bytes": max_bytes})


class _TempBlob:
    """A temporary file being written; `commit()` renames it into place, `abort()` removes it.

    A lock orders the calls: a cancelled upload may call `abort()` while a worker thread is still writing.
    """

    def __init__(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.path = Path(name)
        self.final = final
        self.digest = hashlib.sha256()
        self.size = 0
        self._lock = threading.Lock()

    def write(self, chunks: list[bytes]) -> None:
        with self._lock:
            if self.file.closed:  # aborted while this call waited for its thread
                return
            for chunk in chunks:
                self.file.write(chunk)
                self.digest.update(chunk)  # hashlib drops the GIL on large buffers
                self.size += len(chunk)

    def commit(self) -> StoredBlob:
        with self._lock:
            self.file.flush()
            os.fsync(self.file.fileno())  # the rename must not land before the bytes do
            self.file.close()
            os.replace(self.path, self.final)
            return StoredBlob(self.final.name, self.size, self.digest.hexdigest())

    def abort(self) -> None:
        with self._lock:
            self.file.close()
            with suppress(FileNotFoundError):
                self.path.unlink()


class LocalBlobStore(BlobStore):
    """Blobs as files under `root`, fanned out as `ab/cd/<key>`; keys are random 128-bit hex."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise NotFoundError("blob", key)  # never let a key reach outside the root
        return self.root / key[:2] / key[2:4] / key

    async def put_stream(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> StoredBlob:
        temp = await asyncio.to_thread(_TempBlob, self._path(secrets.token_hex(16)))
        try:
            batch: list[bytes] = []
            batched = 0
            async for chunk in chunks:
                if temp.size + batched + len(chunk) > max_bytes:
                    raise _too_large(max_bytes)
                batch.append(chunk)
                batched += len(chunk)
                if batched >= BATCH_SIZE:
                    await asyncio.to_thread(temp.write, batch)
                    batch, batched = [], 0
            if batch:
                await asyncio.to_thread(temp.write, batch)
            return await asyncio.to_thread(temp.commit)
        except BaseException:
            # Synchronous on purpose: it must run even when the task is being cancelled, and it is two syscalls.
            temp.abort()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            raise

    async def put_bytes(self, data: bytes) -> StoredBlob:
        def write() -> StoredBlob:
            temp = _TempBlob(self._path(secrets.token_hex(16)))
            try:
                temp.write([data])
                return temp.commit()
            except BaseException:
                temp.abort()
                raise

        return await asyncio.to_thread(write)

    async def open(self, key: str) -> AsyncGenerator[bytes, None]:
        path = self._path(key)
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise NotFoundError("blob", key) from None
        try:
            while batch := await asyncio.to_thread(file.read, BATCH_SIZE):
                for start in range(0, len(batch), CHUNK_SIZE):
                    yield batch[start : start + CHUNK_SIZE]
        finally:
            file.close()

    async def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self._path(key)

        def read() -> bytes:
            with path.open("rb") as file:
                if max_bytes is not None and os.fstat(file.fileno()).st_size > max_bytes:
                    raise _too_large(max_bytes)
                return file.read()

        try:
            return await asyncio.to_thread(read)
        except FileNotFoundError:
            raise NotFoundError("blob", key) from None

    async def delete(self, key: str) -> None:
        path = self._path(key)
        with suppress(FileNotFoundError):
            await asyncio.to_thread(path.unlink)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store `settings.files.backend` names: a directory (`local`, the default) or an S3 bucket (`s3`)."""
    if settings.files.backend == "s3":
        from conveyor.store.s3 import S3BlobStore  # boto3 is only needed by deployments that use S3

        return S3BlobStore.from_settings(settings.files)
    return LocalBlobStore(settings.files_path)
