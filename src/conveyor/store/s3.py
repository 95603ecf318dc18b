"""A blob store in an S3 bucket (AWS or an S3-compatible server), so every process of a deployment shares files.

boto3 is blocking, so each call runs in a worker thread; one client is made up front and shared by those threads
(boto3 clients are thread-safe). An upload is streamed: parts of `part_size` bytes go up as an S3 multipart
upload, and a blob that fits in one part is a single PutObject. A failed, cancelled or over-limit upload is
aborted, so S3 keeps neither an object nor unfinished parts (which it would bill for). boto3 is imported here
only, so the local default runs without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from conveyor.errors import NotFoundError, OutboundFailedError
from conveyor.settings import FilesSettings

# The key format and the over-limit error are the local store's, so both backends behave alike.
from conveyor.store.blobs import _KEY, BATCH_SIZE, CHUNK_SIZE, BlobStore, StoredBlob, _too_large

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's floor for every part but the last
PART_SIZE = 8 * 1024 * 1024
_MISSING = frozenset({"NoSuchKey", "NotFound", "404"})
_T = TypeVar("_T")


def _public_endpoint(url: str) -> str:
    """The scheme, host and port of an endpoint URL, for messages: no user info, path or query."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


class _Upload:
    """One blob on its way up: its parts are sent in order under a lock, so `abort()` never races a part in flight.

    A cancelled task leaves its worker thread running; the lock makes `abort()` wait for that thread, then remove
    whatever it made (the multipart upload, or the object a single PutObject wrote).
    """

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.key = secrets.token_hex(16)
        self.name = prefix + self.key
        self.digest = hashlib.sha256()
        self.size = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._written = False
        self._aborted = False
        self._lock = threading.Lock()

    def _take(self, chunks: list[bytes]) -> bytes:
        data = b"".join(chunks)
        self.digest.update(data)  # hashlib drops the GIL on large buffers
        self.size += len(data)
        return data

    def _send_part(self, data: bytes) -> None:
        if self._upload_id is None:
            answer = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.name)
            self._upload_id = answer["UploadId"]
        number = len(self._parts) + 1
        answer = self.client.upload_part(
            Bucket=self.bucket, Key=self.name, UploadId=self._upload_id, PartNumber=number, Body=data
        )
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})

    def send_part(self, chunks: list[bytes]) -> None:
        """Sends one full part (at least `MIN_PART_SIZE` bytes), starting the multipart upload if needed."""
        with self._lock:
            if self._aborted:  # aborted while this call waited for its thread
                return
            self._send_part(self._take(chunks))

    def finish(self, chunks: list[bytes]) -> StoredBlob:
        """Sends the rest and completes the blob: one PutObject when no part went up yet."""
        with self._lock:
            if self._aborted:  # only reached by a thread whose caller stopped waiting for it
                raise RuntimeError("the upload was aborted")
            data = self._take(chunks)
            if self._upload_id is None:
                self.client.put_object(Bucket=self.bucket, Key=self.name, Body=data)
            else:
                if data:
                    self._send_part(data)
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.name, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
                )
            self._written = True
            return StoredBlob(self.key, self.size, self.digest.hexdigest())

    def abort(self) -> None:
        """Removes what this upload made; safe to call more than once."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
            if self._written:  # finished, then its caller failed: remove the object
                self.client.delete_object(Bucket=self.bucket, Key=self.name)
            elif self._upload_id is not None:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.name, UploadId=self._upload_id)


class S3BlobStore(BlobStore):
    """Blobs as objects `<prefix><key>` in one bucket; keys are random 128-bit hex, as in the local store.

    S3's failures (unreachable endpoint, 5xx, denied access, missing bucket) surface as `OutboundFailedError`
    naming the endpoint and bucket, never the credentials. Close it with `close()` (or `aclose()`).
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        part_size: int = PART_SIZE,
        max_attempts: int = 3,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 blob store needs a bucket")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts are at least {MIN_PART_SIZE} bytes")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        config = Config(
            region_name=region,
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=32,
            # S3-compatible servers mostly want path-style addresses; AWS itself picks its own.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            # boto3's default CRC checksums on every request are refused by several S3-compatible servers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()  # its own session: boto3's default one is shared and not thread-safe
        self._client: Any = session.client(
            "s3",
            endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=config,
        )
        self.endpoint = _public_endpoint(self._client.meta.endpoint_url)
        self._aborts: set[asyncio.Future[None]] = set()

    @classmethod
    def from_settings(cls, files: FilesSettings) -> S3BlobStore:
        """The store the `files.s3_*` settings describe."""
        return cls(
            files.s3_bucket,
            prefix=files.s3_prefix,
            endpoint_url=files.s3_endpoint_url or None,
            region=files.s3_region,
            access_key_id=files.s3_access_key_id or None,
            secret_access_key=files.s3_secret_access_key.get_secret_value() or None,
        )

    # -- helpers

    def _name(self, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise NotFoundError("blob", key)  # a malformed key never reaches S3
        return self.prefix + key

    def _failed(self, what: str, details: dict[str, Any]) -> OutboundFailedError:
        return OutboundFailedError(
            f"the blob store at {self.endpoint} (bucket {self.bucket!r}) {what}",
            details={"endpoint": self.endpoint, "bucket": self.bucket, **details},
        )

    @contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Turns botocore's errors into ours: a missing object is `NotFoundError`, anything else names the endpoint.

        Only the error's code, status and class name are used: botocore's own texts may quote request details.
        """
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if key is not None and (code in _MISSING or status == 404) and code != "NoSuchBucket":
                raise NotFoundError("blob", key) from None
            what = f"answered {code or 'an error'} (HTTP {status})"
            raise self._failed(what, {"code": code, "status": status}) from exc
        except BotoCoreError as exc:
            raise self._failed(f"could not be reached ({type(exc).__name__})", {"error": type(exc).__name__}) from exc

    async def _run(self, call: Callable[[], _T], key: str | None = None) -> _T:
        def guarded() -> _T:
            with self._errors(key):
                return call()

        return await asyncio.to_thread(guarded)

    async def _abort(self, upload: _Upload) -> None:
        """Aborts `upload` in a thread; a second cancellation does not stop it (the future is kept until done)."""
        future = asyncio.ensure_future(self._run(upload.abort))
        self._aborts.add(future)
        future.add_done_callback(self._aborts.discard)
        with suppress(Exception):  # the upload's own error is the one to report
            await asyncio.shield(future)

    # -- the BlobStore protocol

    async def put_stream(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> StoredBlob:
        upload = _Upload(self._client, self.bucket, self.prefix)
        try:
            batch: list[bytes] = []
            batched = 0
            sent = 0
            async for chunk in chunks:
                if sent + batched + len(chunk) > max_bytes:
                    raise _too_large(max_bytes)
                batch.append(chunk)
                batched += len(chunk)
                if batched >= self.part_size:
                    await self._run(partial(upload.send_part, batch))
                    sent += batched
                    batch, batched = [], 0
            return await self._run(partial(upload.finish, batch))
        except BaseException:
            await self._abort(upload)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            raise

    async def put_bytes(self, data: bytes) -> StoredBlob:
        upload = _Upload(self._client, self.bucket, self.prefix)
        try:
            return await self._run(partial(upload.finish, [data]))
        except BaseException:
            await self._abort(upload)
            raise

    async def open(self, key: str) -> AsyncGenerator[bytes, None]:
        name = self._name(key)
        answer = await self._run(lambda: self._client.get_object(Bucket=self.bucket, Key=name), key)
        body = answer["Body"]
        try:
            while batch := await self._run(lambda: body.read(BATCH_SIZE), key):
                for start in range(0, len(batch), CHUNK_SIZE):
                    yield batch[start : start + CHUNK_SIZE]
        finally:
            body.close()

    async def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        name = self._name(key)

        def read() -> bytes:
            answer = self._client.get_object(Bucket=self.bucket, Key=name)
            body = answer["Body"]
            try:
                if max_bytes is not None and int(answer["ContentLength"]) > max_bytes:
                    raise _too_large(max_bytes)
                data: bytes = body.read()
            finally:
                body.close()
            if max_bytes is not None and len(data) > max_bytes:  # the header is the server's word; check anyway
                raise _too_large(max_bytes)
            return data

        return await self._run(read, key)

    async def delete(self, key: str) -> None:
        name = self._name(key)
        with suppress(NotFoundError):  # S3 answers 204 for a missing key, some compatible servers 404
            await self._run(lambda: self._client.delete_object(Bucket=self.bucket, Key=name), key)

    def local_path(self, key: str) -> Path | None:
        self._name(key)
        return None

    # -- lifetime

    def close(self) -> None:
        """Closes the client's connection pool."""
        self._client.close()

    async def aclose(self) -> None:
        """Waits for aborts still under way, then closes the client's connection pool."""
        if self._aborts:
            await asyncio.wait(set(self._aborts), timeout=30)
        await asyncio.to_thread(self._client.close)
