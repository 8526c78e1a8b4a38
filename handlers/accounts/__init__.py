"""Accounts: tokens (only their SHA-256 digests are stored), users and roles, the Tenant a request runs as.

May import the contract (handlers.schemas, settings, …) and loaders; nothing else in handlers.
"""
