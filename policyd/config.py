"""TOML configuration (``tomllib``) loaded into the frozen settings of :mod:`policyd.settings`.

Every table maps onto one settings dataclass; the loader walks the dataclass fields, so a
key is valid exactly when the dataclass has a field of that name, and its type comes from
the annotation (a listener is parsed into a :class:`~policyd.settings.Listener`, an octal
mode into an int, here and only here). Unknown keys, wrong types and bad values are a
:class:`ConfigError` naming the file, the key and the problem. ``etc/policyd.toml``
documents every key. policyd, policyctl and policyd-milter all read the file through
:func:`load`; this module imports nothing heavy, so the client programs stay light.
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

from policyd.alerts import AlertSettings
from policyd.core.profile import DEFAULT_PROFILES, Profile
from policyd.listeners import (
    DEFAULT_PORT,
    Listener,
    ListenerKind,
    OctalMode,
    parse_listener,
    parse_mode,
)
from policyd.settings import (
    DEFAULT_CONFIG_PATH,
    REDIS_SCHEMES,
    ControlSettings,
    DnsSettings,
    FleetSettings,
    LogSettings,
    MetricsSettings,
    MilterSettings,
    OutboundSettings,
    ProbeSettings,
    ServerSettings,
    StoreSettings,
    StsSettings,
    TlsSettings,
)

STORE_SCHEMES: Final = ("sqlite", *REDIS_SCHEMES)  # [store] url


class ConfigError(Exception):
    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path, self.key, self.problem = path, key, problem


@dataclass(frozen=True, slots=True)
class Config:
    path: str = DEFAULT_CONFIG_PATH
    server: ServerSettings = field(default_factory=ServerSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    sts: StsSettings = field(default_factory=StsSettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    milter: MilterSettings = field(default_factory=MilterSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    profiles: tuple[Profile, ...] = DEFAULT_PROFILES

    def profile(self, name: str) -> Profile | None:
        for p in self.profiles:
            if p.name == name:
                return p
        return None


T = TypeVar("T")


def _listener(path: str, key: str, value: Any, label: str) -> Listener:
    if not isinstance(value, str):
        raise ConfigError(path, key, "expected a string")
    try:
        return parse_listener(value)
    except ValueError as exc:
        raise ConfigError(path, label, str(exc)) from None


def _convert(path: str, key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *marks = typing.get_args(hint)
        if OctalMode in marks:
            if not isinstance(value, str):
                raise ConfigError(path, key, "expected a string")
            try:
                return parse_mode(value)
            except ValueError as exc:
                raise ConfigError(path, key, str(exc)) from None
        return _convert(path, key, base, value)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            raise ConfigError(path, key, "expected a list")
        if item is Listener:
            return tuple(_listener(path, key, v, f"{key}[{i}]") for i, v in enumerate(value))
        return tuple(_convert(path, key, item, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value == "" and args == [Listener]:
            return None  # "" turns an optional listener off
        return _convert(path, key, args[0], value)
    if hint is Listener:
        return _listener(path, key, value, key)
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


def _build(path: str, section: str, cls: type[T], table: Any, **extra: Any) -> T:
    """Build ``cls`` from a TOML table; ``extra`` are fields the file may not set."""
    if not isinstance(table, dict):
        raise ConfigError(path, section, "expected a table")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = dict(extra)
    for key, value in table.items():
        label = f"{section}.{key}"
        if key not in fields or key in extra:
            raise ConfigError(path, label, "unknown key")
        kwargs[key] = _convert(path, label, hints[key], value)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        # A validation error with a single key given can only be about that key.
        label = f"{section}.{next(iter(table))}" if len(table) == 1 else section
        raise ConfigError(path, label, str(exc)) from exc


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
        out[name] = _build(path, f"profiles.{name}", Profile, body, name=name, **keep)
    return tuple(out.values())


# Tables read by the generic loader: every Config field but path and profiles.
_SECTIONS: Final[dict[str, type[Any]]] = {
    name: hint
    for name, hint in typing.get_type_hints(Config).items()
    if name not in ("path", "profiles")
}


def parse(data: dict[str, Any], path: str = "<config>") -> Config:
    kwargs: dict[str, Any] = {"path": path}
    for section, table in data.items():
        if section == "profiles":
            kwargs["profiles"] = _profiles(path, table)
        elif section in _SECTIONS:
            kwargs[section] = _build(path, section, _SECTIONS[section], table)
        else:
            raise ConfigError(path, section, "unknown section")
    config = Config(**kwargs)
    _check(config)
    return config


def _check(config: Config) -> None:
    """What one table's dataclass cannot say about a single key."""
    path = config.path
    if not config.server.socketmap:
        raise ConfigError(path, "server.socketmap", "needs at least one listener")
    if config.server.control.kind is not ListenerKind.UNIX:
        # Control commands come only from local peers whose credentials can be checked.
        raise ConfigError(path, "server.control", "must be a unix:/path socket")
    listen = config.metrics.listen
    if listen is not None and listen.kind is not ListenerKind.INET:
        # Prometheus scrapes over TCP; a unix socket would need a proxy in front.
        raise ConfigError(path, "metrics.listen", "must be inet:HOST:PORT")
    if config.profile("postfix") is None:
        raise ConfigError(path, "profiles", "the default profile 'postfix' is missing")
    if config.store.url.partition("://")[0] not in STORE_SCHEMES:
        raise ConfigError(
            path,
            "store.url",
            "expected sqlite:///PATH, redis://HOST[:PORT][/DB], unix:///PATH or "
            "redis+sentinel://HOST[:PORT][,...]/SERVICE",
        )


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
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_PORT",
    "Config",
    "ConfigError",
    "Listener",
    "ListenerKind",
    "ServerSettings",
    "load",
    "parse",
    "parse_listener",
]
