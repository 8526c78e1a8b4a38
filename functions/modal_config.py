"""The Modal deployment, as data: GPU, autoscaler, snapshots, pools, secret — read once from the environment.

Nothing here imports `modal`: the same values feed `functions/modal_app.py`, `easel deploy --dry-run` and the
tests. `modal deploy` reads them from the deployer's environment; the app hands them to its containers as
environment variables (`container_env`), so a container re-importing the app resolves the same deployment.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from handlers.settings import Settings

GENERAL_POOL = "general"  # the pool parameter for checkpoints without their own pool (never a file name)
TORCH_VERSION = "2.13.0"  # the CUDA build from PyPI's default index; the same version as the local CPU pin
TORCHVISION_VERSION = "0.28.0"  # torch 2.13's: installed with it, so spandrel's torchvision cannot move torch
PYTHON_VERSION = "3.11"
# CLIP tokenizers baked into the image at build time (EASEL_TOKENIZERS_DIR), so no request touches a model hub.
# One CLIP BPE vocabulary serves SD 1.x, SD 2.x and SDXL; the shipped family configs set each one's padding.
TOKENIZERS_DIR = "/opt/easel/tokenizers"
TOKENIZER_REPO = "openai/clip-vit-large-patch14"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
TOKENIZER_NAMES = ("clip-vit-large-patch14", "clip-vit-h-14", "clip-vit-bigG-14")
# Modal's GPU types (modal.com/docs/guide/gpu, Modal 1.x; matched case-insensitively, optionally ":COUNT").
# A type Modal adds later is refused at deploy until it is listed here: one line to change, never a failed start.
KNOWN_GPUS = ("T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB", "RTX-PRO-6000", "H100", "H100!",
              "H200", "B200", "B200+")
WEB_SLACK_S = 60  # the web function outlives its longest sync wait by this much, so our 202 always goes out
# A dedicated pool's GPU by its checkpoint's family (README "Model families": weights + one 1024² image in
# fp16/bf16): FLUX.1 and SD 3.5 Large need an 80 GB card, SDXL / SD 3.5 Medium a 48 GB one, SD 1.x / 2.x fit an L4.
# EASEL_MODAL_POOL_GPUS overrides it per pool; the general pool and unknown families use EASEL_MODAL_GPU.
FAMILY_GPUS = {"flux": "H100", "sd35-large": "H100", "sd35-medium": "L40S", "sdxl": "L40S", "sdxl-refiner": "L40S",
               "sd1": "L4", "sd2": "L4"}


def family_gpu(family: str | None) -> str | None:
    """FAMILY_GPUS for a family name (by name, then architecture); None for the tiny demo families and unknowns."""
    from loaders.models.families import FAMILIES

    if family is None or family.startswith("demo") or family not in FAMILIES:
        return None
    return FAMILY_GPUS.get(family) or FAMILY_GPUS.get(FAMILIES[family].arch)


def normal_checkpoint(name: str) -> str | None:
    """A checkpoint name as the store knows it (`x [hash]` → `x.safetensors`), or None if it is not a name."""
    from loaders.errors import InvalidRequest
    from loaders.models.manager import clean_model_name

    try:
        return clean_model_name(name, "sd_model_checkpoint")
    except InvalidRequest:
        return None  # the GPU side reports the bad name to the caller; routing only picks containers


class ModalDeploy(BaseSettings):
    """How easel runs on Modal (env prefix EASEL_MODAL_); the app's own settings stay in `Settings`."""

    model_config = SettingsConfigDict(env_prefix="EASEL_MODAL_", extra="ignore")

    app_name: str = Field("easel", description="Modal app name (`modal deploy` creates or updates it)")
    secret_name: str = Field("easel", description="Modal Secret holding EASEL_TOKENS and the S3 credentials")
    sync_wait_s: int = Field(600, ge=1, le=86400, description="longest a sync request waits for its GPU "
                             "container; then 202 with a task URL (past 150 s Modal redirects clients that "
                             "follow redirects, e.g. curl -L)")
    gpu_max_inputs: int = Field(8, ge=1, le=64, description="concurrent inputs per GPU container (look-alike "
                                "txt2img requests among them share one device batch)")
    gpu_target_inputs: int = Field(0, ge=0, le=64, description="inputs per GPU container the autoscaler aims at "
                                   "(0: gpu_max_inputs); lower = more GPUs, less queueing")
    cache_volume: str = Field("", description="Modal Volume mounted at the checkpoint cache dir (empty: the "
                              "container's own disk, filled from the bucket)")
    gpu: str = Field("H100", description='GPU type, or a fallback list "H100,A100-80GB"')
    timeout_s: int = Field(600, ge=10, le=86400, description="longest one generation may run")
    startup_timeout_s: int = Field(900, ge=10, le=86400, description="longest a cold start (model download, "
                                                                       "snapshot) may take")
    min_containers: int = Field(0, ge=0, description="GPU containers kept warm per pool (0: scale to zero)")
    max_containers: int = Field(10, ge=1, description="upper bound of GPU containers per pool")
    buffer_containers: int = Field(0, ge=0, description="idle GPU containers kept ready while a pool is busy")
    scaledown_window_s: int = Field(120, ge=2, le=1200, description="idle seconds before a GPU container stops")
    memory_snapshot: bool = Field(True, description="snapshot the container after the snap=True hook")
    gpu_snapshot: bool = Field(True, description="include GPU memory in the snapshot (loaded weights, CUDA "
                                                 "context)")
    pools: str = Field("", description="checkpoints with their own warm pool, comma-separated")
    pool_gpus: str = Field("", description='a pool\'s GPU instead of its family\'s (FAMILY_GPUS): '
                           '"flux1-dev.safetensors=A100-80GB,sd15.safetensors=T4"')
    pool_min_containers: int = Field(1, ge=0, description="containers kept warm in each dedicated pool")
    web_min_containers: int = Field(0, ge=0, description="web (CPU) containers kept warm")
    web_max_inputs: int = Field(32, ge=1, description="concurrent requests per web container")
    web_image: Literal["light", "full"] = Field("light", description="the web, webhook and poller image: "
                                                "light (no torch/CUDA, ~2 s cold import) or full (the GPU "
                                                "image; CPU-side model routes such as /controlnet/detect "
                                                "and extras run in the web container only with it)")
    poll_minutes: int = Field(5, ge=0, description="inbox poller period, the fallback for missed bucket "
                                                   "events (0: off)")

    @field_validator("gpu")
    @classmethod
    def _gpu_names(cls, v: str) -> str:
        names = [g.strip() for g in v.split(",") if g.strip()]
        if not names or any(not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_:.-]*", g) for g in names):
            raise ValueError(f"EASEL_MODAL_GPU must be a GPU type or a comma-separated list, not {v!r}")
        return ",".join(names)

    @field_validator("gpu_target_inputs")
    @classmethod
    def _target_within_max(cls, v: int, info) -> int:
        top = info.data.get("gpu_max_inputs", v)
        if v > top:
            raise ValueError(f"EASEL_MODAL_GPU_TARGET_INPUTS ({v}) must not exceed EASEL_MODAL_GPU_MAX_INPUTS ({top})")
        return v

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, v: str) -> str:
        names = []
        for raw in filter(None, (p.strip() for p in v.split(","))):
            name = normal_checkpoint(raw)
            if name is None:
                raise ValueError(f"EASEL_MODAL_POOLS entry {raw!r} is not a checkpoint file name")
            names.append(name)
        return ",".join(dict.fromkeys(names))

    @field_validator("pool_gpus")
    @classmethod
    def _pool_gpu_pairs(cls, v: str) -> str:
        pairs = []
        for raw in filter(None, (p.strip() for p in v.split(","))):
            name, sep, gpu = raw.partition("=")
            checkpoint = normal_checkpoint(name.strip())
            if not sep or checkpoint is None or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_:.!+-]*", gpu.strip()):
                raise ValueError(f"EASEL_MODAL_POOL_GPUS entry {raw!r} is not CHECKPOINT=GPU")
            pairs.append(f"{checkpoint}={gpu.strip()}")
        return ",".join(pairs)

    def pool_gpu(self, pool: str, family: str | None) -> str | list[str]:
        """The GPU of one pool: its EASEL_MODAL_POOL_GPUS entry, else its family's, else EASEL_MODAL_GPU."""
        if pool == GENERAL_POOL:
            return self.gpu_request()
        chosen = dict(p.split("=", 1) for p in self.pool_gpus.split(",") if p).get(pool) or family_gpu(family)
        return chosen or self.gpu_request()

    # --- what the Modal decorators receive ---
    def gpu_request(self) -> str | list[str]:
        names = self.gpu.split(",")
        return names[0] if len(names) == 1 else names

    def pool_names(self) -> list[str]:
        return [p for p in self.pools.split(",") if p]

    def snapshots_gpu(self) -> bool:
        """GPU memory is snapshotted only on top of a memory snapshot."""
        return self.memory_snapshot and self.gpu_snapshot

    def gpu_concurrency(self) -> dict[str, int]:
        """Keyword arguments of `@modal.concurrent` on the GPU class."""
        return {"max_inputs": self.gpu_max_inputs, "target_inputs": self.gpu_target_inputs or self.gpu_max_inputs}

    def experimental_options(self) -> dict[str, Any]:
        return {"enable_gpu_snapshot": True} if self.snapshots_gpu() else {}

    def gpu_class_options(self) -> dict[str, Any]:
        """Keyword arguments of `@app.cls` for the GPU class (image, secrets and env are added by the app)."""
        return {
            "gpu": self.gpu_request(),
            "timeout": self.timeout_s,
            "startup_timeout": self.startup_timeout_s,
            "min_containers": self.min_containers,
            "max_containers": self.max_containers,
            "buffer_containers": self.buffer_containers,
            "scaledown_window": self.scaledown_window_s,
            "enable_memory_snapshot": self.memory_snapshot,
            "experimental_options": self.experimental_options(),
        }

    def web_options(self) -> dict[str, Any]:
        """Keyword arguments of `@app.function` for the web endpoint (a CPU container)."""
        # a sync request waits at most sync_wait_s for its GPU container, then answers 202 with a task URL
        return {"min_containers": self.web_min_containers, "timeout": self.sync_wait_s + WEB_SLACK_S,
                "scaledown_window": self.scaledown_window_s}

    def container_env(self, settings: Settings) -> dict[str, str]:
        """The resolved deployment (and the bucket) as env vars, so containers see what the deployer saw."""
        env = {f"EASEL_MODAL_{name.upper()}": _env_value(value) for name, value in self.model_dump().items()}
        env["EASEL_STORE"] = settings.store
        if settings.s3_endpoint_url:
            env["EASEL_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
        return env


def bake_tokenizers_commands() -> list[str]:
    """Image build steps: fetch the tokenizer files once, then one folder per name the families expect."""
    first, *others = TOKENIZER_NAMES
    fetch = (f"python -c \"from huggingface_hub import snapshot_download; snapshot_download("
             f"'{TOKENIZER_REPO}', local_dir='{TOKENIZERS_DIR}/{first}', allow_patterns={list(TOKENIZER_FILES)!r})\"")
    return [fetch, f"rm -rf {TOKENIZERS_DIR}/{first}/.cache",
            *(f"cp -r {TOKENIZERS_DIR}/{first} {TOKENIZERS_DIR}/{name}" for name in others)]


def _env_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def pool_for(checkpoint: str | None, deploy: ModalDeploy, default_checkpoint: str) -> str:
    """The pool (class parameter) a request goes to: its checkpoint's own pool, else the general one."""
    name = normal_checkpoint(checkpoint or default_checkpoint)
    return name if name in deploy.pool_names() else GENERAL_POOL


def pool_family(pool: str, settings: Settings, store=None) -> str | None:
    """A dedicated pool's checkpoint family from its safetensors header in the bucket (one ranged read), or None
    where it cannot be read: the pool then runs on EASEL_MODAL_GPU."""
    from loaders.errors import EaselError
    from loaders.models.header_family import HeaderFamilies
    from loaders.models.manager import KIND_DIRS
    from loaders.storage.store import open_store

    try:
        store = store or open_store(settings.store, endpoint_url=settings.s3_endpoint_url)
        return HeaderFamilies(store).family(store.stat(f"public/{KIND_DIRS['checkpoint']}/{pool}"))
    except (EaselError, OSError, ValueError):
        return None


def pool_checkpoint(pool: str, default_checkpoint: str) -> str:
    """The checkpoint a pool's containers load before their first request."""
    return default_checkpoint if pool == GENERAL_POOL else pool


def cloud_store_problem(settings: Settings) -> str | None:
    """Why this store cannot back a Modal deployment (containers are ephemeral), or None."""
    if not settings.store.startswith("s3://"):
        return f"EASEL_STORE must be s3://BUCKET[/PREFIX] on Modal (containers' disks are ephemeral), " \
               f"not {settings.store!r}"
    return None


def gpu_problem(deploy: ModalDeploy) -> str | None:
    """A GPU type Modal does not offer (or a bad count), named, or None."""
    known = {g.upper() for g in KNOWN_GPUS}
    per_pool = [p.split("=", 1)[1] for p in deploy.pool_gpus.split(",") if p]
    for entry in [*deploy.gpu.split(","), *per_pool]:
        kind, _, count = entry.partition(":")
        if kind.upper() not in known:
            return f"EASEL_MODAL_GPU names {kind!r}, not a Modal GPU type ({', '.join(KNOWN_GPUS)})"
        if count and not (count.isdigit() and 1 <= int(count) <= 8):
            return f"EASEL_MODAL_GPU {entry!r}: the count after ':' must be 1-8"
    return None


def name_problem(variable: str, value: str, *, optional: bool = False) -> str | None:
    """Modal's object-name rule (modal/_utils/name_utils.py), checked before anything is created."""
    if optional and not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        return f"{variable} must be a Modal object name (1-64 of letters, digits, '.', '_', '-'), not {value!r}"
    return None


def deploy_problems(deploy: ModalDeploy, settings: Settings) -> list[str]:
    """Everything that would make every container fail at start, found before deploying (offline checks)."""
    found = (cloud_store_problem(settings), name_problem("EASEL_MODAL_SECRET_NAME", deploy.secret_name),
             name_problem("EASEL_MODAL_CACHE_VOLUME", deploy.cache_volume, optional=True), gpu_problem(deploy))
    return [p for p in found if p]


def deploy_time(is_local: bool) -> bool:
    """True when this import is a deployer's `modal deploy|serve|run`, not a container's import or a test's.

    Modal's CLI imports the app file inside its click command (modal/cli/run.py), so the current click
    context names the command; containers are not local (modal.is_local()). EASEL_MODAL_CHECK=1 / 0 forces
    the checks on / off (for `app.deploy()` from a script, or a test)."""
    if not is_local:
        return False
    forced = os.environ.get("EASEL_MODAL_CHECK")
    if forced is not None:
        return forced == "1"
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    root = ctx.find_root().command
    return type(root).__module__.startswith("modal.") and ctx.info_name in {"deploy", "serve", "run"}


def describe(deploy: ModalDeploy, settings: Settings) -> dict[str, Any]:
    """The resolved deployment, as `easel deploy --dry-run` prints it."""
    pools = {name: {"min_containers": deploy.pool_min_containers} for name in deploy.pool_names()}
    pools[GENERAL_POOL] = {"checkpoint": settings.default_checkpoint, "min_containers": deploy.min_containers}
    return {
        "app": deploy.app_name,
        "gpu": deploy.gpu_request(),
        "gpu_class": {k: v for k, v in deploy.gpu_class_options().items() if k != "gpu"},
        "snapshots": {"memory": deploy.memory_snapshot, "gpu": deploy.snapshots_gpu()},
        "pools": pools,
        "gpu_concurrency": deploy.gpu_concurrency(),
        "web": {**deploy.web_options(), "max_inputs": deploy.web_max_inputs, "sync_wait_s": deploy.sync_wait_s},
        "cache_volume": deploy.cache_volume or None,
        "inbox_poller_minutes": deploy.poll_minutes or None,
        "secrets": [deploy.secret_name],
        "bucket": settings.store,
        "s3_endpoint_url": settings.s3_endpoint_url,
        "image": {"python": PYTHON_VERSION, "torch": TORCH_VERSION,
                  "tokenizers": [f"{TOKENIZERS_DIR}/{n}" for n in TOKENIZER_NAMES]},
        "problems": deploy_problems(deploy, settings),
    }


# What only generation needs: left out of the light web image (torch and CUDA are most of the GPU image).
GPU_ONLY_PACKAGES = {"torch", "diffusers", "transformers", "accelerate", "torchsde", "peft", "spandrel", "scipy",
                     "opencv-python-headless", "onnxruntime", "onnx"}


def web_requirements(pyproject: Path) -> list[str]:
    """The project's runtime dependencies (and modal) without the GPU-only ones, for the light web image."""
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["modal"]]
    return [req for req in wanted if re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower() not in GPU_ONLY_PACKAGES]
