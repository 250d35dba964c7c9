"""The control protocol between ``policyctl`` and the daemon: one JSON object per line.

Sans-I/O in the style of h11: feed bytes with :meth:`LineDecoder.receive_data`, take
messages with :meth:`LineDecoder.next_message` until it returns :data:`NEED_DATA`. The only
exception that escapes the decoders and the request constructors is
:class:`ControlProtocolError`; its ``fatal`` flag says whether the byte stream is still in
step (a bad request on one line) or not (a line over the limit).

Wire format, version 1 (UTF-8, ``\\n``-terminated, at most :data:`MAX_LINE` bytes a line)::

    request  {"v": 1, "cmd": "explain", "args": {"domain": "example.com"}}
    reply    {"v": 1, "ok": true, "result": ...}
             {"v": 1, "ok": false, "error": "no override for example.com", "code": "notfound"}

Requests are typed, one frozen dataclass per command, and validate on construction: the
destination with the socketmap key parser, an override policy with the Postfix policy
codec the daemon itself answers with. Results are plain JSON documents (the ``--json``
output of ``policyctl``), described in man/policyctl.8.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Generic, TypeAlias, TypeVar

from policyd.codec import postfix_policy
from policyd.codec.destination import KeyError_, parse_key
from policyd.core.evidence import Destination
from policyd.core.types import Policy

VERSION: Final = 1
# One request or reply line, both directions. An explain document of a destination with
# many MX hosts and addresses stays far below it; anything larger is a broken peer.
MAX_LINE: Final = 64 * 1024  # bytes, including the "\n"
MAX_COMMENT: Final = 500  # characters in an override comment
MAX_ERROR: Final = 1000  # characters of an error message kept on decoding
# Longest duration accepted for --expires and --since: ten years, in seconds.
MAX_DURATION: Final = 3650 * 86400
# Destinations in one ``warm`` request: the milter sends a message's new recipient
# domains, and Postfix's default smtpd_recipient_limit is 1000 recipients.
MAX_WARM_DOMAINS: Final = 100

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

# -- durations -------------------------------------------------------------------------

_DURATION = re.compile(r"(\d{1,10})([smhdw]?)")
_UNIT_SECONDS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``90``, ``30m``, ``12h``, ``7d``, ``1w`` or a sum such as ``1h30m``, in seconds."""
    text = text.strip().lower()
    if not text:
        raise ControlProtocolError("empty duration")
    total, pos = 0, 0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None:
            raise ControlProtocolError(
                f"bad duration {text[:32]!r}: use a number with s, m, h, d or w (30m, 12h, 7d)"
            )
        total += int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not 0 < total <= MAX_DURATION:
        raise ControlProtocolError(f"duration {text[:32]!r} out of range")
    return total


def format_duration(seconds: float) -> str:
    """A short human duration: ``45s``, ``3m``, ``2h``, ``2h5m``, ``3d``, ``2w``."""
    secs = max(0, round(seconds))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m"
    if secs < 86400:
        hours, mins = divmod(secs // 60, 60)
        return f"{hours}h{mins}m" if mins and hours < 10 else f"{hours}h"
    days = secs // 86400
    if days >= 14 and days % 7 == 0:
        return f"{days // 7}w"
    return f"{days}d"


# -- requests --------------------------------------------------------------------------


class Command(enum.Enum):
    OVERRIDE_SET = "override-set"
    OVERRIDE_DEL = "override-del"
    OVERRIDE_LIST = "override-list"
    EXPLAIN = "explain"
    PROBE = "probe"
    FLUSH = "flush"
    REPORT = "report"
    STATUS = "status"
    RELOAD = "reload"
    WARM = "warm"
    CHECK = "check"

    @property
    def writes(self) -> bool:
        """Commands that change state: only root and the control group may send them."""
        return self in _WRITES


_WRITES: Final = frozenset(
    {Command.OVERRIDE_SET, Command.OVERRIDE_DEL, Command.FLUSH, Command.PROBE, Command.RELOAD}
)


def parse_destination(key: str) -> Destination:
    try:
        return parse_key(key)
    except KeyError_ as exc:
        raise ControlProtocolError(f"bad destination {key[:64]!r}: {exc}") from None


def _check_seconds(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_DURATION):
        raise ControlProtocolError(f"{name} must be between 1 second and {MAX_DURATION}s")


@dataclass(frozen=True, slots=True)
class OverrideSet:
    destination: Destination
    policy: Policy
    expires: float | None = None  # seconds from now; None: never
    comment: str = ""

    command = Command.OVERRIDE_SET

    def __post_init__(self) -> None:
        _check_seconds("expires", self.expires)
        if len(self.comment) > MAX_COMMENT:
            raise ControlProtocolError(f"comment longer than {MAX_COMMENT} characters")
        if not self.comment.isprintable():
            # Newlines, ESC, NUL...: a comment ends up in reasons, logs and terminals.
            raise ControlProtocolError("a comment is one line of printable text")

    def args(self) -> JsonObject:
        return {
            "domain": self.destination.key,
            "policy": postfix_policy.render(self.policy),
            "expires": self.expires,
            "comment": self.comment,
        }


@dataclass(frozen=True, slots=True)
class OverrideDel:
    destination: Destination

    command = Command.OVERRIDE_DEL

    def args(self) -> JsonObject:
        return {"domain": self.destination.key}


@dataclass(frozen=True, slots=True)
class OverrideList:
    command = Command.OVERRIDE_LIST

    def args(self) -> JsonObject:
        return {}


@dataclass(frozen=True, slots=True)
class Explain:
    destination: Destination

    command = Command.EXPLAIN

    def args(self) -> JsonObject:
        return {"domain": self.destination.key}


@dataclass(frozen=True, slots=True)
class Probe:
    destination: Destination
    wait: bool = False

    command = Command.PROBE

    def __post_init__(self) -> None:
        if self.destination.parent_form or self.destination.is_address:
            raise ControlProtocolError(
                f"{self.destination.key}: only a domain or a [host] can be probed"
            )

    def args(self) -> JsonObject:
        return {"domain": self.destination.key, "wait": self.wait}


@dataclass(frozen=True, slots=True)
class Flush:
    destination: Destination | None  # None: everything
    include_mta_sts: bool = False  # cached MTA-STS policies are kept unless asked (TOFU)

    command = Command.FLUSH

    def args(self) -> JsonObject:
        args: JsonObject = {"domain": None if self.destination is None else self.destination.key}
        if self.include_mta_sts:
            args["include_mta_sts"] = True
        return args


DEFAULT_REPORT_SINCE: Final = 86400  # seconds: `policyctl report` looks back one day


@dataclass(frozen=True, slots=True)
class Report:
    since: float = DEFAULT_REPORT_SINCE  # seconds back from now

    command = Command.REPORT

    def __post_init__(self) -> None:
        _check_seconds("since", self.since)

    def args(self) -> JsonObject:
        return {"since": self.since}


@dataclass(frozen=True, slots=True)
class Status:
    command = Command.STATUS

    def args(self) -> JsonObject:
        return {}


@dataclass(frozen=True, slots=True)
class Reload:
    command = Command.RELOAD

    def args(self) -> JsonObject:
        return {}


@dataclass(frozen=True, slots=True)
class Warm:
    """Start gathering evidence for these destinations in the background (policyd-milter)."""

    destinations: tuple[Destination, ...]

    command = Command.WARM

    def __post_init__(self) -> None:
        if not 0 < len(self.destinations) <= MAX_WARM_DOMAINS:
            raise ControlProtocolError(f"warm: give 1 to {MAX_WARM_DOMAINS} domains")

    def args(self) -> JsonObject:
        return {"domains": [d.key for d in self.destinations]}


@dataclass(frozen=True, slots=True)
class Check:
    """The current verdict for the default profile and whether it can be met now."""

    destination: Destination

    command = Command.CHECK

    def args(self) -> JsonObject:
        return {"domain": self.destination.key}


Request: TypeAlias = (
    OverrideSet
    | OverrideDel
    | OverrideList
    | Explain
    | Probe
    | Flush
    | Report
    | Status
    | Reload
    | Warm
    | Check
)


class _Args:
    """Typed access to a request's ``args`` object; every problem is a protocol error."""

    def __init__(self, cmd: Command, raw: JsonObject) -> None:
        self._cmd = cmd
        self._raw = raw

    def text(self, name: str, *, default: str | None = None) -> str:
        value = self._raw.get(name, default)
        if not isinstance(value, str):
            raise ControlProtocolError(f"{self._cmd.value}: {name} must be a string")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self._raw.get(name)
        return None if value is None else self.text(name)

    def seconds(self, name: str, *, default: float | None) -> float | None:
        value = self._raw.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ControlProtocolError(f"{self._cmd.value}: {name} must be a number of seconds")
        try:
            return float(value)
        except OverflowError:
            raise ControlProtocolError(f"{self._cmd.value}: {name} out of range") from None

    def flag(self, name: str) -> bool:
        value = self._raw.get(name, False)
        if not isinstance(value, bool):
            raise ControlProtocolError(f"{self._cmd.value}: {name} must be true or false")
        return value

    def texts(self, name: str, *, limit: int) -> list[str]:
        value = self._raw.get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ControlProtocolError(f"{self._cmd.value}: {name} must be a list of strings")
        if len(value) > limit:
            raise ControlProtocolError(f"{self._cmd.value}: more than {limit} {name}")
        return [v for v in value if isinstance(v, str)]

    def only(self, *names: str) -> None:
        extra = sorted(set(self._raw) - set(names))
        if extra:
            raise ControlProtocolError(f"{self._cmd.value}: unknown argument {extra[0][:32]!r}")


def parse_policy(text: str) -> Policy:
    try:
        return postfix_policy.parse(text)
    except postfix_policy.PolicySyntaxError as exc:
        raise ControlProtocolError(f"bad policy {text[:64]!r}: {exc}") from None


def _build_request(cmd: Command, a: _Args) -> Request:
    if cmd is Command.OVERRIDE_SET:
        a.only("domain", "policy", "expires", "comment")
        return OverrideSet(
            parse_destination(a.text("domain")),
            parse_policy(a.text("policy")),
            a.seconds("expires", default=None),
            a.text("comment", default=""),
        )
    if cmd in (Command.OVERRIDE_DEL, Command.EXPLAIN, Command.CHECK):
        a.only("domain")
        dest = parse_destination(a.text("domain"))
        if cmd is Command.CHECK:
            return Check(dest)
        return OverrideDel(dest) if cmd is Command.OVERRIDE_DEL else Explain(dest)
    if cmd is Command.WARM:
        a.only("domains")
        keys = a.texts("domains", limit=MAX_WARM_DOMAINS)
        return Warm(tuple(parse_destination(k) for k in keys))
    if cmd is Command.PROBE:
        a.only("domain", "wait")
        return Probe(parse_destination(a.text("domain")), a.flag("wait"))
    if cmd is Command.FLUSH:
        a.only("domain", "include_mta_sts")
        key = a.optional_text("domain")
        which = None if key is None else parse_destination(key)
        return Flush(which, a.flag("include_mta_sts"))
    if cmd is Command.REPORT:
        a.only("since")
        since = a.seconds("since", default=DEFAULT_REPORT_SINCE)
        return Report(DEFAULT_REPORT_SINCE if since is None else since)
    a.only()
    simple: dict[Command, Callable[[], Request]] = {
        Command.OVERRIDE_LIST: OverrideList,
        Command.STATUS: Status,
        Command.RELOAD: Reload,
    }
    return simple[cmd]()


# -- messages on the wire --------------------------------------------------------------


def _load_object(line: bytes) -> JsonObject:
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


def decode_request(line: bytes) -> Request:
    doc = _load_object(line)
    name = doc.get("cmd")
    if not isinstance(name, str):
        raise ControlProtocolError("request without a command")
    try:
        cmd = Command(name)
    except ValueError:
        raise ControlProtocolError(f"unknown command {name[:32]!r}") from None
    args = doc.get("args", {})
    if not isinstance(args, dict):
        raise ControlProtocolError("args must be a JSON object")
    return _build_request(cmd, _Args(cmd, args))


def _dump(doc: JsonObject) -> bytes:
    line = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    if len(line) > MAX_LINE:
        raise ControlProtocolError(f"message of {len(line)} bytes exceeds {MAX_LINE}")
    return line


def encode_request(req: Request) -> bytes:
    return _dump({"v": VERSION, "cmd": req.command.value, "args": req.args()})


@dataclass(frozen=True, slots=True)
class Ok:
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
        return _dump({"v": VERSION, "ok": False, "error": reply.message, "code": reply.code.value})
    try:
        return _dump({"v": VERSION, "ok": True, "result": reply.result})
    except ControlProtocolError as exc:
        return encode_reply(Failure(ErrorCode.INTERNAL, f"reply too large: {exc}"))


def decode_reply(line: bytes) -> Reply:
    doc = _load_object(line)
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


def request_decoder(max_line: int = MAX_LINE) -> LineDecoder[Request]:
    return LineDecoder(decode_request, max_line)


def reply_decoder(max_line: int = MAX_LINE) -> LineDecoder[Reply]:
    return LineDecoder(decode_reply, max_line)


def result_object(result: JsonValue) -> Mapping[str, JsonValue]:
    """A result that must be a JSON object (as every command's result is)."""
    if not isinstance(result, dict):
        raise ControlProtocolError("result is not a JSON object")
    return result
