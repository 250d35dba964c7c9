"""TOML configuration (``tomllib``) loaded into frozen dataclasses.

Every table maps onto one settings dataclass; the loader walks the dataclass fields, so a
key is valid exactly when the dataclass has a field of that name, and its type comes from
the annotation. Unknown keys, wrong types and bad values are a :class:`ConfigError` naming
the file, the key and the problem. ``etc/policyd.toml`` documents every key.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from policyd.adapters.dns import DnsSettings, DnsTimeouts
from policyd.adapters.https import HttpsTimeouts
from policyd.alerts import AlertSettings
from policyd.core.profile import DEFAULT_PROFILES, ColdSts, Fallback, Profile, VerifiedAs
from policyd.sources.probe import ProbeSettings
from policyd.sources.sts import StsSettings

DEFAULT_PATH: Final = "/etc/policyd/policyd.toml"
DEFAULT_PORT: Final = 7672  # the default socketmap listener: inet:127.0.0.1:7672


class ConfigError(Exception):
    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path, self.key, self.problem = path, key, problem


@dataclass(frozen=True, slots=True)
class ServerSettings:
    # Listeners: "unix:/path" or "inet:HOST:PORT" (IPv6 as inet:[::1]:PORT).
    # Loopback TCP reaches Postfix's chrooted smtp(8), its unchrooted programs and postmap
    # alike, with no file permissions to get wrong (the port is RFC 7672's number).
    socketmap: tuple[str, ...] = (f"inet:127.0.0.1:{DEFAULT_PORT}",)
    control: str = "unix:/run/policyd/control.sock"
    socket_mode: str = "0660"  # unix socketmap sockets: the postfix group needs rw
    socket_group: str = ""  # "": the postfix group when it exists (see unixsock)
    max_request: int = 10100  # bytes; Postfix sends at most 10000 (socketmap_table(5))
    request_timeout: float = 10.0  # seconds to finish a started request
    idle_timeout: float = 300.0  # Postfix closes idle ones after 10 s; we allow longer
    max_connections: int = 4096
    lookup_budget: float = 8.0  # seconds before a lookup answers TEMP
    # Destinations whose answers and verdicts are kept in memory; the least recently used
    # beyond it are forgotten (their next lookup gathers fresh evidence).
    max_destinations: int = 1_000_000


@dataclass(frozen=True, slots=True)
class ControlSettings:
    group: str = ""  # members may change overrides and flush; "" = root only
    read_group: str = ""  # members may run read-only commands (explain, report, status)
    mode: str = "0660"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_file: str = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = "sqlite:///var/lib/policyd/policyd.db"


@dataclass(frozen=True, slots=True)
class FleetSettings:
    # With a Redis store: one probe per MX address and one fetch per MTA-STS policy across
    # every host on that Redis, and overrides and flushes applied by all of them at once.
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"

    def __post_init__(self) -> None:
        if self.level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("must be one of debug, info, warning, error")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    # Prometheus scrapes GET /metrics here: "inet:HOST:PORT"; "": off.
    listen: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    path: str = DEFAULT_PATH
    server: ServerSettings = field(default_factory=ServerSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    sts: StsSettings = field(default_factory=StsSettings)
    sts_timeouts: HttpsTimeouts = field(default_factory=HttpsTimeouts)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    profiles: tuple[Profile, ...] = DEFAULT_PROFILES

    def profile(self, name: str) -> Profile | None:
        for p in self.profiles:
            if p.name == name:
                return p
        return None


T = TypeVar("T")

# [dns] and [sts] are flat in the file; their timeouts live in nested dataclasses.
_DNS_TIMEOUT_KEYS: Final = {"timeout": "per_try", "lifetime": "lifetime"}
_STS_TIMEOUT_KEYS: Final = {
    "connect_timeout": "connect",
    "read_timeout": "read",
    "fetch_timeout": "total",
}


def _convert(path: str, key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            raise ConfigError(path, key, "expected a list")
        return tuple(_convert(path, key, item, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(path, key, args[0], value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in hint)
            raise ConfigError(path, key, f"{value!r} is not one of {allowed}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, key, "expected true or false")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, key, "expected a number")
        if not math.isfinite(value):
            raise ConfigError(path, key, "must be a finite number")
        if value < 0:
            raise ConfigError(path, key, "must not be negative")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, key, "expected an integer")
        if value < 0:
            raise ConfigError(path, key, "must not be negative")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(path, key, "expected a string")
        return value
    raise ConfigError(path, key, f"unsupported setting type {hint!r}")


def _build(
    path: str,
    section: str,
    cls: type[T],
    table: Any,
    names: dict[str, str] | None = None,
    **extra: Any,
) -> T:
    """Build ``cls`` from a TOML table. ``names`` maps field names to the keys the file
    uses where they differ, so that errors name what the postmaster wrote."""
    if not isinstance(table, dict):
        raise ConfigError(path, section, "expected a table")
    names = names or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = dict(extra)
    for key, value in table.items():
        label = f"{section}.{names.get(key, key)}"
        if key not in fields or key in extra:
            raise ConfigError(path, label, "unknown key")
        kwargs[key] = _convert(path, label, hints[key], value)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        # A validation error with a single key given can only be about that key.
        label = section
        if len(table) == 1:
            label = f"{section}.{names.get(next(iter(table)), next(iter(table)))}"
        raise ConfigError(path, label, str(exc)) from exc


def _split(
    path: str, section: str, table: Any, keys: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the timeout keys of a flat table from the rest, renamed for their class."""
    if not isinstance(table, dict):
        raise ConfigError(path, section, "expected a table")
    rest = dict(table)
    timeouts = {name: rest.pop(key) for key, name in keys.items() if key in rest}
    return rest, timeouts


def _reverse(keys: dict[str, str]) -> dict[str, str]:
    return {field_name: key for key, field_name in keys.items()}


def _dns(path: str, table: Any) -> DnsSettings:
    rest, timeouts = _split(path, "dns", table, _DNS_TIMEOUT_KEYS)
    built = _build(path, "dns", DnsTimeouts, timeouts, _reverse(_DNS_TIMEOUT_KEYS))
    return _build(path, "dns", DnsSettings, rest, timeouts=built)


def _sts(path: str, table: Any) -> tuple[StsSettings, HttpsTimeouts]:
    rest, timeouts = _split(path, "sts", table, _STS_TIMEOUT_KEYS)
    built = _build(path, "sts", HttpsTimeouts, timeouts, _reverse(_STS_TIMEOUT_KEYS))
    return _build(path, "sts", StsSettings, rest), built


def _profiles(path: str, table: Any) -> tuple[Profile, ...]:
    if not isinstance(table, dict):
        raise ConfigError(path, "profiles", "expected tables [profiles.NAME]")
    builtin = {p.name: p for p in DEFAULT_PROFILES}
    out = dict(builtin)
    for name, body in table.items():
        try:
            base = builtin.get(name) or Profile(name)
        except ValueError as exc:
            raise ConfigError(path, f"profiles.{name}", str(exc)) from None
        merged = {f.name: getattr(base, f.name) for f in dataclasses.fields(Profile)}
        merged.pop("name")
        if not isinstance(body, dict):
            raise ConfigError(path, f"profiles.{name}", "expected a table")
        if "name" in body:
            raise ConfigError(path, f"profiles.{name}.name", "unknown key")
        # Keys the file leaves out keep the built-in profile's choice (or the default).
        keep = {k: v for k, v in merged.items() if k not in body}
        out[name] = _build(path, f"profiles.{name}", Profile, body, None, name=name, **keep)
    return tuple(out.values())


_SECTIONS: Final[dict[str, type[Any]]] = {
    "server": ServerSettings,
    "control": ControlSettings,
    "tls": TlsSettings,
    "store": StoreSettings,
    "fleet": FleetSettings,
    "probe": ProbeSettings,
    "log": LogSettings,
    "metrics": MetricsSettings,
    "alerts": AlertSettings,
}


def parse(data: dict[str, Any], path: str = "<config>") -> Config:
    kwargs: dict[str, Any] = {"path": path}
    for section, table in data.items():
        if section == "dns":
            kwargs["dns"] = _dns(path, table)
        elif section == "sts":
            kwargs["sts"], kwargs["sts_timeouts"] = _sts(path, table)
        elif section == "profiles":
            kwargs["profiles"] = _profiles(path, table)
        elif section == "milter":
            continue  # policyd-milter's own table, validated by `policyd-milter --check-config`
        elif section in _SECTIONS:
            kwargs[section] = _build(path, section, _SECTIONS[section], table)
        else:
            raise ConfigError(path, section, "unknown section")
    config = Config(**kwargs)
    _check(config)
    return config


def _check(config: Config) -> None:
    path = config.path
    if not config.server.socketmap:
        raise ConfigError(path, "server.socketmap", "needs at least one listener")
    for i, spec in enumerate(config.server.socketmap):
        try:
            parse_listener(spec)
        except ValueError as exc:
            raise ConfigError(path, f"server.socketmap[{i}]", str(exc)) from None
    try:
        control = parse_listener(config.server.control)
    except ValueError as exc:
        raise ConfigError(path, "server.control", str(exc)) from None
    if control.kind != "unix":
        # Control commands come only from local peers whose credentials can be checked.
        raise ConfigError(path, "server.control", "must be a unix:/path socket")
    if config.metrics.listen:
        try:
            metrics = parse_listener(config.metrics.listen)
        except ValueError as exc:
            raise ConfigError(path, "metrics.listen", str(exc)) from None
        if metrics.kind != "inet":
            # Prometheus scrapes over TCP; a unix socket would need a proxy in front.
            raise ConfigError(path, "metrics.listen", "must be inet:HOST:PORT")
    for key in ("socket_mode",):
        _mode(path, f"server.{key}", getattr(config.server, key))
    _mode(path, "control.mode", config.control.mode)
    if config.profile("postfix") is None:
        raise ConfigError(path, "profiles", "the default profile 'postfix' is missing")
    scheme = config.store.url.partition("://")[0]
    if scheme not in ("sqlite", "redis", "rediss", "unix", "redis+sentinel"):
        raise ConfigError(
            path,
            "store.url",
            "expected sqlite:///PATH, redis://HOST[:PORT][/DB], unix:///PATH or "
            "redis+sentinel://HOST[:PORT][,...]/SERVICE",
        )


def _mode(path: str, key: str, text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise ConfigError(path, key, f"{text!r} is not an octal mode") from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(path, key, "mode out of range")
    return mode


def socket_mode(text: str) -> int:
    return int(text, 8)


@dataclass(frozen=True, slots=True)
class Listener:
    """``unix:/path`` or ``inet:host:port`` (``inet:[::1]:8461`` for IPv6)."""

    kind: str  # "unix" or "inet"
    path: str = ""
    host: str = ""
    port: int = 0


def parse_listener(spec: str) -> Listener:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"{spec!r}: expected unix:/path or inet:host:port")
    if kind == "unix":
        return Listener("unix", path=rest)
    if kind == "inet":
        host, sep, port_text = rest.rpartition(":")
        digits = port_text.isascii() and port_text.isdigit()
        if not sep or not digits or not 0 < int(port_text) < 65536:
            raise ValueError(f"{spec!r}: expected inet:host:port")
        host = host.removeprefix("[").removesuffix("]")
        if not host:
            raise ValueError(f"{spec!r}: missing host")
        return Listener("inet", host=host, port=int(port_text))
    raise ValueError(f"{spec!r}: unknown listener type {kind!r}")


def load(path: str | os.PathLike[str]) -> Config:
    name = str(path)
    try:
        raw = Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError(name, "-", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(name, "-", f"not valid TOML: {exc}") from None
    return parse(data, name)


__all__ = [
    "ColdSts",
    "Config",
    "ConfigError",
    "Fallback",
    "Listener",
    "VerifiedAs",
    "load",
    "parse",
    "parse_listener",
]
