"""One Settings object (env prefix EASEL_), built at the edge in functions/ and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from loaders.demo_model import DEMO_NAME
from loaders.fastpath import DEFAULT_BUCKETS


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
    # --- speed (handlers/acceleration.py, handlers/batching.py; shared/PERF.md) ---
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
