"""The web page's weight and speed: total bytes of the page (HTML, CSS, every JS module, favicon), time to
first render after navigation (signed in: the txt2img form with its lists), and time from a click on
Generate to the first live preview on the demo model (512×512, 20 steps, a preview every 2 steps).

Runs `easel serve`'s app under uvicorn on loopback and Debian's Chromium headless through Playwright.
    .venv/bin/python bench/webui_page.py [--runs 3] [--size 512] [--steps 20]
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import sync_playwright  # noqa: E402

from functions.wiring import build_services  # noqa: E402
from handlers.http.api import create_app  # noqa: E402
from handlers.http.webui import STATIC_DIR  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from loaders.demo.model import install_demo  # noqa: E402
from tests.browser_support import CHROMIUM_ARGS, ServerThread, ensure_chromium  # noqa: E402

TOKEN = "bench-token"


def page_bytes() -> dict:
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    by_kind: dict[str, int] = {}
    for p in files:
        by_kind[p.suffix.lstrip(".")] = by_kind.get(p.suffix.lstrip("."), 0) + p.stat().st_size
    return {"files": len(files), "total_bytes": sum(by_kind.values()), "by_kind": by_kind}


def measure(url: str, runs: int, size: int, steps: int) -> dict:
    renders, previews = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ensure_chromium(), args=CHROMIUM_ARGS)
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_init_script(f"localStorage.setItem('easel.token', {json.dumps(TOKEN)})")
            page = context.new_page()
            start = time.perf_counter()
            page.goto(url + "/")
            page.wait_for_selector("#tab-txt2img [data-field=sampler_name] option", state="attached")
            renders.append(time.perf_counter() - start)
            tab = page.locator("#tab-txt2img")
            for name, value in (("width", size), ("height", size), ("steps", steps), ("preview_every", 2)):
                tab.locator(f"[data-field={name}]").fill(str(value))
            start = time.perf_counter()
            tab.locator("button.generate").click()
            tab.locator(".live-preview img").wait_for(state="visible", timeout=600_000)
            previews.append(time.perf_counter() - start)
            tab.locator("figure.out.image").first.wait_for(timeout=600_000)
            context.close()
        browser.close()
    return {"first_render_s": {"median": round(statistics.median(renders), 3), "all": [round(x, 3) for x in renders]},
            "click_to_first_preview_s": {"median": round(statistics.median(previews), 3),
                                         "all": [round(x, 3) for x in previews]},
            "preview_every_steps": 2, "size": size, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        settings = Settings(store=f"file://{data}", cache_dir=Path(tmp) / "cache", tokens=f"bench={TOKEN}")
        services = build_services(settings)
        install_demo(services.store)
        with ServerThread(create_app(services)) as server:
            out = {"page": page_bytes(), **measure(server.url, args.runs, args.size, args.steps)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
