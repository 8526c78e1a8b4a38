"""The EAS queue service's frames: `streaming.DataFrameProto` / `DataFrameListProto` in protobuf wire format.

The schema (from the `eas-prediction` client's queueservice.proto):
  DataFrameProto     { uint64 index = 1; map<string,string> tags = 2; bytes data = 3; string message = 4; }
  DataFrameListProto { repeated DataFrameProto index = 1; }
Four fields do not justify a protobuf runtime dependency (the client pins protobuf<=3.20, which other
libraries here outgrew), so the wire format is written and read by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loaders.errors import InvalidRequest

_VARINT, _LEN = 0, 2  # wire types used by these messages


@dataclass
class Frame:
    index: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    message: str = ""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(value)) + value


def encode_frame(frame: Frame) -> bytes:
    out = bytearray()
    if frame.index:
        out += _key(1, _VARINT) + _varint(frame.index)
    for k, v in frame.tags.items():
        entry = _bytes_field(1, k.encode()) + _bytes_field(2, v.encode())
        out += _bytes_field(2, entry)
    if frame.data:
        out += _bytes_field(3, frame.data)
    if frame.message:
        out += _bytes_field(4, frame.message.encode())
    return bytes(out)


def encode_list(frames: list[Frame]) -> bytes:
    return b"".join(_bytes_field(1, encode_frame(f)) for f in frames)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise InvalidRequest("frame: truncated or oversized varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: bytes):
    """(number, wire type, value) of each field; unknown wire types are refused, not skipped blindly."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _LEN:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise InvalidRequest("frame: a field runs past the end of the message")
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise InvalidRequest(f"frame: wire type {wire} is not used by DataFrameProto")
        yield number, wire, value


def decode_frame(buf: bytes) -> Frame:
    frame = Frame()
    for number, wire, value in _fields(buf):
        if number == 1 and wire == _VARINT:
            frame.index = value
        elif number == 2 and wire == _LEN:
            entry = {n: v for n, w, v in _fields(value) if w == _LEN}
            frame.tags[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
        elif number == 3 and wire == _LEN:
            frame.data = bytes(value)
        elif number == 4 and wire == _LEN:
            frame.message = value.decode()
    return frame


def decode_list(buf: bytes) -> list[Frame]:
    return [decode_frame(value) for number, wire, value in _fields(buf) if number == 1 and wire == _LEN]
