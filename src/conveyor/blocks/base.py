"""The block protocol: typed ports, configuration, the context a block runs with, and the registry.

A block is a stateless object with a name, a pydantic `Config` model, a `ports()` method that says which
typed inputs and outputs a node of it has (they may depend on its configuration and on which inputs the
recipe wires), and an async `run()` that maps inputs to outputs. Blocks never touch the database or the
HTTP request: everything they need arrives on `BlockContext`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from conveyor.llm.models import LanguageModels


class PortType(StrEnum):
    """What a port carries. Media ports carry file references (`{"fid", "name", "mime", "size"}`)."""

    TEXT = "text"
    NUMBER = "number"
    BOOLEAN = "boolean"
    JSON = "json"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    DOCUMENT = "document"
    FILE = "file"
    ANY = "any"


MEDIA_TYPES = frozenset({PortType.IMAGE, PortType.AUDIO, PortType.VIDEO, PortType.DOCUMENT, PortType.FILE})
SCALARS_AS_TEXT = frozenset({PortType.NUMBER, PortType.BOOLEAN})


@dataclass(frozen=True, slots=True)
class Port:
    """A typed input or output; `many` means a list of values of `type`."""

    type: PortType
    many: bool = False
    required: bool = False
    description: str = ""

    def label(self) -> str:
        return f"{self.type}[]" if self.many else str(self.type)


def can_connect(source: Port, target: Port) -> bool:
    """Whether an output of type `source` may feed an input of type `target`.

    `any` and `json` targets take everything; media feed `file`; numbers and booleans feed text (rendered);
    a single value feeds a list port (wrapped by the engine), never the other way round.
    """
    if target.type in (PortType.ANY, PortType.JSON) or source.type == PortType.ANY:
        return True
    if source.many and not target.many:
        return False
    if source.type == target.type:
        return True
    if target.type == PortType.FILE and source.type in MEDIA_TYPES:
        return True
    return target.type == PortType.TEXT and source.type in SCALARS_AS_TEXT


class BlockError(Exception):
    """A block failed; the job fails naming the node. Retried per the node's policy when `retryable`."""

    retryable: bool = True

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class BlockInputError(BlockError):
    """A block got an input it cannot use (wrong kind, too large); never retried."""

    retryable = False


class UsageMeter:
    """Tokens and cost a job's blocks report (language-model blocks), summed per node and per job."""

    __slots__ = ("by_node",)

    def __init__(self) -> None:
        self.by_node: dict[str, dict[str, float]] = {}

    def add(self, node: str, *, prompt_tokens: int = 0, completion_tokens: int = 0, cost: float = 0.0) -> None:
        entry = self.by_node.setdefault(node, {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0})
        entry["prompt_tokens"] += prompt_tokens
        entry["completion_tokens"] += completion_tokens
        entry["cost"] += cost

    def totals(self) -> dict[str, float]:
        total = {"prompt_tokens": 0.0, "completion_tokens": 0.0, "total_tokens": 0.0, "cost": 0.0}
        for entry in self.by_node.values():
            total["prompt_tokens"] += entry["prompt_tokens"]
            total["completion_tokens"] += entry["completion_tokens"]
            total["cost"] += entry["cost"]
        total["total_tokens"] = total["prompt_tokens"] + total["completion_tokens"]
        return {k: (int(v) if k != "cost" else v) for k, v in total.items()}


class FileRef(TypedDict):
    """A stored file as blocks and results see it; `fid` is its random 128-bit id (32 hex digits)."""

    fid: str
    name: str
    mime: str
    size: int


class FileStore(Protocol):
    """Files a block may read and write (implemented by `conveyor.store.files.FileService`)."""

    async def save_bytes(self, data: bytes, *, name: str, mime: str) -> FileRef:
        """Stores `data` as a new file and returns its reference."""
        ...

    async def save_stream(self, chunks: AsyncIterator[bytes], *, name: str, mime: str) -> FileRef:
        """Streams chunks to a new file (bounded by the upload limit) and returns its reference."""
        ...

    async def read_bytes(self, fid: str, *, max_bytes: int | None = None) -> bytes:
        """The whole content of a file (refused past `max_bytes`)."""
        ...

    def open(self, fid: str) -> AsyncIterator[bytes]:
        """The content of a file in chunks."""
        ...

    async def describe(self, fid: str) -> FileRef:
        """The reference of an existing file; `NotFoundError` when there is none."""
        ...

    def local_path(self, fid: str) -> Path | None:
        """A path on this machine holding the file's bytes, when the backend has one."""
        ...

    async def resolve_media(self, value: Any, *, kind: str) -> FileRef:
        """Turns a URL, `data:` URI, base64 text, `fid://…`, `{fid}` object or file id into a stored file.

        `kind` is `image`, `audio`, `video`, `document` or `file`; images are checked by content.
        """
        ...

    def bind(self, *, user_id: str | None, job_id: str | None) -> FileStore:
        """A view that stamps new files with this owner and job, and sees only that owner's or shared files."""
        ...


class HttpResponse(Protocol):
    """A finished outbound response with its (bounded) body."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    @property
    def url(self) -> str: ...


class HttpClient(Protocol):
    """The guarded outbound client (implemented by `conveyor.net.GuardedClient`)."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        timeout_s: float | None = None,
        max_bytes: int | None = None,
    ) -> HttpResponse:
        """Sends one request through the guard (every redirect checked) and reads the bounded body."""
        ...


MAX_PROGRESS_CHARS = 2000
MAX_PROGRESS_EVENTS = 200
EVENT_KEYS = frozenset({"id", "kind", "node", "at"})  # what every stored event has: a block's data cannot shadow it


class ModelResolver(Protocol):
    """Data models by id (implemented by `conveyor.analytics.store.ModelService`)."""

    async def resolve(self, model_id: str, branch_id: str | None = None) -> Any:
        """The model, overlaid by the branch, with its read-only connection; `NotFoundError` when unknown."""
        ...


SubRecipeRunner = Callable[[str, Mapping[str, Any], int], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class BlockContext:
    """What a running block may use. One per node run; never shared between jobs."""

    job_id: str
    node_id: str
    files: FileStore
    http: HttpClient
    usage: UsageMeter
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    limits: Any  # conveyor.settings.LimitsSettings; typed loosely so blocks import nothing of settings
    depth: int = 0
    run_recipe: SubRecipeRunner | None = None
    user_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    llm: LanguageModels | None = None  # language models by provider; None where none are offered
    analytics: ModelResolver | None = None  # data models by id (`ask_data`); None where none are offered
    emit: Callable[[str, str, dict[str, Any]], None] | None = None  # the run's event sink (see `progress`)
    progress_sent: int = 0

    def meter(self, *, prompt_tokens: int = 0, completion_tokens: int = 0, cost: float = 0.0) -> None:
        """Reports a model call's usage for this node."""
        self.usage.add(self.node_id, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost)

    def progress(self, message: str, data: Mapping[str, Any] | None = None) -> None:
        """Records a `progress` event of this node on the job (`{"message": ..., **data}`), e.g. a step of a long
        model pipeline. The message is cut at 2,000 characters; keys an event has already (`id`, `kind`, `node`,
        `at`) are left out of `data`; past 200 events of one node (its retries included) the rest are dropped."""
        if self.emit is None or self.progress_sent >= MAX_PROGRESS_EVENTS:
            return
        self.progress_sent += 1
        fields = {key: value for key, value in (data or {}).items() if key not in EVENT_KEYS}
        self.emit("progress", self.node_id, {**fields, "message": message[:MAX_PROGRESS_CHARS]})


class BlockConfig(BaseModel):
    """Base of every block's configuration model: unknown keys are refused so typos surface at save time."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EmptyConfig(BlockConfig):
    """For blocks that take no configuration."""


Ports = Mapping[str, Port]


class Block(Protocol):
    """A kind of node. Implementations are stateless; one instance serves every job.

    A block whose `run` never awaits may set `instant: ClassVar[bool] = True`: an asyncio timeout can only
    interrupt a coroutine at an await, so the engine runs such a block without one (saving its cost on every
    node run). `tests/blocks/test_instant.py` checks that each block marked so really never awaits.
    """

    name: ClassVar[str]

    @property
    def Config(self) -> type[BlockConfig]:
        """The pydantic model of the block's configuration."""
        ...

    def ports(self, config: Any, wired: Iterable[str]) -> tuple[Ports, Ports]:
        """The node's (inputs, outputs) given its configuration and the names of its wired inputs."""
        ...

    async def run(self, ctx: BlockContext, config: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """Computes the node's outputs from its inputs."""
        ...


class BlockRegistry:
    """The blocks a server knows, by name. Built per app by `conveyor.blocks.default_registry()`."""

    def __init__(self, blocks: Iterable[Block] = ()) -> None:
        self._blocks: dict[str, Block] = {}
        for block in blocks:
            self.add(block)

    def add(self, block: Block) -> None:
        if block.name in self._blocks:
            raise ValueError(f"block {block.name!r} registered twice")
        self._blocks[block.name] = block

    def get(self, name: str) -> Block | None:
        return self._blocks.get(name)

    def names(self) -> list[str]:
        return sorted(self._blocks)

    def __contains__(self, name: object) -> bool:
        return name in self._blocks
