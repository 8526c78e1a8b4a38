"""The web page's own routes: the page itself, its config, the gallery and the file browser."""

from __future__ import annotations

import io
import os

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from handlers.http.api import create_app
from loaders.storage.store import LocalStore
from tests.conftest import SMALL, auth


def generate(client, prompt, user="alice", **extra):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, **SMALL, **extra}, headers=auth(user))
    assert r.status_code == 200, r.text
    return r.json()


def test_page_and_static_files_load_without_a_token_and_carry_a_csp(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/app.js">' in page.text
    for path in ("/static/app.js", "/static/app.css", "/static/js/api.js", "/static/js/generate.js"):
        assert client.get(path).status_code == 200, path
    assert "http" not in "".join(line for line in page.text.splitlines() if "src=" in line or "href=" in line)
    assert client.get("/static/../api.py")  # static/ sits beside api.py.status_code == 404


def test_page_config_needs_a_token_and_names_user_features_and_hidden_tabs(store, make_services):
    services = make_services(store, hide_tabs="files, Prompt,bogus")
    with TestClient(create_app(services)) as c:
        assert c.get("/webui/config").status_code == 401
        cfg = c.get("/webui/config", headers=auth("root")).json()
    assert cfg["user"] == "root" and cfg["role"] == "admin"
    assert cfg["hidden_tabs"] == ["files", "prompt"]
    assert cfg["features"]["beautifulprompt"] is True and cfg["nsfw_censor"] is False
    assert set(cfg["features"]) >= {"img2img", "loras", "vae", "controlnet", "upload", "tasks"}


def first_line(client, item, user="alice") -> str:
    r = client.get("/outputs/infotext", params={"key": item["key"]}, headers=auth(user))
    assert r.status_code == 200, r.text
    return r.json()["infotext"].split("\n")[0]


def test_gallery_lists_own_outputs_newest_first_in_pages(client):
    for k in range(3):
        generate(client, f"picture {k}", seed=k)
    generate(client, "bob's picture", user="bob")
    first = client.get("/outputs", params={"limit": 2}, headers=auth()).json()
    assert [first_line(client, i) for i in first["items"]] == ["picture 2", "picture 1"]
    assert first["next_cursor"]
    second = client.get("/outputs", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth()).json()
    assert [first_line(client, i) for i in second["items"]] == ["picture 0"]
    assert second["next_cursor"] is None
    item = first["items"][0]
    assert item["key"].startswith("users/alice/outputs/txt2img-images/") and item["folder"].startswith("txt2img-images/")
    png = client.get("/" + item["url"].split("://", 1)[1].split("/", 1)[1], headers=auth())
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    bob = client.get("/outputs", headers=auth("bob")).json()["items"]
    assert [first_line(client, i, "bob") for i in bob] == ["bob's picture"]
    r = client.get("/outputs/infotext", params={"key": bob[0]["key"]}, headers=auth())  # not alice's
    assert r.status_code == 422 and "outputs/" in r.json()["detail"]


class CountingStore(LocalStore):
    """A local store that counts the image bodies read (any way the store hands out bytes)."""

    def __init__(self, root):
        super().__init__(root)
        self.body_reads: list[str] = []

    def _count(self, key):
        if key.lower().endswith((".png", ".jpg", ".webp")):
            self.body_reads.append(key)

    def get_bytes(self, key):
        self._count(key)
        return super().get_bytes(key)

    def get_file(self, key, path):
        self._count(key)
        return super().get_file(key, path)

    def iter_range(self, key, start, end, chunk=1 << 20):
        self._count(key)
        return super().iter_range(key, start, end, chunk)

    def local_path(self, key):
        self._count(key)
        return super().local_path(key)


def tiny_png(prompt: str) -> bytes:
    meta = PngInfo()
    meta.add_text("parameters", f"{prompt}\nSteps: 1, Sampler: Euler, Seed: 1, Size: 8x8")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buf, "PNG", pnginfo=meta)
    return buf.getvalue()


def put_outputs(store: LocalStore, user: str, n: int) -> list[str]:
    """n stored outputs with distinct times (image k is k seconds newer than image 0); their keys, newest first."""
    keys = []
    for k in range(n):
        key = f"users/{user}/outputs/txt2img-images/2026-12-0{1 + k % 2}/{k:05d}-1.png"
        store.put_bytes(key, tiny_png(f"picture {k}"))
        os.utime(store.root / key, (1.7e9 + k, 1.7e9 + k))
        keys.append(key)
    return keys[::-1]


def test_a_gallery_page_of_hundreds_of_outputs_reads_no_image_body(tmp_path, make_services):
    store = CountingStore(tmp_path / "data")
    newest_first = put_outputs(store, "alice", 300)
    with TestClient(create_app(make_services(store))) as c:
        seen, cursor, pages = [], None, 0
        while True:
            page = c.get("/outputs", params={"limit": 100, **({"cursor": cursor} if cursor else {})},
                         headers=auth()).json()
            seen += [i["key"] for i in page["items"]]
            pages += 1
            assert len(page["items"]) <= 100
            if not (cursor := page["next_cursor"]):
                break
        assert store.body_reads == []  # three pages of 100 from the listing alone
        assert (pages, seen) == (3, newest_first)
        assert c.get("/outputs", params={"limit": 101}, headers=auth()).status_code == 422  # bounded page
        one = c.get("/outputs/infotext", params={"key": seen[5]}, headers=auth()).json()
        assert one["infotext"].startswith("picture 294\n") and store.body_reads == [seen[5]]  # one read for one image
        r = c.get("/outputs/infotext", params={"key": "users/alice/outputs/none.png"}, headers=auth())
        assert r.status_code == 404


def test_gallery_refuses_a_forged_cursor_and_an_absurd_limit(client):
    r = client.get("/outputs", params={"cursor": "not-a-cursor"}, headers=auth())
    assert r.status_code == 422 and "cursor" in r.json()["detail"]
    r = client.get("/outputs", params={"limit": 100000}, headers=auth())
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    assert client.get("/outputs").status_code == 401
    r = client.get("/outputs/infotext", params={"key": "users/alice/outputs/../../bob/outputs/x.png"}, headers=auth())
    assert r.status_code in (404, 422) and "x.png" in r.json()["detail"]


def test_file_browser_lists_levels_and_deletes_own_outputs(client, store):
    generate(client, "to delete", seed=1)
    top = client.get("/browse", headers=auth()).json()
    assert top["folders"] == ["embeddings", "inbox", "inputs", "models", "outbox", "outputs"] and top["writable"]
    day = client.get("/browse", params={"path": "outputs/txt2img-images"}, headers=auth()).json()["folders"][0]
    listing = client.get("/browse", params={"path": f"outputs/txt2img-images/{day}"}, headers=auth()).json()
    (file,) = listing["files"]
    assert file["size"] > 0 and file["name"].endswith(".png")
    r = client.delete("/browse", params={"path": f"outputs/txt2img-images/{day}/{file['name']}"}, headers=auth())
    assert r.status_code == 200, r.text
    assert not store.exists(file["key"])
    assert client.get("/outputs", headers=auth()).json()["items"] == []


def test_public_files_are_readable_by_all_and_deletable_by_admins_only(client, store):
    key = "public/models/Stable-diffusion/easel-demo.safetensors"
    for user in ("alice", "root"):
        listing = client.get("/browse", params={"root": "public", "path": "models/Stable-diffusion"},
                             headers=auth(user)).json()
        assert [f["name"] for f in listing["files"]] == ["easel-demo.safetensors"]
        assert listing["writable"] is (user == "root")
    path = {"root": "public", "path": "models/Stable-diffusion/easel-demo.safetensors"}
    assert client.delete("/browse", params=path, headers=auth("alice")).status_code == 403
    assert store.exists(key)
    assert client.delete("/browse", params=path, headers=auth("root")).status_code == 200
    assert not store.exists(key)


@pytest.mark.parametrize("path", ["../bob/outputs", "outputs/../../bob", "outputs/..", "a\\b", "outputs/\x00"])
def test_file_browser_paths_cannot_leave_the_namespace(client, path):
    for method in ("get", "delete"):
        r = getattr(client, method)("/browse", params={"path": path}, headers=auth())
        assert r.status_code in (404, 422), (method, path, r.text)


def test_file_browser_sees_only_own_files_and_not_task_records(client, store):
    generate(client, "alice only", seed=3)
    store.put_bytes("users/alice/tasks/t1.json", b"{}")
    assert client.get("/browse", params={"path": "outputs"}, headers=auth("bob")).json()["folders"] == []
    r = client.get("/browse", params={"path": "tasks"}, headers=auth())
    assert r.status_code == 404 and "tasks" in r.json()["detail"]
    r = client.delete("/browse", params={"path": "tasks/t1.json"}, headers=auth())
    assert r.status_code == 404 and store.exists("users/alice/tasks/t1.json")


@pytest.mark.parametrize("method,path", [
    ("get", "/webui/config"), ("get", "/outputs"), ("get", "/browse"), ("delete", "/browse?path=outputs/x.png"),
    ("get", "/beautifulprompt/models"), ("post", "/beautifulprompt"),
])
@pytest.mark.parametrize("header", [None, "Bearer wrong"])
def test_the_page_api_refuses_missing_or_wrong_tokens(client, method, path, header):
    headers = {"Authorization": header} if header else {}
    r = client.request(method.upper(), path, headers=headers,
                       **({"json": {"prompt": "x", "model": "m"}} if method == "post" else {}))
    assert r.status_code == 401, r.text
