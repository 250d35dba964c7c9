"""Control requests: one frozen dataclass per command, validated on construction.

Wire format, version 1 (framing in :mod:`.framing`)::

    {"v": 1, "cmd": "explain", "args": {"domain": "example.com"}}

Each class renders its ``args`` object with :meth:`args` and reads it back with
:meth:`from_args`; :data:`REQUESTS` maps a command to its class. The destination is checked
with the socketmap key parser, an override policy with the Postfix policy codec the daemon
itself answers with.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import ClassVar, Final, Self, TypeAlias

from policyd.codec import postfix_policy
from policyd.codec.control.framing import (
    MAX_LINE,
    VERSION,
    ControlProtocolError,
    JsonObject,
    LineDecoder,
    dump,
    load_object,
)
from policyd.codec.destination import DestinationError, parse_key
from policyd.core.evidence import Destination
from policyd.core.types import Policy

MAX_COMMENT: Final = 500  # characters in an override comment
# Longest duration accepted for --expires and --since: ten years, in seconds.
MAX_DURATION: Final = 3650 * 86400
# Destinations in one ``warm`` request: the milter sends a message's new recipient
# domains, and Postfix's default smtpd_recipient_limit is 1000 recipients.
MAX_WARM_DOMAINS: Final = 100
DEFAULT_REPORT_SINCE: Final = 86400  # seconds: `policyctl report` looks back one day


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
    except DestinationError as exc:
        raise ControlProtocolError(f"bad destination {key[:64]!r}: {exc}") from None


def parse_policy(text: str) -> Policy:
    try:
        return postfix_policy.parse(text)
    except postfix_policy.PolicySyntaxError as exc:
        raise ControlProtocolError(f"bad policy {text[:64]!r}: {exc}") from None


def _check_seconds(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_DURATION):
        raise ControlProtocolError(f"{name} must be between 1 second and {MAX_DURATION}s")


class _Args:
    """Typed access to a request's ``args`` object; every problem is a protocol error."""

    def __init__(self, cmd: Command, raw: JsonObject, *names: str) -> None:
        self._cmd = cmd
        self._raw = raw
        extra = sorted(set(raw) - set(names))
        if extra:
            raise ControlProtocolError(f"{cmd.value}: unknown argument {extra[0][:32]!r}")

    def text(self, name: str, *, default: str | None = None) -> str:
        value = self._raw.get(name, default)
        if not isinstance(value, str):
            raise ControlProtocolError(f"{self._cmd.value}: {name} must be a string")
        return value

    def destination(self, name: str = "domain") -> Destination:
        return parse_destination(self.text(name))

    def optional_destination(self, name: str = "domain") -> Destination | None:
        return None if self._raw.get(name) is None else self.destination(name)

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


@dataclass(frozen=True, slots=True)
class _OneDestination:
    """A request whose only argument is one destination."""

    destination: Destination

    command: ClassVar[Command]

    def args(self) -> JsonObject:
        return {"domain": self.destination.key}

    @classmethod
    def from_args(cls, raw: JsonObject) -> Self:
        return cls(_Args(cls.command, raw, "domain").destination())


@dataclass(frozen=True, slots=True)
class _NoArgs:
    """A request without arguments."""

    command: ClassVar[Command]

    def args(self) -> JsonObject:
        return {}

    @classmethod
    def from_args(cls, raw: JsonObject) -> Self:
        _Args(cls.command, raw)
        return cls()


@dataclass(frozen=True, slots=True)
class OverrideSet:
    destination: Destination
    policy: Policy
    expires: float | None = None  # seconds from now; None: never
    comment: str = ""

    command: ClassVar[Command] = Command.OVERRIDE_SET

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

    @classmethod
    def from_args(cls, raw: JsonObject) -> Self:
        a = _Args(cls.command, raw, "domain", "policy", "expires", "comment")
        return cls(
            a.destination(),
            parse_policy(a.text("policy")),
            a.seconds("expires", default=None),
            a.text("comment", default=""),
        )


@dataclass(frozen=True, slots=True)
class OverrideDel(_OneDestination):
    command: ClassVar[Command] = Command.OVERRIDE_DEL


@dataclass(frozen=True, slots=True)
class Explain(_OneDestination):
    command: ClassVar[Command] = Command.EXPLAIN


@dataclass(frozen=True, slots=True)
class Check(_OneDestination):
    """The current verdict for the default profile and whether it can be met now."""

    command: ClassVar[Command] = Command.CHECK


@dataclass(frozen=True, slots=True)
class Probe:
    destination: Destination
    wait: bool = False

    command: ClassVar[Command] = Command.PROBE

    def __post_init__(self) -> None:
        if self.destination.parent_form or self.destination.is_address:
            raise ControlProtocolError(
                f"{self.destination.key}: only a domain or a [host] can be probed"
            )

    def args(self) -> JsonObject:
        return {"domain": self.destination.key, "wait": self.wait}

    @classmethod
    def from_args(cls, raw: JsonObject) -> Self:
        a = _Args(cls.command, raw, "domain", "wait")
        return cls(a.destination(), a.flag("wait"))


@dataclass(frozen=True, slots=True)
class Flush:
    destination: Destination | None  # None: everything
    include_mta_sts: bool = False  # cached MTA-STS policies are kept unless asked (TOFU)

    command: ClassVar[Command] = Command.FLUSH

    def args(self) -> JsonObject:
        args: JsonObject = {"domain": None if self.destination is None else self.destination.key}
        if self.include_mta_sts:
            args["include_mta_sts"] = True
        return args

    @classmethod
    def from_args(cls, raw: JsonObject) -> Self:
        a = _Args(cls.command, raw, "domain", "include_mta_sts")
        return cls(a.optional_destination(), a.flag("include_mta_sts"))


@dataclass(frozen=True, slots=True)
class Report:
    since: float = DEFAULT_REPORT_SINCE  # seconds back from now

    command: ClassVar[Command] = Command.REPORT

    def __post_init__(self) -> None:
        _check_seconds("since", self.since)

    def args(self) -> JsonObject:
        return {"since": self.since}

    @classmethod
    def from_args(cls, raw: JsonObject) -> Self:
        since = _Args(cls.command, raw, "since").seconds("since", default=DEFAULT_REPORT_SINCE)
        return cls(DEFAULT_REPORT_SINCE if since is None else since)


@dataclass(frozen=True, slots=True)
class Warm:
    """Start gathering evidence for these destinations in the background (policyd-milter)."""

    destinations: tuple[Destination, ...]

    command: ClassVar[Command] = Command.WARM

    def __post_init__(self) -> None:
        if not 0 < len(self.destinations) <= MAX_WARM_DOMAINS:
            raise ControlProtocolError(f"warm: give 1 to {MAX_WARM_DOMAINS} domains")

    def args(self) -> JsonObject:
        return {"domains": [d.key for d in self.destinations]}

    @classmethod
    def from_args(cls, raw: JsonObject) -> Self:
        keys = _Args(cls.command, raw, "domains").texts("domains", limit=MAX_WARM_DOMAINS)
        return cls(tuple(parse_destination(k) for k in keys))


@dataclass(frozen=True, slots=True)
class OverrideList(_NoArgs):
    command: ClassVar[Command] = Command.OVERRIDE_LIST


@dataclass(frozen=True, slots=True)
class Status(_NoArgs):
    command: ClassVar[Command] = Command.STATUS


@dataclass(frozen=True, slots=True)
class Reload(_NoArgs):
    command: ClassVar[Command] = Command.RELOAD


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

RequestType: TypeAlias = (
    type[OverrideSet]
    | type[OverrideDel]
    | type[OverrideList]
    | type[Explain]
    | type[Probe]
    | type[Flush]
    | type[Report]
    | type[Status]
    | type[Reload]
    | type[Warm]
    | type[Check]
)

# Every command's request class; a command without one fails the import-time check below.
REQUESTS: Final[dict[Command, RequestType]] = {
    cls.command: cls
    for cls in (
        OverrideSet,
        OverrideDel,
        OverrideList,
        Explain,
        Probe,
        Flush,
        Report,
        Status,
        Reload,
        Warm,
        Check,
    )
}
assert set(REQUESTS) == set(Command), "a command without a request class"


def decode_request(line: bytes) -> Request:
    doc = load_object(line)
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
    return REQUESTS[cmd].from_args(args)


def encode_request(req: Request) -> bytes:
    return dump({"v": VERSION, "cmd": req.command.value, "args": req.args()})


def request_decoder(max_line: int = MAX_LINE) -> LineDecoder[Request]:
    return LineDecoder(decode_request, max_line)
