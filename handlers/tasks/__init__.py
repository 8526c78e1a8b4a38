"""Tasks: asynchronous task records in the store, the workers and executor that run them, webhooks, and the
bucket-upload events that create them.

May import handlers.generation and everything below it; never handlers.http.
"""
