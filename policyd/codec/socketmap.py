"""Postfix socketmap protocol (socketmap_table(5)): ``NAME KEY`` requests, status replies.

Requests and replies travel as netstrings (:mod:`policyd.codec.netstring`); this module
splits a request payload, renders reply payloads (:func:`reply_for` tells Postfix a verdict)
and frames them (:func:`encoded`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from policyd.codec import netstring, postfix_policy
from policyd.core.frozen import quick_init
from policyd.core.types import Outcome, Verdict

# socketmap_table(5): the server's reply must not exceed 100000 bytes.
MAX_REPLY: Final = 100_000
# Longest map name we accept; profile names are short words.
MAX_NAME: Final = 64


class SocketmapError(Exception):
    """A request payload that is not ``NAME<space>KEY``."""


class ReplyTooLong(ValueError):
    """An ``OK`` reply over :data:`MAX_REPLY` bytes: cut, it would be another policy."""

    def __init__(self, size: int) -> None:
        super().__init__(f"reply of {size} bytes exceeds the socketmap limit of {MAX_REPLY}")
        self.size = size


class Status(enum.Enum):
    OK = "OK"
    NOTFOUND = "NOTFOUND"
    TEMP = "TEMP"
    TIMEOUT = "TIMEOUT"
    PERM = "PERM"


@quick_init
@dataclass(frozen=True, slots=True)
class Request:
    name: str
    key: str


def parse_request(payload: bytes) -> Request:
    name_b, sep, key_b = payload.partition(b" ")
    if not sep:
        raise SocketmapError("request without a space between map name and key")
    if not name_b or len(name_b) > MAX_NAME:
        raise SocketmapError("missing or overlong map name")
    if not key_b:
        raise SocketmapError("empty key")
    try:
        name = name_b.decode("ascii")
        key = key_b.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SocketmapError("request is not valid UTF-8") from exc
    if not name.isprintable() or not key.isprintable():
        raise SocketmapError("control characters in request")
    return Request(name, key)


def reply(status: Status, data: str = "") -> bytes:
    """A reply payload; data is one line. An ``OK`` reply over the protocol's size limit
    raises :class:`ReplyTooLong` (a policy cut mid-attribute is a different policy, so the
    caller answers TEMP instead); the text of other replies only explains, and is cut."""
    text = data.replace("\r", " ").replace("\n", " ")
    if status is Status.NOTFOUND:
        text = ""
    out = f"{status.value} {text}".encode()
    if len(out) > MAX_REPLY:
        if status is Status.OK:
            raise ReplyTooLong(len(out))
        # Cut at a character boundary: Postfix must never get half a UTF-8 sequence.
        out = out[:MAX_REPLY].decode("utf-8", "ignore").encode()
    return out


def encoded(status: Status, data: str = "") -> bytes:
    """A whole reply as it goes on the wire: :func:`reply` in a netstring."""
    return netstring.encode(reply(status, data))


def reply_for(verdict: Verdict) -> bytes:
    """The reply payload telling Postfix a verdict: ``OK`` and the policy, ``NOTFOUND``, or
    ``TEMP`` and the reason. A policy too long for one reply raises :class:`ReplyTooLong`
    (:func:`policyd.told.as_sent` answers such a verdict TEMP before it gets here)."""
    if verdict.outcome is Outcome.TEMP:
        return reply(Status.TEMP, verdict.reason)
    if verdict.policy is None:
        return reply(Status.NOTFOUND)
    return reply(Status.OK, postfix_policy.render(verdict.policy))
