"""Netstrings (http://cr.yp.to/proto/netstrings.txt) as Postfix's socketmap uses them.

Sans-I/O in the style of h11: feed bytes with :meth:`Decoder.receive_data`, take complete
payloads with :meth:`Decoder.next_payload` until it returns :data:`NEED_DATA`. The only
exception that escapes is :class:`NetstringError`. Strict: digits only, no leading zeros
(a ``0`` length is itself fine), a ``:`` after at most ``max_digits`` digits, and a ``,``
terminator.

:func:`parse_whole` is the hot path's shortcut for the usual read (one whole request and
nothing else): the payload straight from the bytes, with the same header checks as the
Decoder; anything else is left to the Decoder (None), which also says what was wrong.
"""

from __future__ import annotations

import enum
from typing import Final


class _Need(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _Need.NEED_DATA


class NetstringError(Exception):
    """The peer sent something that is not a valid netstring, or one over the limit."""


# Postfix sends socketmap requests of at most 10000 bytes (socketmap_table(5)); a bit more
# leaves room for the map name and space without accepting anything absurd.
DEFAULT_MAX_PAYLOAD: Final = 10100


class Decoder:
    __slots__ = ("_buf", "_max_digits", "_max_payload")

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if max_payload < 0:
            raise ValueError("max_payload must not be negative")
        self._buf = bytearray()
        self._max_payload = max_payload
        self._max_digits = len(str(max_payload))

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_payload(self) -> bytes | _Need:
        buf = self._buf
        colon = buf.find(b":", 0, self._max_digits + 1)
        if colon < 0:
            if len(buf) > self._max_digits:
                raise NetstringError("netstring length too long or missing ':'")
            self._check_digits(buf)
            return NEED_DATA
        size = _announced(buf[:colon], self._max_payload)
        if isinstance(size, str):
            raise NetstringError(size)
        end = colon + 1 + size
        if len(buf) <= end:
            return NEED_DATA
        if buf[end] != 0x2C:  # ","
            raise NetstringError("netstring not terminated by ','")
        payload = bytes(buf[colon + 1 : end])
        del buf[: end + 1]
        return payload

    @staticmethod
    def _check_digits(chunk: bytes | bytearray) -> None:
        if chunk and not chunk.isdigit():
            raise NetstringError("netstring length is not a decimal number")


def _announced(header: bytes | bytearray, max_payload: int) -> int | str:
    """The payload size a netstring's header (the bytes before ``:``) announces, or why it
    is not a valid one (the Decoder's error message)."""
    if not header.isdigit():  # also b"": isdigit() is False
        return (
            "netstring length is not a decimal number" if header else "netstring without a length"
        )
    if len(header) > 1 and header[0] == 0x30:  # "0"
        return "netstring length with a leading zero"
    size = int(header)
    if size > max_payload:
        return f"netstring of {size} bytes exceeds the {max_payload} limit"
    return size


def parse_whole(data: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes | None:
    """The payload if ``data`` is exactly one valid netstring, as a :class:`Decoder` with the
    same ``max_payload`` would take it (and then have nothing buffered); None for anything
    else: part of one, more than one, or an invalid one (feed those to a Decoder)."""
    colon = data.find(b":")
    if colon < 0 or data[-1] != 0x2C:  # ","
        return None
    # A header longer than the Decoder's max_digits is refused here too: without a leading
    # zero, more digits than max_payload has announce more than max_payload.
    size = _announced(data[:colon], max_payload)
    if isinstance(size, str) or colon + size + 2 != len(data):
        return None
    return data[colon + 1 : -1]


def encode(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)
