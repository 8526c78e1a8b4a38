"""The embedded default: local store, in-process execution, uvicorn. Wiring only."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from pathlib import Path

from functions import logs
from functions.wiring import build_services
from handlers.accounts.users import UserRegistry
from handlers.http.api import create_app
from handlers.services import Services
from handlers.settings import Settings
from handlers.tasks.workers import start_background
from loaders.demo.controlnet import install_demo_controlnet
from loaders.demo.model import DEMO_NAME, install_demo

LOCAL_USER = "local"


def local_token(services: Services, data_dir: Path) -> str:
    """The local user's token, kept (mode 600) beside the data so every `make serve` prints the same one."""
    path = Path(data_dir) / ".easel-local-token"
    if path.exists():
        token = path.read_text().strip()
    else:
        token = "esl_" + secrets.token_urlsafe(24)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    UserRegistry(services.store, services.tokens).seed([(LOCAL_USER, token)], {LOCAL_USER})  # listed, revocable
    return token


def prepare(settings: Settings) -> Services:
    """Services for this process; an empty store gets the demo checkpoint as its default."""
    services = build_services(settings)
    if settings.default_checkpoint == DEMO_NAME:
        install_demo(services.store)
        install_demo_controlnet(services.store)
    return services


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound now: a busy port is an error before anything is printed as served."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    return sock


def serve(settings: Settings, host: str, port: int, data_dir: Path | None) -> None:
    import uvicorn

    GracefulServer = graceful_server_class()
    logs.configure(settings.log_format, settings.log_level)
    sock = listen(host, port)
    services = prepare(settings)
    app = create_app(services)
    start_background(services)  # re-queue tasks a previous run left open; poll inboxes when enabled
    url = f"http://{host}:{port}"
    if settings.tokens:
        token, who = "<your token from EASEL_TOKENS>", "EASEL_TOKENS users"
    else:
        token, who = local_token(services, data_dir or Path("data")), f"user '{LOCAL_USER}'"
    print(banner(url, token, who, settings), flush=True)  # the socket is bound: the URL works from now on
    config = uvicorn.Config(app, log_config=None, access_log=False)  # logging is ours (functions.logs)
    GracefulServer(config, services.executor.release).run(sockets=[sock])


def graceful_server_class():
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn, handing running tasks back first when SIGTERM / SIGINT stops it: uvicorn re-raises the
        signal once it has served, so code after `run()` never runs; `shutdown` is the last thing that does."""

        def __init__(self, config, on_stop):
            super().__init__(config)
            self.on_stop = on_stop

        async def shutdown(self, sockets=None):
            await asyncio.to_thread(self.on_stop)  # queued again at once, not failed, not counted as a run
            await super().shutdown(sockets)

    return GracefulServer


def banner(url: str, token: str, who: str, settings: Settings) -> str:
    payload = '{"prompt": "a cute dog", "steps": 20, "width": 512, "height": 512, "seed": 42}'
    demo = ("  The demo checkpoint has random weights: its images are coloured noise. For real images put A1111\n"
            "  .safetensors checkpoints in public/models/Stable-diffusion/ of the store.\n"
            if settings.default_checkpoint == DEMO_NAME else "")
    return f"""
easel is serving {url}   (store: {settings.store})
  token for {who}: {token}
  API docs: {url}/docs
{demo}
Try it:
  curl -s {url}/sdapi/v1/txt2img -H 'Authorization: Bearer {token}' \\
       -H 'Content-Type: application/json' -d '{payload}' \\
    | python3 -c 'import sys,json,base64; open("dog.png","wb").write(base64.b64decode(json.load(sys.stdin)["images"][0]))' \\
    && echo "saved dog.png"
"""
