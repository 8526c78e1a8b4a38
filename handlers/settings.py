"""One Settings object (env prefix EASEL_), built at the edge in functions/ and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from loaders.demo_model import DEMO_NAME


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EASEL_", extra="ignore")

    store: str = Field("file://./data", description="file://PATH or s3://BUCKET/PREFIX")
    s3_endpoint_url: str | None = Field(None, description="any S3-compatible endpoint (MinIO, R2, OSS...)")
    tokens: str = Field("", description='seed users: "alice=tok1,bob=tok2"')
    admins: str = Field("", description='comma-separated admin users: "alice"')
    device: Literal["auto", "cpu", "cuda"] = "auto"
    default_checkpoint: str = DEMO_NAME
    cache_dir: Path = Field(Path.home() / ".cache" / "easel", description="checkpoint download cache")
    pipeline_cache_size: int = Field(2, ge=1, description="pipelines kept loaded (LRU)")
    gpu_price_per_second: float = Field(0.0, ge=0, description="price of one billed device-second")
    url_expiry_s: int = Field(3600, ge=60, description="lifetime of signed output URLs")
    max_body_mb: int = Field(64, ge=1, description="largest request body accepted")
    cpu_threads: int = Field(0, ge=0, description="torch threads on CPU (0 = torch's default)")
    # --- async tasks and bucket-upload events (handlers/tasks.py, handlers/events.py) ---
    task_workers: int = Field(1, ge=1, le=64, description="local worker threads running queued tasks")
    task_lease_s: float = Field(600.0, gt=0, description="a running task not heard from this long is re-run once")
    task_progress_interval_s: float = Field(1.0, ge=0, description="least time between progress writes to a task record")
    webhook_secret: str = Field("", description="HMAC-SHA256 key signing webhook POSTs; webhooks are refused unset")
    webhook_attempts: int = Field(5, ge=1, le=20, description="deliveries tried per webhook before giving up")
    webhook_backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each attempt")
    watch_interval_s: float = Field(0.0, ge=0, description="poll users/*/inbox/ every this many seconds in `easel serve` (0 = off)")

    def token_pairs(self) -> list[tuple[str, str]]:
        """`EASEL_TOKENS` as (user, token) pairs."""
        pairs = []
        for item in filter(None, (p.strip() for p in self.tokens.split(","))):
            user, sep, token = item.partition("=")
            if not sep or not user or not token:
                raise ValueError(f"EASEL_TOKENS entries look like user=token, not {item!r}")
            pairs.append((user.strip(), token.strip()))
        return pairs

    def admin_users(self) -> set[str]:
        return {a.strip() for a in self.admins.split(",") if a.strip()}
