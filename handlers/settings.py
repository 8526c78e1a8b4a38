"""One Settings object (env prefix EASEL_), built at the edge in functions/ and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loaders.demo.names import DEMO_NAME
from loaders.speed.defaults import DEFAULT_BUCKETS


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
    lora_cache_size: int = Field(8, ge=1, description="LoRA adapters kept attached to each resident pipeline")
    vae_cache_size: int = Field(2, ge=1, description="external VAEs kept loaded")
    controlnet_cache_size: int = Field(4, ge=1, description="ControlNet models kept loaded (LRU)")
    gpu_price_per_second: float = Field(0.0, ge=0, description="price of one billed device-second")
    url_expiry_s: int = Field(3600, ge=60, description="lifetime of signed output URLs")
    max_running_per_user: int = Field(4, ge=1, description="synchronous generations one user may run at once (429 beyond)")
    max_body_mb: int = Field(64, ge=1, description="largest request body accepted")
    tokenizers_dir: Path | None = Field(None, description="folder of CLIP tokenizers that replace the shipped "
                                        "vocabulary (<name>/tokenizer.json or vocab.json + merges.txt)")
    log_format: Literal["text", "json"] = Field("text", description="`easel serve` logs: text lines, or one "
                                                "JSON object per line")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="least level logged")
    metrics_token: str | None = Field(None, description="bearer token a Prometheus scraper may read /metrics with "
                                      "(admins always may)")
    cache_max_gb: float = Field(50.0, gt=0, description="downloaded model copies kept in cache_dir (least "
                                "recently used deleted first)")
    cpu_threads: int = Field(0, ge=0, description="torch threads on CPU (0 = torch's default)")
    cpu_dtype: Literal["float32", "bfloat16"] = Field("float32", description="pipeline precision on CPU: "
                                                     "bfloat16 halves the memory (SDXL ~7 GB instead of ~14 GB)")
    # --- tenancy, uploads, metering (handlers/accounts/users.py, handlers/http/models.py, handlers/billing/metering.py) ---
    public_lora: bool = Field(True, description="users see public/models/Lora (EAS clustered edition switch)")
    public_vae: bool = Field(True, description="users see public/models/VAE")
    public_embeddings: bool = Field(True, description="users see public/embeddings")
    max_upload_mb: int = Field(8192, ge=1, description="largest model file accepted by POST /models/{kind}")
    prices: dict[str, float] = Field(default_factory=dict, description='price per billed second by device type, '
                                     'matched in the device name: \'{"cpu":0,"H100":0.0011}\'')
    device_type: str | None = Field(None, description="device type for pricing and the ledger (default: detected)")
    budget_seconds_per_month: float | None = Field(None, ge=0, description="default monthly budget, billed seconds")
    budget_cost_per_month: float | None = Field(None, ge=0, description="default monthly budget, currency")
    usage_close_after_s: int = Field(86400, ge=0, description="a day's usage roll-up is final this long after "
                                     "the day ends (longer than any request waits in a queue)")
    # --- speed (handlers/generation/acceleration.py, handlers/generation/batching.py; shared/PERF.md) ---
    fast_path: Literal["auto", "on", "off"] = Field("auto", description="CUDA fast path (auto: on with CUDA)")
    fast_dtype: Literal["fp16", "bf16"] = "fp16"
    fast_vae_dtype: Literal["bf16", "fp32"] = Field("bf16", description="NaN-safe VAE precision on CUDA")
    fast_compile: bool = Field(True, description="torch.compile UNet and VAE decode per shape bucket")
    fast_compile_mode: str = Field("reduce-overhead", description="torch.compile mode (CUDA graphs)")
    fast_buckets: str = Field(DEFAULT_BUCKETS, description="compiled WxH shapes; other sizes run eager")
    fast_batch_sizes: str = Field("1,2,4,8", description="images per call that get compiled graphs")
    fast_fuse_qkv: bool = Field(False, description="fused QKV projections (incompatible with LoRA)")
    fast_fp8: bool = Field(False, description="fp8 UNet on Ada/Hopper (needs torchao)")
    fast_warm: Literal["background", "off"] = Field("background", description="warm buckets after a load")
    compile_cache: bool = Field(True, description="compile artifacts in the bucket under system/compile/")
    tiny_vae: str = Field("", description='AutoencoderTiny per family: "sd15=system/vae/taesd.safetensors"')
    vae_decode_method: Literal["Full", "TAESD"] = Field("Full", description="default decode (A1111 option)")
    batching: Literal["auto", "on", "off"] = Field("auto", description="batch look-alike txt2img (auto: CUDA)")
    batch_wait_ms: float = Field(10.0, ge=0, le=1000, description="longest a request waits for batch mates")
    batch_max_images: int = Field(8, ge=1, le=64, description="images per device batch")
    hide_tabs: str = Field("", description='web page tabs to hide: "files,prompt" (the seed\'s --always-hide-tabs)')
    enable_nsfw_censor: bool = Field(False, description="screen outputs with public/models/safety_checker/")

    # --- async tasks and bucket-upload events (handlers/tasks/records.py, handlers/tasks/events.py) ---
    task_workers: int = Field(1, ge=1, le=64, description="local worker threads running queued tasks")
    task_lease_s: float = Field(600.0, gt=0, description="a running task not heard from this long is re-run once")
    task_progress_interval_s: float = Field(1.0, ge=0, description="least time between progress writes to a task record")
    webhook_secret: str = Field("", description="HMAC-SHA256 key signing webhook POSTs; webhooks are refused unset")
    webhook_attempts: int = Field(5, ge=1, le=20, description="deliveries tried per webhook before giving up")
    webhook_backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each attempt")
    watch_interval_s: float = Field(0.0, ge=0, description="poll users/*/inbox/ every this many seconds in `easel serve` (0 = off)")

    def hidden_tabs(self) -> list[str]:
        return [t.strip().lower() for t in self.hide_tabs.split(",") if t.strip()]

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

    def public_model_kinds(self) -> set[str]:
        """Model kinds whose public folder users may resolve (checkpoints and ControlNet are always shared)."""
        switches = {"lora": self.public_lora, "vae": self.public_vae, "embedding": self.public_embeddings}
        return {"checkpoint", "controlnet"} | {kind for kind, on in switches.items() if on}

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if not sep or scheme not in ("file", "s3") or not rest.strip("/"):
            raise ValueError(f"EASEL_STORE must be file://PATH or s3://BUCKET[/PREFIX], not {v!r}")
        return v

    @field_validator("prices")
    @classmethod
    def _non_negative_prices(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: p for k, p in v.items() if not p >= 0}
        if bad:
            raise ValueError(f"EASEL_PRICES must be non-negative, not {bad}")
        return v
