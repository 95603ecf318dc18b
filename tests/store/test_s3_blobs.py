"""Tests for `conveyor.store.s3`: the S3 blob store against a real moto server process on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx
import pytest
from pydantic import ValidationError as SettingsError

from conveyor.errors import NotFoundError, OutboundFailedError, PayloadTooLargeError
from conveyor.settings import FilesSettings, LimitsSettings, Settings
from conveyor.store.blobs import CHUNK_SIZE, LocalBlobStore, open_blob_store
from conveyor.store.db import SqliteDatabase
from conveyor.store.files import FileService
from conveyor.store.s3 import MIN_PART_SIZE, S3BlobStore

MiB = 1024 * 1024
ACCESS_KEY = "AKIAMOTOTESTKEY00001"
SECRET_KEY = "moto-secret-" + "s" * 28  # looked for in error messages: it must never appear


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Moto:
    """A running moto server and the bucket made on it."""

    endpoint: str
    bucket: str


def moto_python() -> str:
    """The Python that runs moto's server: its own virtual environment (`make test` makes `.venv-moto`), or
    `CONVEYOR_TEST_MOTO_PYTHON`. Not ours: moto needs `cryptography`, which PyJWT then loads into every server
    started from our environment (about 9 MB of RSS the benchmarks would count)."""
    configured = os.environ.get("CONVEYOR_TEST_MOTO_PYTHON")
    if configured:
        return configured
    own = Path(__file__).resolve().parents[2] / ".venv-moto" / "bin" / "python"
    if not own.exists():
        raise RuntimeError(f"{own} is missing: `make test` creates it (moto's own environment)")
    return str(own)


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    """A moto server process on a free loopback port, with one bucket; stopped by its own pid."""
    port = free_port()
    process = subprocess.Popen(
        [moto_python(), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        for _ in range(600):
            assert process.poll() is None, "moto server exited"
            try:
                httpx.get(endpoint + "/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "moto server did not answer within 30 s"
                time.sleep(0.05)
        client = s3_client(endpoint)
        client.create_bucket(Bucket="conveyor-test")
        client.close()
        yield Moto(endpoint, "conveyor-test")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def s3_client(endpoint: str) -> Any:
    """A plain boto3 client, to look at the bucket behind the store's back."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture
def inspector(moto: Moto) -> Iterator[Any]:
    client = s3_client(moto.endpoint)
    yield client
    client.close()


@pytest.fixture
async def store(moto: Moto) -> AsyncIterator[S3BlobStore]:
    """A store under a prefix of its own, so each test sees only its own objects and uploads."""
    blob_store = S3BlobStore(
        moto.bucket,
        prefix=f"t-{secrets.token_hex(4)}/",
        endpoint_url=moto.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        part_size=MIN_PART_SIZE,
    )
    yield blob_store
    await blob_store.aclose()


def objects(client: Any, store: S3BlobStore) -> list[str]:
    answer = client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
    return sorted(item["Key"] for item in answer.get("Contents", []))


def unfinished_uploads(client: Any, store: S3BlobStore) -> list[str]:
    answer = client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
    return [item["Key"] for item in answer.get("Uploads", [])]


async def chunks_of(data: bytes, size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


# ---------------------------------------------------------------------------------------------- writing and reading


async def test_put_bytes_read_bytes_round_trip(store: S3BlobStore, inspector: Any) -> None:
    blob = await store.put_bytes(b"hello")
    assert blob.size == 5
    assert blob.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert len(blob.key) == 32 and int(blob.key, 16) >= 0
    assert await store.read_bytes(blob.key) == b"hello"
    assert objects(inspector, store) == [store.prefix + blob.key]
    assert store.local_path(blob.key) is None
    again = await store.put_bytes(b"hello")
    assert again.key != blob.key


async def test_put_stream_multipart_round_trip(store: S3BlobStore, inspector: Any) -> None:
    data = os.urandom(12 * MiB + 17)
    blob = await store.put_stream(chunks_of(data, 100_000), max_bytes=len(data))
    assert (blob.size, blob.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert await store.read_bytes(blob.key) == data
    head = inspector.head_object(Bucket=store.bucket, Key=store.prefix + blob.key)
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5, 5 and 2 MiB: really a multipart upload
    assert unfinished_uploads(inspector, store) == []


async def test_small_stream_is_one_put(store: S3BlobStore, inspector: Any) -> None:
    data = os.urandom(MiB)
    blob = await store.put_stream(chunks_of(data), max_bytes=len(data))
    head = inspector.head_object(Bucket=store.bucket, Key=store.prefix + blob.key)
    assert "-" not in head["ETag"]  # a plain PutObject's ETag is the MD5, with no part count
    assert head["ContentLength"] == len(data)


async def test_stream_of_exactly_whole_parts(store: S3BlobStore) -> None:
    data = os.urandom(2 * MIN_PART_SIZE)
    blob = await store.put_stream(chunks_of(data), max_bytes=len(data))
    assert blob.size == len(data)
    assert await store.read_bytes(blob.key) == data


async def test_empty_stream(store: S3BlobStore) -> None:
    blob = await store.put_stream(chunks_of(b""), max_bytes=10)
    assert (blob.size, blob.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert await store.read_bytes(blob.key) == b""


# ---------------------------------------------------------------------------------------------- nothing is kept


async def test_over_max_bytes_keeps_nothing(store: S3BlobStore, inspector: Any) -> None:
    data = os.urandom(7 * MiB)  # one 5 MiB part goes up before the limit is crossed
    with pytest.raises(PayloadTooLargeError) as caught:
        await store.put_stream(chunks_of(data), max_bytes=6 * MiB)
    assert caught.value.details == {"max_bytes": 6 * MiB}
    assert objects(inspector, store) == []
    assert unfinished_uploads(inspector, store) == []


async def test_failing_source_keeps_nothing(store: S3BlobStore, inspector: Any) -> None:
    async def failing() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield os.urandom(MiB)
        raise OSError("the client went away")

    with pytest.raises(OSError, match="went away"):
        await store.put_stream(failing(), max_bytes=1024 * MiB)
    assert objects(inspector, store) == []
    assert unfinished_uploads(inspector, store) == []


async def test_cancelled_upload_keeps_nothing(store: S3BlobStore, inspector: Any) -> None:
    sent = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield os.urandom(MiB)
        sent.set()
        await asyncio.sleep(30)
        yield b"never"

    task = asyncio.create_task(store.put_stream(stalls(), max_bytes=100 * MiB))
    await asyncio.wait_for(sent.wait(), timeout=20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert objects(inspector, store) == []
    assert unfinished_uploads(inspector, store) == []


# ---------------------------------------------------------------------------------------------- reading


async def test_open_streams_chunks(store: S3BlobStore) -> None:
    data = os.urandom(2 * MiB + 5)
    blob = await store.put_bytes(data)
    chunks = [chunk async for chunk in store.open(blob.key)]
    assert all(len(chunk) == CHUNK_SIZE for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= CHUNK_SIZE
    assert b"".join(chunks) == data


async def test_open_stopped_early_closes(store: S3BlobStore) -> None:
    blob = await store.put_bytes(os.urandom(3 * MiB))
    async with aclosing(store.open(blob.key)) as chunks:
        async for chunk in chunks:
            assert len(chunk) == CHUNK_SIZE
            break
    assert await store.read_bytes(blob.key, max_bytes=3 * MiB)  # the store still works after an early stop


async def test_missing_key(store: S3BlobStore) -> None:
    missing = secrets.token_hex(16)
    with pytest.raises(NotFoundError) as caught:
        [chunk async for chunk in store.open(missing)]
    assert (caught.value.kind, caught.value.ident) == ("blob", missing)
    with pytest.raises(NotFoundError):
        await store.read_bytes(missing)


async def test_read_bytes_over_max_bytes(store: S3BlobStore) -> None:
    blob = await store.put_bytes(b"x" * 100)
    with pytest.raises(PayloadTooLargeError):
        await store.read_bytes(blob.key, max_bytes=99)
    assert await store.read_bytes(blob.key, max_bytes=100) == b"x" * 100


async def test_delete_is_idempotent(store: S3BlobStore, inspector: Any) -> None:
    blob = await store.put_bytes(b"gone soon")
    await store.delete(blob.key)
    await store.delete(blob.key)
    await store.delete(secrets.token_hex(16))
    assert objects(inspector, store) == []
    with pytest.raises(NotFoundError):
        await store.read_bytes(blob.key)


# ---------------------------------------------------------------------------------------------- failures


@pytest.fixture
async def unreachable() -> AsyncIterator[S3BlobStore]:
    """A store whose endpoint is a free loopback port with nothing listening."""
    blob_store = S3BlobStore(
        "conveyor-test",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        max_attempts=1,
    )
    yield blob_store
    await blob_store.aclose()


@pytest.mark.parametrize("bad", ["", "../../etc/passwd", "A" * 32, "0" * 31, "0" * 33, "0" * 31 + "/"])
async def test_malformed_key_never_reaches_s3(unreachable: S3BlobStore, bad: str) -> None:
    # The endpoint is unreachable, so NotFoundError rather than OutboundFailedError shows S3 was not called.
    with pytest.raises(NotFoundError):
        await unreachable.read_bytes(bad)
    with pytest.raises(NotFoundError):
        [chunk async for chunk in unreachable.open(bad)]
    with pytest.raises(NotFoundError):
        await unreachable.delete(bad)
    with pytest.raises(NotFoundError):
        unreachable.local_path(bad)


async def test_unreachable_endpoint_is_a_clear_error(unreachable: S3BlobStore) -> None:
    calls = [
        unreachable.put_bytes(b"data"),
        unreachable.put_stream(chunks_of(b"data"), max_bytes=100),
        unreachable.read_bytes(secrets.token_hex(16)),
        unreachable.delete(secrets.token_hex(16)),
    ]
    for call in calls:
        with pytest.raises(OutboundFailedError) as caught:
            await call
        message = caught.value.message
        assert unreachable.endpoint in message and "conveyor-test" in message
        assert caught.value.status == 502
        assert SECRET_KEY not in message and SECRET_KEY not in repr(caught.value.details)
        assert ACCESS_KEY not in message


async def test_missing_bucket_is_not_a_missing_blob(moto: Moto) -> None:
    blob_store = S3BlobStore(
        "no-such-bucket", endpoint_url=moto.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY
    )
    try:
        with pytest.raises(OutboundFailedError, match="NoSuchBucket"):
            await blob_store.read_bytes(secrets.token_hex(16))
    finally:
        await blob_store.aclose()


# ---------------------------------------------------------------------------------------------- settings


def test_open_blob_store_picks_the_backend(tmp_path: Path, moto: Moto) -> None:
    local = open_blob_store(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalBlobStore) and local.root == tmp_path / "files"
    files = FilesSettings(
        backend="s3",
        s3_bucket=moto.bucket,
        s3_prefix="p/",
        s3_endpoint_url=moto.endpoint,
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=SECRET_KEY,
    )
    s3 = open_blob_store(Settings(data_dir=tmp_path, files=files))
    try:
        assert isinstance(s3, S3BlobStore)
        assert (s3.bucket, s3.prefix, s3.endpoint) == (moto.bucket, "p/", moto.endpoint)
    finally:
        assert isinstance(s3, S3BlobStore)
        s3.close()


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_FILES__BACKEND", "s3")
    monkeypatch.setenv("CONVEYOR_FILES__S3_BUCKET", "media")
    monkeypatch.setenv("CONVEYOR_FILES__S3_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("CONVEYOR_FILES__S3_ACCESS_KEY_ID", ACCESS_KEY)
    files = Settings().files
    assert (files.backend, files.s3_bucket, files.s3_region) == ("s3", "media", "us-east-1")
    assert files.s3_secret_access_key.get_secret_value() == SECRET_KEY
    assert SECRET_KEY not in repr(files)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"backend": "s3"}, "needs a bucket"),
        ({"backend": "s3", "s3_bucket": "b", "s3_access_key_id": "id"}, "or neither"),
        ({"s3_endpoint_url": "minio:9000"}, "http:// or https://"),
        ({"backend": "gcs"}, "'local' or 's3'"),
    ],
)
def test_settings_refuse(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        FilesSettings(**fields)


# ---------------------------------------------------------------------------------------------- with FileService


async def test_file_service_over_s3(file_db: SqliteDatabase, store: S3BlobStore, inspector: Any) -> None:
    service = FileService(file_db, store, None, LimitsSettings())
    ref = await service.save_bytes(b"hello", name="greeting.txt", mime="text/plain")
    assert await service.read_bytes(ref["fid"]) == b"hello"
    assert b"".join([chunk async for chunk in service.open(ref["fid"])]) == b"hello"
    assert service.local_path(ref["fid"]) is None
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(10)
    streamed = await service.save_stream(chunks_of(png, 3), name="x", mime="")
    assert streamed["mime"] == "image/png"  # sniffed from the first chunk read back from S3
    assert len(objects(inspector, store)) == 2
    assert await service.delete_file(ref["fid"]) and await service.delete_file(streamed["fid"])
    assert objects(inspector, store) == []
