"""Tests for `conveyor.store.blobs`: the local blob store writes whole blob_store or nothing, and streams."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.errors import NotFoundError, PayloadTooLargeError
from conveyor.store.blobs import CHUNK_SIZE, LocalBlobStore


async def chunks_of(data: bytes, size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def test_put_stream_round_trip(blob_store: LocalBlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    blob = await blob_store.put_stream(chunks_of(data), max_bytes=len(data))
    assert blob.size == len(data)
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert len(blob.key) == 32 and int(blob.key, 16) >= 0
    path = blob_store.local_path(blob.key)
    assert path == blob_store.root / blob.key[:2] / blob.key[2:4] / blob.key
    assert path.read_bytes() == data
    assert stored_files(blob_store.root) == [path]  # no temporary file left behind
    assert await blob_store.read_bytes(blob.key) == data


async def test_put_bytes_gives_fresh_keys(blob_store: LocalBlobStore) -> None:
    first = await blob_store.put_bytes(b"same")
    second = await blob_store.put_bytes(b"same")
    assert first.key != second.key
    assert first.sha256 == second.sha256 == hashlib.sha256(b"same").hexdigest()
    assert await blob_store.read_bytes(second.key) == b"same"


async def test_open_yields_64_kib_chunks(blob_store: LocalBlobStore) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    blob = await blob_store.put_bytes(data)
    chunks = [chunk async for chunk in blob_store.open(blob.key)]
    assert all(len(chunk) == CHUNK_SIZE for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= CHUNK_SIZE
    assert b"".join(chunks) == data


async def test_empty_blob(blob_store: LocalBlobStore) -> None:
    blob = await blob_store.put_stream(chunks_of(b""), max_bytes=10)
    assert blob.size == 0
    assert [chunk async for chunk in blob_store.open(blob.key)] == []


async def test_over_max_bytes_keeps_nothing(blob_store: LocalBlobStore) -> None:
    data = os.urandom(5 * CHUNK_SIZE)
    with pytest.raises(PayloadTooLargeError, match="over the limit of 200,000 bytes"):
        await blob_store.put_stream(chunks_of(data), max_bytes=200_000)
    assert stored_files(blob_store.root) == []


async def test_exactly_max_bytes_is_accepted(blob_store: LocalBlobStore) -> None:
    blob = await blob_store.put_stream(chunks_of(b"x" * 1000, 7), max_bytes=1000)
    assert blob.size == 1000


async def test_failing_source_keeps_nothing(blob_store: LocalBlobStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"y" * CHUNK_SIZE
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        await blob_store.put_stream(broken(), max_bytes=1 << 30)
    assert stored_files(blob_store.root) == []


async def test_cancelled_upload_keeps_nothing(blob_store: LocalBlobStore) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"z" * CHUNK_SIZE
            started.set()
            await asyncio.sleep(0.001)

    task = asyncio.create_task(blob_store.put_stream(slow(), max_bytes=1 << 30))
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stored_files(blob_store.root) == []


async def test_read_bytes_over_max_bytes(blob_store: LocalBlobStore) -> None:
    blob = await blob_store.put_bytes(b"a" * 100)
    assert await blob_store.read_bytes(blob.key, max_bytes=100) == b"a" * 100
    with pytest.raises(PayloadTooLargeError):
        await blob_store.read_bytes(blob.key, max_bytes=99)


async def test_missing_and_invalid_keys(blob_store: LocalBlobStore) -> None:
    missing = "0" * 32
    with pytest.raises(NotFoundError):
        await blob_store.read_bytes(missing)
    with pytest.raises(NotFoundError):
        [chunk async for chunk in blob_store.open(missing)]
    await blob_store.delete(missing)  # nothing to delete is fine
    for bad in ("../../etc/passwd", "A" * 32, "0" * 31, ""):
        with pytest.raises(NotFoundError):
            blob_store.local_path(bad)


async def test_delete(blob_store: LocalBlobStore) -> None:
    blob = await blob_store.put_bytes(b"bye")
    await blob_store.delete(blob.key)
    with pytest.raises(NotFoundError):
        await blob_store.read_bytes(blob.key)
    await blob_store.delete(blob.key)


async def test_large_stream_is_not_held_in_memory(blob_store: LocalBlobStore) -> None:
    size = 24 * 1024 * 1024

    async def source() -> AsyncIterator[bytes]:
        for _ in range(size // CHUNK_SIZE):
            yield os.urandom(CHUNK_SIZE)  # a new object each time, as a network read gives

    tracemalloc.start()
    try:
        blob = await blob_store.put_stream(source(), max_bytes=size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert blob.size == size
    assert peak < size // 6, f"peak {peak:,} bytes while streaming {size:,}"
