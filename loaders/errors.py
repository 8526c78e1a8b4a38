"""One family of errors for the whole project; handlers.http.api maps each leaf to one HTTP status."""


class EaselError(Exception):
    """Base class: `str(err)` is the message a client sees."""

    status = 500


class InvalidRequest(EaselError):
    status = 422


class NotFound(EaselError):
    status = 404


class Forbidden(EaselError):
    status = 403


class Unauthorized(EaselError):
    status = 401


class Conflict(EaselError):
    status = 409


class PayloadTooLarge(EaselError):
    status = 413


class QuotaExceeded(EaselError):
    status = 402


class StorageError(EaselError):
    """The store refused or failed an operation; retrying will not help (permission, read-only disk)."""

    status = 503


class TransientStorageError(StorageError):
    """The store failed in a way that may pass (503 SlowDown, a reset connection, a timeout): retried with
    backoff by loaders.storage.faults before it reaches anyone."""

    status = 503


class StorageFull(StorageError):
    """The disk or quota under the store is full."""

    status = 507


class Unavailable(EaselError):
    """The server lacks something only an operator can install (a tokenizer, a preprocessor's weights)."""

    status = 503


class TooManyRequests(EaselError):
    status = 429


class RangeNotSatisfiable(EaselError):
    status = 416


class TimeLimitExceeded(EaselError):
    status = 503


class ClientDisconnected(EaselError):
    """The caller closed the connection mid-generation: stopped at the next step, billed what ran (nginx's 499)."""

    status = 499
