"""Storage: the ObjectStore contract (LocalStore, S3Store), the SSRF-safe fetcher for links, capped image decoding.

May import loaders.errors only.
"""
