"""easel on Modal: GPU pools per checkpoint with snapshots, the same FastAPI app as an ASGI endpoint, a poller.

    modal deploy functions/modal_app.py          (after `easel deploy --dry-run` shows what it will create)

Wiring only: every value comes from `ModalDeploy` / `Settings` (functions/modal_config.py), every behaviour
from functions/modal_runtime.py and handlers/. Importing this file needs no token, no network and no GPU.
"""

# No `from __future__ import annotations`: Modal reads the class parameter's annotation as a real type.
import functools
from pathlib import Path

import modal

from functions.modal_config import (
    GENERAL_POOL,
    PYTHON_VERSION,
    TOKENIZERS_DIR,
    TORCH_VERSION,
    TORCHVISION_VERSION,
    ModalDeploy,
    bake_tokenizers_commands,
    deploy_problems,
    deploy_time,
    pool_family,
    web_requirements,
)
from handlers.settings import Settings

DEPLOY = ModalDeploy()
SETTINGS = Settings()  # only the bucket is taken from here; containers build their own from their env
PROJECT = Path(__file__).resolve().parents[1]
CACHE_MOUNT = "/cache"  # EASEL_CACHE_DIR lives below it: the container's disk, or the Volume when one is set


def _secret_missing(name: str) -> str | None:
    """Asked of Modal at deploy time only (the deployer has a token): a Secret that is not there."""
    try:
        modal.Secret.from_name(name).hydrate()
    except modal.exception.NotFoundError:
        return f"Modal Secret {name!r} (EASEL_MODAL_SECRET_NAME) does not exist: create it first " \
               f"(`modal secret create {name} ...`, infra/README.md step 2)"
    return None


if deploy_time(modal.is_local()):  # `modal deploy|serve|run` on the deployer; never in a container or a test
    _problems = deploy_problems(DEPLOY, SETTINGS)
    _problems = _problems or [p for p in [_secret_missing(DEPLOY.secret_name)] if p]
    if _problems:
        raise SystemExit("easel: not deploying: " + "; ".join(_problems))


def _not_bytecode(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix == ".pyc"


image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    # CUDA torch (and its torchvision, which spandrel declares) pinned first; the project's ranges leave them be
    .uv_pip_install(f"torch=={TORCH_VERSION}", f"torchvision=={TORCHVISION_VERSION}")
    # read at build time, on the deployer; spandrel (the `upscalers` extra) and controlnet-aux (`annotators`) with
    # their torchvision, over the CUDA torch
    .pip_install_from_pyproject(str(PROJECT / "pyproject.toml"), optional_dependencies=["upscalers", "annotators"])
    .run_commands(*bake_tokenizers_commands())  # the only hub access: once, while the image is built
    .env({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",  # no model hub while serving, ever
          "TOKENIZERS_PARALLELISM": "false", "EASEL_CACHE_DIR": "/cache/easel", "EASEL_TOKENIZERS_DIR": TOKENIZERS_DIR})
    # the project with its data files (model configs, tokenizers, web page), not only .py files
    .add_local_python_source("functions", "handlers", "loaders", ignore=_not_bytecode)
)

# The web, webhook and poller functions never run a model: by default they get an image without torch/CUDA
# (a cold web container imports in ~2 s instead of ~15 s; EventBridge API destinations give up after 5 s).
light_image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .uv_pip_install(*web_requirements(PROJECT / "pyproject.toml"))
    .env({"EASEL_CACHE_DIR": "/cache/easel"})
    .add_local_python_source("functions", "handlers", "loaders", ignore=_not_bytecode)
)
web_image = light_image if DEPLOY.web_image == "light" else image

with image.imports():  # needed only where the code runs (containers, tests), not to deploy
    from functions.modal_runtime import (GpuWorker, deliver_task_webhook, poll_inbox_once, reap_tasks_once,
                                         web_services)
    from handlers.http.api import create_app

app = modal.App(DEPLOY.app_name)
secrets = [modal.Secret.from_name(DEPLOY.secret_name)]
container_env = DEPLOY.container_env(SETTINGS)
# Opt-in: checkpoints and downloads shared by every GPU container through a Volume (infra/README.md, "Caches")
cache_volume = modal.Volume.from_name(DEPLOY.cache_volume, create_if_missing=True) if DEPLOY.cache_volume else None
gpu_volumes = {CACHE_MOUNT: cache_volume} if cache_volume else {}


def _device_label() -> str:
    """The GPU type the ledger records: the configured one, or the one Modal picked from a fallback list."""
    if modal.is_local():
        return "local"
    names = DEPLOY.gpu.split(",")
    if len(names) == 1 and not DEPLOY.pool_names():  # dedicated pools may run on their family's GPU instead
        return names[0]
    import torch

    return torch.cuda.get_device_name(0)


@app.cls(image=image, secrets=secrets, env=container_env, volumes=gpu_volumes, **DEPLOY.gpu_class_options())
@modal.concurrent(**DEPLOY.gpu_concurrency())  # threads in one container: look-alike jobs share a batch
class Generator:
    """One pool per `checkpoint` value: a request for model X runs in containers that already hold X.

    Up to EASEL_MODAL_GPU_MAX_INPUTS jobs run at once per container; the device lock lets one batch at a
    time onto the GPU, so concurrency adds batch mates, not device memory."""

    checkpoint: str = modal.parameter(default=GENERAL_POOL)

    @modal.enter(snap=DEPLOY.memory_snapshot)
    def load(self) -> None:
        # Before the snapshot: imports, services, the pool's checkpoint on the GPU and one tiny generation,
        # all kept by the GPU snapshot. With a CPU-only snapshot the GPU is not attached yet: start on restore.
        self.worker = GpuWorker(self.checkpoint, device_label=_device_label,
                                call_id=modal.current_function_call_id,
                                persist_cache=cache_volume.commit if cache_volume else None)
        if DEPLOY.snapshots_gpu() or not DEPLOY.memory_snapshot:
            self.worker.start()

    @modal.enter(snap=False)
    def restore(self) -> None:
        self.worker.restore()  # runs after `load` (definition order) when snapshots are off

    @modal.method()
    def generate(self, job, web_deadline: float | None = None):
        """Run one job (a handlers.jobs.Job) and return its GenerationResponse; past `web_deadline` the web
        side has stopped waiting and the outcome goes to the job's task record (functions/modal_sync.py)."""
        return self.worker.execute(job, web_deadline)

    @modal.method()
    def run_task(self, user: str, task_id: str) -> None:
        """Run the stored task users/<user>/tasks/<task_id>.json (spawned by the web endpoint)."""
        self.worker.run_task(user, task_id, notify=notify_webhook)


def notify_webhook(user: str, task_id: str) -> None:
    send_webhook.spawn(user, task_id)


@functools.lru_cache(maxsize=None)  # bounded: names come from pool_for (the listed pools and "general")
def gpu_pool(name: str):
    """The pool lookup the web side routes with (tests substitute a local stand-in). A dedicated pool runs on
    its family's GPU (FAMILY_GPUS, read from the checkpoint's header in the bucket) unless EASEL_MODAL_POOL_GPUS
    names another."""
    gpu = DEPLOY.pool_gpu(name, pool_family(name, SETTINGS) if name != GENERAL_POOL else None)
    cls = Generator if gpu == DEPLOY.gpu_request() else Generator.with_options(gpu=gpu)
    return cls(checkpoint=name)


@app.function(image=web_image, secrets=secrets, env=container_env, **DEPLOY.web_options())
@modal.concurrent(max_inputs=DEPLOY.web_max_inputs)
@modal.asgi_app()
def web():
    """The A1111 / EAS API: the same app as `easel serve`, with jobs and tasks sent to the GPU pools."""
    return create_app(web_services(Settings(), DEPLOY, lambda name: gpu_pool(name)))


@app.function(image=web_image, secrets=secrets, env=container_env, timeout=300,
              schedule=modal.Period(minutes=DEPLOY.poll_minutes) if DEPLOY.poll_minutes else None)
def poll_inbox() -> None:
    """Fallback trigger: one pass over users/*/inbox/ for uploads whose bucket event never arrived."""
    poll_inbox_once(Settings(), DEPLOY, lambda name: gpu_pool(name))


@app.function(image=web_image, secrets=secrets, env=container_env, timeout=600)
def send_webhook(user: str, task_id: str) -> None:
    """A finished task's webhook, delivered on CPU so its retry backoff never holds a GPU."""
    deliver_task_webhook(Settings(), user, task_id)


@app.function(image=web_image, secrets=secrets, env=container_env, timeout=300, schedule=modal.Period(minutes=1))
def reap_tasks() -> None:
    """Tasks whose container died (lease expired) or whose spawn was lost run again, within about a lease."""
    reap_tasks_once(Settings(), DEPLOY, lambda name: gpu_pool(name))


@app.function(image=web_image, secrets=secrets, env=container_env, timeout=120, schedule=modal.Period(minutes=10))
def keep_pools() -> None:
    """Dedicated pools exist from their first call; this creates them and keeps their minimum warm
    (a deploy resets autoscaler overrides, so it runs again within ten minutes of each deploy)."""
    for name in DEPLOY.pool_names():
        gpu_pool(name).update_autoscaler(min_containers=DEPLOY.pool_min_containers)
