"""`easel` command line: serve, generate, users, demo-model. Parses flags, builds Settings, calls one handler."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from functions.cli_settings import add_eas_flags, settings_from_args


def cmd_serve(args) -> None:
    from functions.local import serve

    serve(settings_from_args(args), args.host, args.port, Path(args.data_dir) if args.data_dir else None)


def cmd_generate(args) -> None:
    from handlers.schemas import Txt2ImgRequest

    body = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "steps": args.steps,
            "width": args.width, "height": args.height, "seed": args.seed, "cfg_scale": args.cfg_scale}
    if args.sampler:
        body["sampler_name"] = args.sampler
    if args.checkpoint:
        body["alwayson_scripts"] = {"sd_model_checkpoint": args.checkpoint}
    request = Txt2ImgRequest(**body)  # a bad flag is refused before any model is touched
    settings = settings_from_args(args)
    print(f"store: {settings.store}", file=sys.stderr)  # outside a project this is ./data, created if absent
    from tqdm import tqdm

    from functions.local import LOCAL_USER, prepare
    from handlers.generation.generate import execute_job
    from handlers.jobs import Job

    services = prepare(settings)
    with tqdm(total=request.steps, unit="step", desc="generating") as bar:
        def on_step(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = execute_job(Job(user=LOCAL_USER, mode="txt2img", request=request, task_id="cli"), services, on_step)
    import base64

    Path(args.output).write_bytes(base64.b64decode(result.images[-1]))
    t = result.parameters.timings
    print(f"saved {args.output} (seed {result.parameters.seed}; load {t.load_s:.2f}s, generate {t.generate_s:.2f}s)")


def cmd_tasks(args) -> None:
    import json

    from functions.wiring import build_services
    from handlers.tasks.lifecycle import cancel_task
    from handlers.tasks.records import list_tasks, load_task

    services = build_services(settings_from_args(args))
    if args.tasks_command == "list":
        for r in list_tasks(services, args.user, args.status, args.limit):
            print(f"{r.task_id}\t{r.status}\t{r.mode}\t{r.progress.step}/{r.progress.total}\t{r.error}")
    elif args.tasks_command == "show":
        print(json.dumps(load_task(services, args.user, args.task_id).summary(), indent=2))
    else:
        print(cancel_task(services, args.user, args.task_id).status)


def cmd_watch(args) -> None:
    import logging
    import threading

    from functions.local import prepare
    from handlers.tasks.events import poll_inbox, watch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    services = prepare(settings_from_args(args))
    services.executor.recover()
    if args.once:
        for o in poll_inbox(services):
            print(f"{o.key}\t{o.status}\t{o.task_id or ''}\t{o.reason}")
        services.executor.wait_idle(args.timeout)
        return
    watch(services, args.interval, threading.Event())


def cmd_demo_model(args) -> None:
    from loaders.demo.model import demo_family, install_demo, write_demo_checkpoint
    from loaders.storage.store import open_store

    if args.output:
        print(write_demo_checkpoint(Path(args.output), family=demo_family(args.family)))
        return
    from loaders.demo.controlnet import install_demo_controlnet

    settings = settings_from_args(args)
    store = open_store(settings.store, endpoint_url=settings.s3_endpoint_url)
    print(install_demo(store, demo_family(args.family)))
    print(install_demo_controlnet(store))  # a tiny ControlNet that fits the demo checkpoint


def cmd_deploy(args) -> None:
    import json

    from functions.modal_config import ModalDeploy, describe
    from handlers.settings import Settings

    plan = describe(ModalDeploy(), Settings())
    print(json.dumps(plan, indent=2))
    if args.dry_run:
        return
    if plan["problems"]:
        raise SystemExit("easel: not deploying: " + "; ".join(plan["problems"]))
    import subprocess

    app_file = Path(__file__).with_name("modal_app.py")
    raise SystemExit(subprocess.call([sys.executable, "-m", "modal", "deploy", str(app_file)]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="easel", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the A1111/EAS API (and the web page)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--data-dir", help="local store directory (sets EASEL_STORE=file://DIR)")
    add_eas_flags(s)
    s.set_defaults(func=cmd_serve)

    g = sub.add_parser("generate", help="generate one image in-process")
    g.add_argument("prompt")
    g.add_argument("-o", "--output", default="easel.png")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--width", type=int, default=512)
    g.add_argument("--height", type=int, default=512)
    g.add_argument("--seed", type=int, default=-1)
    g.add_argument("--cfg-scale", type=float, default=7.0)
    g.add_argument("--sampler")
    g.add_argument("--checkpoint")
    g.add_argument("--data-dir")
    g.set_defaults(func=cmd_generate)

    from functions.cli_accounts import add_commands

    t = sub.add_parser("tasks", help="async tasks in the store").add_subparsers(dest="tasks_command", required=True)
    tl = t.add_parser("list", help="a user's tasks, newest first")
    tl.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "canceled"])
    tl.add_argument("--limit", type=int, default=50)
    for name, helptext in (("show", "one task's record"), ("cancel", "cancel a queued or running task")):
        tc = t.add_parser(name, help=helptext)
        tc.add_argument("task_id")
    for sp in (tl, t.choices["show"], t.choices["cancel"]):
        sp.add_argument("--user", default="local", help="whose tasks (default: the local user)")
        sp.add_argument("--data-dir")
        sp.set_defaults(func=cmd_tasks)

    w = sub.add_parser("watch", help="turn uploads to users/*/inbox/ into tasks (for stores without events)")
    w.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    w.add_argument("--once", action="store_true", help="one pass, wait for its tasks, exit")
    w.add_argument("--timeout", type=float, default=600.0, help="with --once: longest wait for the tasks")
    w.add_argument("--data-dir")
    w.set_defaults(func=cmd_watch)

    add_commands(sub)  # users, models, usage

    d = sub.add_parser("demo-model", help="write the tiny demo checkpoint and ControlNet into the store "
                                          "(or only the checkpoint to --output)")
    d.add_argument("--output")
    d.add_argument("--family", default="sd15", choices=["sd15", "sd15-inpaint", "sd2", "sdxl", "sdxl-refiner"],
                   help="architecture of the tiny model (random weights, tiny widths)")
    d.add_argument("--data-dir")
    d.set_defaults(func=cmd_demo_model)
    m = sub.add_parser("deploy", help="deploy on Modal (EASEL_MODAL_* and EASEL_* settings from the environment)")
    m.add_argument("--dry-run", action="store_true", help="print the resolved Modal configuration, deploy nothing")
    m.set_defaults(func=cmd_deploy)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as e:  # a mistake is one line naming the bad value, never a traceback
        message = mistake(e)
        if message is None:
            raise
        print(f"easel: {message}", file=sys.stderr)
        return 2
    return 0


_FLAGS = {"sampler_name": "sampler", "cfg_scale": "cfg-scale", "negative_prompt": "negative-prompt"}


def mistake(e: Exception) -> str | None:
    """The one-line message for an error a user can fix; None for a bug (its traceback is worth seeing)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from pydantic import ValidationError

    from loaders.errors import EaselError

    if isinstance(e, ValidationError):  # Settings from EASEL_*, or a request built from flags
        parts = []
        for err in e.errors()[:3]:
            where = ".".join(str(p) for p in err.get("loc", ())) or "value"
            bad = err.get("input")
            msg = err.get("msg", "invalid").removeprefix("Value error, ")
            shown = f" (got {bad!r:.80})" if bad is not None and not isinstance(bad, dict) \
                and str(bad) not in msg else ""
            flag = _FLAGS.get(where, where.replace("_", "-"))
            parts.append(f"--{flag}: {msg}{shown}" if e.title.endswith("Request") else f"{where}: {msg}{shown}")
        return "; ".join(parts)
    if isinstance(e, EaselError):
        return str(e)
    if isinstance(e, OSError):  # a path that is not there, not readable, a port in use...
        return f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e)
    if isinstance(e, (BotoCoreError, ClientError)):
        return f"object storage: {e}"
    return None


if __name__ == "__main__":
    sys.exit(main())
