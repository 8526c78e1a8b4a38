"""One Settings object (env prefix EASEL_), built at the edge in functions/ and passed down."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loaders.demo.names import DEMO_NAME
from loaders.speed.defaults import DEFAULT_BUCKETS


# An operator's allow-list may open a VPC range, never these (SECURITY.md #4): loopback, "this host",
# link-local (169.254.169.254 included), Alibaba Cloud's and AWS's IPv6 metadata addresses.
NEVER_FETCHED = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "0.0.0.0/8", "169.254.0.0/16", "100.100.100.200/32", "::1/128", "::/128", "fe80::/10",
    "fd00:ec2::254/128"))
DYNAMIC_CACHE_MAX = 16  # pipelines the dynamic cache may keep; free RAM is what really bounds it
PUBLIC_FOLDERS = {"lora_dir": "models/Lora", "vae_dir": "models/VAE", "embeddings_dir": "embeddings",
                  "hypernetwork_dir": "models/hypernetworks", "gfpgan_dir": "models/GFPGAN"}


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
    transformer_storage: Literal["native", "float8"] = Field(
        "native", description="FLUX.1 / SD 3.5 transformer weights: native (the pipeline's dtype) or float8 "
        "(stored as float8_e4m3fn, upcast layer by layer for compute: about half of bf16's memory)")
    offload_t5: Literal["auto"] | bool = Field(
        "auto", description="keep SD 3.5 / FLUX.1's T5-XXL encoder (9.5 GB in fp16) in host memory, moved to the "
        "GPU only while it encodes a prompt: true, false, or auto (on CUDA, when the GPU's free memory after the "
        "checkpoint's weights would leave under 6 GB for activations)")
    # --- tenancy, uploads, metering (handlers/accounts/users.py, handlers/http/models.py, handlers/billing/metering.py) ---
    # EAS defaults: each user's LoRAs, VAEs and embeddings are their own unless a *_dir names the public folder.
    public_lora: bool = Field(False, description="users also see public/models/Lora (as --lora-dir does)")
    public_vae: bool = Field(False, description="users also see public/models/VAE")
    public_embeddings: bool = Field(False, description="users also see public/embeddings")
    lora_dir: str = Field("", description="EAS --lora-dir: the public LoRA folder; users see it and their own")
    vae_dir: str = Field("", description="EAS --vae-dir: the public VAE folder; users load VAEs from it only")
    embeddings_dir: str = Field("", description="EAS --embeddings-dir: the public embeddings folder, used alone")
    hypernetwork_dir: str = Field("", description="EAS --hypernetwork-dir: the public hypernetwork folder; users "
                                  "see it and their own")
    gfpgan_dir: str = Field("", description="EAS --gfpgan-dir: the public face-restorer folder (GFPGAN, "
                            "CodeFormer) users see; unset, each user's own only")
    root_extensions: bool = Field(False, description="EAS --root-extensions (accepted: no extensions here)")
    filebrowser: bool = Field(True, description="EAS --filebrowser: the web page's file browser and its routes")
    sd_dynamic_cache: bool = Field(False, description="EAS --sd-dynamic-cache: keep pipelines while RAM allows")
    min_ram_reserved: float = Field(0.0, ge=0, description="EAS --min-ram-reserved GB: RAM the dynamic cache "
                                    "leaves free (pipelines are evicted below it)")
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
    device_grace_s: float = Field(0.2, ge=0, le=5, description="after a sync request gives the device back, stored "
                                  "tasks wait this long for the next one (a client's next request keeps its turn)")
    device_grace_cap_s: float = Field(2.0, ge=0, le=600, description="the most one stored task leaves the device idle "
                                      "for sync requests that may come (the grace, summed); then it takes its turn")
    batch_max_images: int = Field(8, ge=1, le=64, description="images per device batch")
    hide_tabs: str = Field("", description='web page tabs to hide: "files,prompt" (the seed\'s --always-hide-tabs)')
    enable_nsfw_censor: bool = Field(False, description="screen outputs with public/models/safety_checker/")

    # --- async tasks and bucket-upload events (handlers/tasks/records.py, handlers/tasks/events.py) ---
    task_workers: int = Field(1, ge=1, le=64, description="local worker threads running queued tasks")
    task_lease_s: float = Field(60.0, gt=0, description="a running task whose worker is not heard from this long "
                                "(it renews every third of it) is taken over by another worker")
    task_max_queued_per_user: int = Field(64, ge=1, description="open async tasks one user may have (429 beyond)")
    task_max_queued_mb_per_user: float = Field(256.0, gt=0, description="MB of stored request bodies of one "
                                               "user's open tasks (429 beyond)")
    task_progress_interval_s: float = Field(1.0, ge=0, description="least time between progress writes to a task record")
    webhook_secret: str = Field("", description="HMAC-SHA256 key signing webhook POSTs; webhooks are refused unset")
    webhook_attempts: int = Field(5, ge=1, le=20, description="deliveries tried per webhook before giving up")
    webhook_backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each attempt")
    image_url_style: Literal["url", "path"] = Field("url", description="`image_url` as fetchable URLs, or as "
                                                    "EAS paths under eas_mount_path (mount → store URL = object)")
    eas_mount_path: str = Field("/code/stable-diffusion-webui/data-oss", description="where EAS mounted the "
                                "bucket (EASEL_STORE); `path` style image URLs start here")
    fetch_allow_networks: str = Field("", description='CIDRs image links may reach though private, e.g. a VPC '
                                      '"10.0.0.0/8"; loopback, link-local and metadata addresses never')
    link_buckets: str = Field("", description='extra buckets oss:// and s3:// links may read, with their '
                              'endpoints: "examplebucket=https://oss-cn-hangzhou-internal.aliyuncs.com"')
    # --- EAS queue service (handlers/tasks/sink.py, handlers/http/eas.py) ---
    eas_service: str = Field("", description="the service name in /api/predict/<name>[/sink] (empty: any name)")
    eas_max_payload_bytes: int = Field(8 * 2**20, ge=1024, description="largest queue item; bigger results "
                                       "reach the sink without their base64 images")
    max_watches_per_user: int = Field(8, ge=1, le=1000, description="EAS sink websockets one user may hold "
                                      "open at once (each polls the store); more is refused")
    eas_watch_poll_s: float = Field(0.25, gt=0, le=10, description="how often a sink watcher looks for new items")
    watch_interval_s: float = Field(0.0, ge=0, description="poll users/*/inbox/ every this many seconds in `easel serve` (0 = off)")

    # --- security limits (issue 19; README "Security limits"): every resource one request can spend ---
    max_input_pixels: int = Field(4096 * 4096, ge=64 * 64, description="pixels of a decoded input image "
                                  "(init image, mask, ControlNet image)")
    max_intermediate_pixels: int = Field(4096 * 4096, ge=64 * 64, description="pixels of any image made while "
                                         "serving a request (a ControlNet map at processor_res)")
    max_encode_pixels: int = Field(2048 * 2048, ge=64 * 64, description="pixels of an image VAE-encoded at its "
                                   "own size (img2img resize_mode 3, latent upscale)")
    max_embedding_vectors: int = Field(75, ge=1, le=1000, description="vectors of one textual-inversion "
                                       "embedding (a whole prompt chunk is 75)")
    embedding_cache_size: int = Field(16, ge=1, description="embeddings kept in a pipeline's tokenizer (LRU); "
                                      "the rest are removed")
    negative_token_cache_size: int = Field(4096, ge=0, description="unknown tokens remembered (LRU) so a "
                                           "flood of bogus tokens costs no store reads and bounded memory")
    max_request_device_s: float = Field(0.0, ge=0, description="device seconds one generation may run before "
                                        "it is canceled (billed what ran); 0 = no limit")
    max_usage_days: int = Field(366, ge=1, le=3660, description="longest /usage date range")
    max_sse_s: float = Field(3600.0, gt=0, description="longest a /tasks/ID/events stream stays open")
    max_listing_metadata_bytes: int = Field(16384, ge=0, description="metadata bytes a /sdapi/v1/loras entry "
                                            "carries (larger metadata is left out)")
    public_url: str = Field("", description="URL clients reach this server at, for links in manifests "
                            "written outside a request (`easel watch`); default http://127.0.0.1:7860")

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
        """Model kinds whose public folder users may resolve (checkpoints, their separate text encoders,
        ControlNet and upscalers are always shared)."""
        switches = {"lora": self.public_lora or bool(self.lora_dir), "vae": self.public_vae,
                    "embedding": self.public_embeddings, "gfpgan": bool(self.gfpgan_dir),
                    "codeformer": bool(self.gfpgan_dir),  # EAS --gfpgan-dir: face restorers shared, else per user
                    "hypernetwork": bool(self.hypernetwork_dir)}
        always = {"checkpoint", "controlnet", "esrgan", "realesrgan", "swinir", "dat", "text_encoder",
                  "deepdanbooru"}
        return always | {kind for kind, on in switches.items() if on}

    def public_only_kinds(self) -> set[str]:
        """Kinds resolved from the public folder alone (EAS: --vae-dir, --embeddings-dir)."""
        return {kind for kind, folder in (("vae", self.vae_dir), ("embedding", self.embeddings_dir)) if folder}

    def pipeline_capacity(self) -> int:
        return DYNAMIC_CACHE_MAX if self.sd_dynamic_cache else self.pipeline_cache_size

    def min_free_ram_bytes(self) -> int | None:
        return int(self.min_ram_reserved * 2**30) if self.sd_dynamic_cache else None

    @field_validator("lora_dir", "vae_dir", "embeddings_dir", "hypernetwork_dir", "gfpgan_dir")
    @classmethod
    def _public_folder(cls, v: str, info) -> str:
        """An EAS path (`/code/stable-diffusion-webui/data-oss/models/Lora`) or bucket key naming the public folder."""
        if not v:
            return v
        folder = PUBLIC_FOLDERS[info.field_name]
        tail = v.strip().rstrip("/")
        if tail.removeprefix("public/") != folder and not tail.endswith("/" + folder):
            flag = "--" + info.field_name.replace("_", "-")
            raise ValueError(f"{flag} {v!r}: the public folder here is public/{folder} (an EAS path ending "
                             f"in /{folder} means it too)")
        return f"public/{folder}"

    @field_validator("fetch_allow_networks")
    @classmethod
    def _allowable_networks(cls, v: str) -> str:
        for cidr in filter(None, (c.strip() for c in v.split(","))):
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"EASEL_FETCH_ALLOW_NETWORKS: {cidr!r} is not a CIDR like 10.0.0.0/8") from None
            bad = [str(n) for n in NEVER_FETCHED if n.version == net.version and net.overlaps(n)]
            if bad:
                raise ValueError(f"EASEL_FETCH_ALLOW_NETWORKS: {cidr!r} covers {', '.join(bad)} "
                                 "(loopback, link-local or metadata), which links may never reach")
        return v

    def allow_networks(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.fetch_allow_networks.split(",") if c.strip())

    def link_bucket_endpoints(self) -> dict[str, str]:
        """EASEL_LINK_BUCKETS as {bucket: endpoint URL}."""
        out = {}
        for item in filter(None, (p.strip() for p in self.link_buckets.split(","))):
            name, sep, endpoint = item.partition("=")
            if not sep or not name.strip() or not endpoint.strip().startswith(("http://", "https://")):
                raise ValueError(f"EASEL_LINK_BUCKETS entries look like bucket=https://endpoint, not {item!r}")
            out[name.strip()] = endpoint.strip()
        return out

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
