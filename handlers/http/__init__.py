"""HTTP: the FastAPI app factory with the one error → status map (api.py), one router module per route family
(listing, tasks, models, accounts, files, gallery, prompt, webui) and the static web page.

The top of handlers: may import every package below it; nothing in handlers imports it.
"""
