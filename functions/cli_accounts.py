"""`easel users …`, `easel models …`, `easel usage`: the operator's commands, run against the store directly.

Wiring only: each command builds Services from Settings and calls one handler. The CLI acts as the
operator (it holds the store's credentials), so it may name any user and write public models.
Revocations made here reach a running server within handlers.accounts.auth.CACHE_TTL_S (5 s).
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from functions.cli_settings import settings_from_args


def _services(args):
    """What operator commands need (the store, its users and tokens, model listings), without the device side of
    functions.wiring.build_services: no torch import, so `easel users list` answers in about a second."""
    from handlers.accounts.auth import TokenRegistry
    from handlers.accounts.users import UserRegistry
    from handlers.services import Services
    from loaders.adapters.controlnet import ControlNetCache
    from loaders.models.manager import ModelManager, set_public_kinds
    from loaders.storage.store import open_store

    settings = settings_from_args(args)
    store = open_store(settings.store, endpoint_url=settings.s3_endpoint_url)
    set_public_kinds(store, settings.public_model_kinds())
    tokens = TokenRegistry(store)
    UserRegistry(store, tokens).seed(settings.token_pairs(), settings.admin_users())
    return Services(settings=settings, store=store, tokens=tokens,
                    models=ModelManager(store, settings.cache_dir, device="cpu"),
                    controlnets=ControlNetCache(store, settings.cache_dir))


def _registry(services):
    from handlers.accounts.users import UserRegistry

    return UserRegistry(services.store, services.tokens)


def _operator(user: str):
    from handlers.accounts.auth import Tenant

    return Tenant(user=user, role="admin")


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


# --- users ---

def cmd_users_add(args) -> None:
    print(_registry(_services(args)).add(args.name, "admin" if args.admin else "user"))


def cmd_users_list(args) -> None:
    records = _registry(_services(args)).list()
    print(table([[r.name, r.role, "active" if r.active else "revoked", len(r.tokens),
                  r.budget.model_dump_json(exclude_none=True) if r.budget else "-"] for r in records],
                ["user", "role", "state", "tokens", "budget"]))


def cmd_users_revoke(args) -> None:
    _registry(_services(args)).revoke(args.name)
    print(f"revoked every token of {args.name}")


def cmd_users_rotate(args) -> None:
    print(_registry(_services(args)).rotate(args.name))


def cmd_users_budget(args) -> None:
    from handlers.accounts.users import Budget

    budget = None if args.clear else Budget(seconds=args.seconds, cost=args.cost)
    record = _registry(_services(args)).set_budget(args.name, budget)
    print(f"{record.name}: budget {record.budget.model_dump() if record.budget else 'deployment default'}")


# --- models ---

def _upload(args, size: int, chunks, name: str) -> None:
    from tqdm import tqdm

    from handlers.http.models import save_model

    services = _services(args)
    with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=name) as bar:
        def counted():
            for chunk in chunks:
                bar.update(len(chunk))
                yield chunk

        result = save_model(services, _operator(args.user), args.kind, name, counted(), public=args.public,
                            overwrite=args.overwrite)
    print(f"{result['scope']} {args.kind} {result['name']}: {result['size']} bytes, sha256 {result['sha256']}")


def cmd_models_upload(args) -> None:
    from loaders.models.model_files import file_chunks

    path = Path(args.path)
    _upload(args, path.stat().st_size, file_chunks(path), args.name or path.name)


def cmd_models_import(args) -> None:
    import boto3

    from loaders.models.model_files import parse_s3_url, s3_chunks

    settings = settings_from_args(args)
    client = boto3.client("s3", endpoint_url=args.endpoint_url or settings.s3_endpoint_url)
    size, chunks = s3_chunks(args.url, client=client, max_bytes=settings.max_upload_mb * 2**20)
    _upload(args, size, chunks, args.name or parse_s3_url(args.url)[1].rsplit("/", 1)[-1])


def cmd_models_list(args) -> None:
    from handlers.http.models import visible_models

    rows = visible_models(_services(args), _operator(args.user), args.kind)
    print(table([[m["scope"], m["name"], m["size"], (m["sha256"] or "-")[:16]] for m in rows],
                ["scope", "name", "bytes", "sha256"]))


def cmd_models_delete(args) -> None:
    from handlers.http.models import delete_model

    print(delete_model(_services(args), _operator(args.user), args.kind, args.name, public=args.public))


# --- usage ---

def cmd_usage(args) -> None:
    from handlers.http.accounts import usage_report

    report = usage_report(_services(args), _operator("cli"), args.start, args.end, args.group_by, args.user)
    rows = [[r.user, r.key, r.executions, r.succeeded, r.failed, r.canceled, f"{r.billed_s:.3f}", f"{r.cost:.6f}"]
            for r in report.rows]
    t = report.total
    rows.append(["total", "", t.executions, t.succeeded, t.failed, t.canceled, f"{t.billed_s:.3f}", f"{t.cost:.6f}"])
    print(f"usage {report.start} .. {report.end} by {report.group_by}")
    print(table(rows, ["user", report.group_by, "runs", "ok", "failed", "canceled", "billed_s", "cost"]))


def add_commands(sub: argparse._SubParsersAction) -> None:
    from loaders.models.manager import KIND_DIRS

    def data_dir(p):
        p.add_argument("--data-dir", help="local store directory (sets EASEL_STORE=file://DIR)")
        return p

    u = sub.add_parser("users", help="manage users and tokens").add_subparsers(dest="users_command", required=True)
    p = data_dir(u.add_parser("add", help="add a user and print a new token"))
    p.add_argument("name")
    p.add_argument("--admin", action="store_true")
    p.set_defaults(func=cmd_users_add)
    data_dir(u.add_parser("list", help="list users")).set_defaults(func=cmd_users_list)
    for name, func, text in [("revoke", cmd_users_revoke, "revoke every token of a user"),
                             ("rotate", cmd_users_rotate, "print a new token; the old ones stop working")]:
        p = data_dir(u.add_parser(name, help=text))
        p.add_argument("name")
        p.set_defaults(func=func)
    p = data_dir(u.add_parser("budget", help="set a user's monthly budget"))
    p.add_argument("name")
    p.add_argument("--seconds", type=float, help="billed seconds per month")
    p.add_argument("--cost", type=float, help="currency per month")
    p.add_argument("--clear", action="store_true", help="back to the deployment default")
    p.set_defaults(func=cmd_users_budget)

    m = sub.add_parser("models", help="upload, import, list, delete models").add_subparsers(
        dest="models_command", required=True)
    kinds = sorted(KIND_DIRS)

    def target(p, writes=True):
        p.add_argument("--kind", choices=kinds, default="checkpoint")
        p.add_argument("--user", default="local", help="whose namespace (default: local)")
        if writes:
            p.add_argument("--public", action="store_true", help="into public/ (visible to every user)")
        return data_dir(p)

    p = target(m.add_parser("upload", help="upload a .safetensors file (validated, hashed)"))
    p.add_argument("path")
    p.add_argument("--name", help="file name in the store (default: the file's own)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_models_upload)
    p = target(m.add_parser("import", help="import s3://BUCKET/KEY (validated, hashed)"))
    p.add_argument("url")
    p.add_argument("--name")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--endpoint-url", help="S3 endpoint of the source (default EASEL_S3_ENDPOINT_URL)")
    p.set_defaults(func=cmd_models_import)
    target(m.add_parser("list", help="models visible to a user"), writes=False).set_defaults(func=cmd_models_list)
    p = target(m.add_parser("delete", help="delete a model"))
    p.add_argument("name")
    p.set_defaults(func=cmd_models_delete)

    p = data_dir(sub.add_parser("usage", help="billed seconds and cost per user (table)"))
    p.add_argument("--from", dest="start", type=date.fromisoformat, help="first day (default: 1st of the month)")
    p.add_argument("--to", dest="end", type=date.fromisoformat, help="last day (default: today)")
    p.add_argument("--group-by", choices=["day", "model", "mode"], default="day")
    p.add_argument("--user", help="one user (default: every user)")
    p.set_defaults(func=cmd_usage)
