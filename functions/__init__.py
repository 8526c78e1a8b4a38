"""Entry points and wiring: the composition root (wiring.py builds Services from Settings), the local server and
CLI, the Modal app. May import anything; nothing imports it but tests. Imports inside functions here are for
start-up speed (a CLI command imports only what it runs), never to dodge a cycle.
"""
