"""Framing of the control protocol: one JSON object per line, and the reply envelope.

Sans-I/O in the style of h11: feed bytes with :meth:`LineDecoder.receive_data`, take
messages with :meth:`LineDecoder.next_message` until it returns :data:`NEED_DATA`. The only
exception that escapes the decoders is :class:`ControlProtocolError`; its ``fatal`` flag says
whether the byte stream is still in step (a bad message on one line) or not (a line over
the limit).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeAlias, TypeVar

VERSION: Final = 1
# One request or reply line, both directions. An explain document of a destination with
# many MX hosts and addresses stays far below it; anything larger is a broken peer.
MAX_LINE: Final = 64 * 1024  # bytes, including the "\n"
MAX_ERROR: Final = 1000  # characters of an error message kept on decoding

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
JsonObject: TypeAlias = dict[str, JsonValue]


class ErrorCode(enum.Enum):
    NOTFOUND = "notfound"
    REFUSED = "refused"
    USAGE = "usage"
    INTERNAL = "internal"


class ControlProtocolError(Exception):
    """A malformed, oversized or invalid control message.

    ``fatal``: the stream is out of step (oversized line) and the connection must close.
    """

    def __init__(
        self, message: str, code: ErrorCode = ErrorCode.USAGE, *, fatal: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.fatal = fatal


class _Need(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _Need.NEED_DATA


def load_object(line: bytes) -> JsonObject:
    """One line as a JSON object of this protocol version."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ControlProtocolError("message is not valid UTF-8") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: also integers over Python's digit limit
        raise ControlProtocolError("message is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ControlProtocolError("message is not a JSON object")
    version = doc.get("v")
    if version != VERSION or isinstance(version, bool):
        raise ControlProtocolError(f"unsupported protocol version {str(version)[:16]!r}")
    return doc


def dump(doc: JsonObject) -> bytes:
    line = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    if len(line) > MAX_LINE:
        raise ControlProtocolError(f"message of {len(line)} bytes exceeds {MAX_LINE}")
    return line


@dataclass(frozen=True, slots=True)
class Ok:
    """A successful reply; ``result`` is decoded per command by the results module."""

    result: JsonValue


@dataclass(frozen=True, slots=True)
class Failure:
    code: ErrorCode
    message: str

    def __post_init__(self) -> None:
        if "\n" in self.message or "\r" in self.message:
            raise ControlProtocolError("an error message is one line")


Reply: TypeAlias = Ok | Failure


def encode_reply(reply: Reply) -> bytes:
    """One reply line. A result too large for a line becomes an ``internal`` failure."""
    if isinstance(reply, Failure):
        return dump({"v": VERSION, "ok": False, "error": reply.message, "code": reply.code.value})
    try:
        return dump({"v": VERSION, "ok": True, "result": reply.result})
    except ControlProtocolError as exc:
        return encode_reply(Failure(ErrorCode.INTERNAL, f"reply too large: {exc}"))


def decode_reply(line: bytes) -> Reply:
    doc = load_object(line)
    ok = doc.get("ok")
    if ok is True:
        if "result" not in doc:
            raise ControlProtocolError("reply without a result")
        return Ok(doc["result"])
    if ok is not False:
        raise ControlProtocolError("reply without ok true/false")
    message, code = doc.get("error"), doc.get("code")
    if not isinstance(message, str) or not isinstance(code, str):
        raise ControlProtocolError("error reply without error and code strings")
    try:
        kind = ErrorCode(code)
    except ValueError:
        raise ControlProtocolError(f"unknown error code {code[:32]!r}") from None
    one_line = " ".join(message.split())[:MAX_ERROR]
    return Failure(kind, one_line)


M = TypeVar("M")


class LineDecoder(Generic[M]):
    """Splits a byte stream into lines and parses each with ``parse``.

    A parse error consumes its line (the stream stays in step); a line longer than
    ``max_line`` is fatal and every later call raises again.
    """

    __slots__ = ("_broken", "_buf", "_max_line", "_parse", "_scanned")

    def __init__(self, parse: Callable[[bytes], M], max_line: int = MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self._parse = parse
        self._max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no "\n"
        self._broken = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> M | _Need:
        if self._broken:
            raise ControlProtocolError(f"line longer than {self._max_line} bytes", fatal=True)
        buf = self._buf
        end = buf.find(b"\n", self._scanned, self._max_line)
        if end < 0:
            self._scanned = min(len(buf), self._max_line)
            if len(buf) >= self._max_line:
                self._broken = True
                return self.next_message()
            return NEED_DATA
        line = bytes(buf[:end])
        del buf[: end + 1]
        self._scanned = 0
        return self._parse(line)


def reply_decoder(max_line: int = MAX_LINE) -> LineDecoder[Reply]:
    return LineDecoder(decode_reply, max_line)
