"""Streaming an object's bytes in chunks (for GET /files/ with ranges): never the whole object in memory."""

from __future__ import annotations

from collections.abc import Iterator

from loaders.errors import RangeNotSatisfiable

CHUNK = 2**20  # bytes per read when streaming an object


def read_range(f, start: int, end: int, chunk: int) -> Iterator[bytes]:
    with f:
        f.seek(start)
        left = end - start + 1
        while left > 0:
            data = f.read(min(chunk, left))
            if not data:
                return
            left -= len(data)
            yield data


def s3_chunks(body, chunk: int) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(chunk)
    finally:
        body.close()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=a-b` / `bytes=a-` / `bytes=-n` range as (start, end) inclusive; None for the whole
    object (no header, several ranges, another unit: a server may answer those with the whole object).
    An unsatisfiable range is a 416."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[6:].strip().partition("-")
    if not sep or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) \
            or (last and not last.isdigit()):
        return None
    if not first:  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"range {header[:60]!r} is not satisfiable for {size} bytes")
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"range {header[:60]!r} is not satisfiable for {size} bytes")
    return start, end
