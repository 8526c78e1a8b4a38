"""The gallery's cost as the caller's outputs grow: time for one page (`GET /outputs?limit=24`, the first and
one deep in the history by cursor) with N tiny stored outputs, and how many image bodies the server read for
it (0: a page comes from the store's listing alone).

    .venv/bin/python bench/gallery_page.py [--outputs 300 3000] [--runs 5]
Prints one JSON line per N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient  # noqa: E402

from functions.wiring import build_services  # noqa: E402
from handlers.http.api import create_app  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from tests.test_webui_api import CountingStore, put_outputs  # noqa: E402

TOKEN = "bench-token"


def timed_page(client, cursor: str | None) -> tuple[float, dict]:
    params = {"limit": 24, **({"cursor": cursor} if cursor else {})}
    t0 = time.perf_counter()
    r = client.get("/outputs", params=params, headers={"Authorization": f"Bearer {TOKEN}"})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    return elapsed, r.json()


def measure(n: int, runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = CountingStore(Path(tmp) / "data")
        put_outputs(store, "bench", n)
        settings = Settings(store=f"file://{Path(tmp) / 'data'}", cache_dir=Path(tmp) / "cache", tokens=f"bench={TOKEN}")
        with TestClient(create_app(build_services(settings, store=store))) as client:
            first, deep, cursor = [], [], None
            for _ in range(runs):
                s, page = timed_page(client, None)
                first.append(s)
            for _ in range(n // 48):  # halfway down the history
                _, page = timed_page(client, cursor)
                cursor = page["next_cursor"]
            for _ in range(runs):
                s, _ = timed_page(client, cursor)
                deep.append(s)
        return {"outputs": n, "first_page_ms": round(statistics.median(first) * 1000, 1),
                "middle_page_ms": round(statistics.median(deep) * 1000, 1), "image_bodies_read": len(store.body_reads),
                "cpu_count": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outputs", type=int, nargs="+", default=[300, 3000])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    for n in args.outputs:
        print(json.dumps(measure(n, args.runs)), flush=True)


if __name__ == "__main__":
    main()
