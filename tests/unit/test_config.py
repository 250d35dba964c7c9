"""policyd.config: TOML into frozen settings; every error names file, key and problem."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from policyd.config import (
    Config,
    ConfigError,
    Listener,
    ListenerKind,
    load,
    parse,
    parse_listener,
)
from policyd.core.probe import DEFAULT_CONFIRM_PROBES, DEFAULT_CONFIRM_SECONDS
from policyd.core.profile import DEFAULT_PROFILES, ColdSts, Fallback, Profile, VerifiedAs
from policyd.settings import ProbeSettings

UNIX, INET = ListenerKind.UNIX, ListenerKind.INET

ROOT = Path(__file__).resolve().parents[2]
ETC = ROOT / "etc"
PATH = "/etc/policyd/test.toml"

FULL = """
[server]
socketmap = ["unix:/run/p/p.sock", "inet:127.0.0.1:8461", "inet:[::1]:8461"]
control = "unix:/run/p/control.sock"
socket_mode = "0666"
socket_group = "postfix"
max_request = 20000
request_timeout = 5
idle_timeout = 60.5
max_connections = 10
lookup_budget = 4.0

[control]
group = "policyd-admin"
read_group = "policyd"
mode = "0600"

[dns]
nameservers = ["127.0.0.1", "::1"]
port = 5353
timeout = 1.5
lifetime = 4.0
min_ttl = 30
max_ttl = 3600
negative_ttl_max = 600
cache_entries = 1000

[tls]
ca_file = "/etc/ssl/ca.pem"

[store]
url = "redis://localhost:6379/2"

[sts]
cold_budget = 2.0
refresh_interval = 43200.0
retry_after_failure = 60.0
recheck_interval = 600.0
max_concurrent_fetches = 4
connect_timeout = 1.0
read_timeout = 2.0
fetch_timeout = 3.0

[probe]
enabled = false
concurrency = 2
queue_size = 10
max_mx_hosts = 1
reprobe_interval = 3600.0
host_min_interval = 10.0
backoff_initial = 60.0
backoff_max = 600.0
confirm_probes = 5
confirm_seconds = 100.0
retention = 1000.0
port = 2525
helo_name = "mail.example.org"
connect_timeout = 1.0
banner_timeout = 2.0
command_timeout = 3.0
tls_timeout = 4.0
total_timeout = 5.0

[log]
level = "debug"

[profiles.strict]
unknown = "may"

[profiles.relaxed]
probe_no_tls = "NOTFOUND"
unknown = "encrypt"
sts_cold = "continue"
"""


def test_full_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "policyd.toml"
    path.write_text(FULL)
    cfg = load(path)
    assert cfg.path == str(path)
    s = cfg.server
    assert s.socketmap == (
        Listener(ListenerKind.UNIX, path="/run/p/p.sock"),
        Listener(ListenerKind.INET, host="127.0.0.1", port=8461),
        Listener(ListenerKind.INET, host="::1", port=8461),
    )
    assert [str(x) for x in s.socketmap] == [
        "unix:/run/p/p.sock",
        "inet:127.0.0.1:8461",
        "inet:[::1]:8461",
    ]
    assert s.control == Listener(ListenerKind.UNIX, path="/run/p/control.sock")
    assert (s.socket_mode, s.socket_group, s.max_request) == (0o666, "postfix", 20000)
    assert s.request_timeout == 5.0 and isinstance(s.request_timeout, float)
    assert (s.idle_timeout, s.max_connections, s.lookup_budget) == (60.5, 10, 4.0)
    assert (cfg.control.group, cfg.control.read_group, cfg.control.mode) == (
        "policyd-admin",
        "policyd",
        0o600,
    )
    d = cfg.dns
    assert d.nameservers == ("127.0.0.1", "::1") and d.port == 5353
    assert (d.timeouts.per_try, d.timeouts.lifetime) == (1.5, 4.0)
    assert (d.min_ttl, d.max_ttl, d.negative_ttl_max, d.cache_entries) == (30, 3600, 600, 1000)
    assert cfg.tls.ca_file == "/etc/ssl/ca.pem"
    assert cfg.store.url == "redis://localhost:6379/2"
    assert (cfg.sts.cold_budget, cfg.sts.max_concurrent_fetches) == (2.0, 4)
    assert (cfg.sts.refresh_interval, cfg.sts.retry_after_failure) == (43200.0, 60.0)
    assert cfg.sts.recheck_interval == 600.0
    t = cfg.sts.timeouts
    assert (t.connect, t.read, t.total) == (1.0, 2.0, 3.0)
    assert cfg.metrics.listen is None
    p = cfg.probe
    assert not p.enabled and (p.concurrency, p.queue_size, p.max_mx_hosts) == (2, 10, 1)
    assert (p.confirm_probes, p.confirm_seconds, p.port, p.helo_name) == (
        5,
        100.0,
        2525,
        "mail.example.org",
    )
    assert p.total_timeout == 5.0
    assert cfg.log.level == "debug"
    assert [pr.name for pr in cfg.profiles] == ["postfix", "strict", "relaxed"]
    assert cfg.profile("postfix") == DEFAULT_PROFILES[0]
    # strict keeps its built-in choices except the one the file changes
    assert cfg.profile("strict") == Profile(
        "strict",
        probe_verified=VerifiedAs.SECURE,
        probe_no_tls=Fallback.MAY,
        unknown=Fallback.MAY,
        sts_cold=ColdSts.TEMP,
    )
    # a new profile starts from the defaults
    assert cfg.profile("relaxed") == Profile(
        "relaxed", probe_no_tls=Fallback.NOTFOUND, unknown=Fallback.ENCRYPT
    )
    assert cfg.profile("nope") is None


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    assert load(path) == Config(path=str(path))


def test_shipped_files_load() -> None:
    for name in ("policyd.toml", "policyd.local.toml"):
        path = ETC / name
        if path.exists():
            cfg = load(path)
            assert cfg.profile("postfix") is not None


def test_shipped_file_matches_defaults() -> None:
    assert load(ETC / "policyd.toml") == Config(path=str(ETC / "policyd.toml"))


_COMMENTED = re.compile(r"^#(\[[a-z_.]+\]|[a-z_]+ = .*)$")


def test_uncommented_example_equals_defaults(tmp_path: Path) -> None:
    """etc/policyd.toml says: every commented setting shows its default, uncomment to change.

    Uncommenting all of them must therefore load, and give exactly the defaults.
    """
    lines = (ETC / "policyd.toml").read_text().splitlines()
    uncommented = [ln[1:] if _COMMENTED.match(ln) else ln for ln in lines]
    path = tmp_path / "policyd.toml"
    path.write_text("\n".join(uncommented) + "\n")
    assert load(path) == Config(path=str(path))


# --- errors -----------------------------------------------------------------------------


def check_error(data: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(data, PATH)
    err = info.value
    assert err.path == PATH
    assert err.key == key
    assert problem in err.problem
    assert str(err) == f"{PATH}: {key}: {err.problem}"


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        ({"serverr": {}}, "serverr", "unknown section"),
        ({"path": "x"}, "path", "unknown section"),
        ({"sts_timeouts": {}}, "sts_timeouts", "unknown section"),
        ({"server": {"sockmap": []}}, "server.sockmap", "unknown key"),
        ({"server": 3}, "server", "expected a table"),
        ({"server": {"socketmap": "unix:/x"}}, "server.socketmap", "expected a list"),
        ({"server": {"socketmap": [1]}}, "server.socketmap", "expected a string"),
        ({"server": {"socketmap": []}}, "server.socketmap", "at least one listener"),
        ({"server": {"socketmap": ["tcp:1.2.3.4:1"]}}, "server.socketmap[0]", "unknown listener"),
        (
            {"server": {"socketmap": ["unix:/a", "inet:host:0"]}},
            "server.socketmap[1]",
            "inet:host:port",
        ),
        ({"server": {"control": "inet:host"}}, "server.control", "inet:host:port"),
        ({"server": {"control": "unix:"}}, "server.control", "expected unix:/path"),
        ({"server": {"max_request": "10"}}, "server.max_request", "expected an integer"),
        ({"server": {"max_request": 1.5}}, "server.max_request", "expected an integer"),
        ({"server": {"max_request": True}}, "server.max_request", "expected an integer"),
        ({"server": {"max_request": -1}}, "server.max_request", "must not be negative"),
        ({"server": {"max_connections": 0}}, "server.max_connections", "at least 1"),
        ({"server": {"cpu_slice": 0.00005}}, "server.cpu_slice", "0 or from 0.0001 to 0.1"),
        ({"server": {"cpu_slice": 0.2}}, "server.cpu_slice", "0 or from 0.0001 to 0.1"),
        ({"server": {"cpu_slice": -0.001}}, "server.cpu_slice", "must not be negative"),
        ({"server": {"request_timeout": "5"}}, "server.request_timeout", "expected a number"),
        ({"server": {"request_timeout": False}}, "server.request_timeout", "expected a number"),
        ({"server": {"request_timeout": -0.5}}, "server.request_timeout", "must not be negative"),
        ({"server": {"socket_mode": "rw"}}, "server.socket_mode", "not an octal mode"),
        ({"server": {"socket_mode": "0800"}}, "server.socket_mode", "not an octal mode"),
        ({"server": {"socket_mode": "1777"}}, "server.socket_mode", "out of range"),
        ({"server": {"socket_mode": 660}}, "server.socket_mode", "expected a string"),
        ({"control": {"mode": "x"}}, "control.mode", "not an octal mode"),
        ({"control": {"groups": "x"}}, "control.groups", "unknown key"),
        ({"dns": []}, "dns", "expected a table"),
        ({"dns": {"nameserver": ["127.0.0.1"]}}, "dns.nameserver", "unknown key"),
        ({"dns": {"timeouts": {}}}, "dns.timeouts", "unknown key"),
        ({"dns": {"per_try": 1.0}}, "dns.per_try", "unknown key"),
        ({"dns": {"port": "53"}}, "dns.port", "expected an integer"),
        ({"dns": {"min_ttl": 100, "max_ttl": 10}}, "dns", "min_ttl <= max_ttl"),
        ({"tls": {"ca_file": 1}}, "tls.ca_file", "expected a string"),
        ({"store": {"url": "mysql://x"}}, "store.url", "expected sqlite:///PATH"),
        ({"store": {"uri": "sqlite:///x"}}, "store.uri", "unknown key"),
        (
            {"store": {"redis_max_connections": 0}},
            "store.redis_max_connections",
            "at least 1",
        ),
        ({"outbound": {"allow_networks": "10.0.0.0/8"}}, "outbound.allow_networks", "a list"),
        (
            {"outbound": {"allow_networks": ["10.1.2.3/8"]}},
            "outbound.allow_networks",
            "has host bits set",
        ),
        ({"outbound": {"allow_networks": ["intranet"]}}, "outbound.allow_networks", "intranet"),
        ({"sts": "x"}, "sts", "expected a table"),
        ({"sts": {"cold": 1.0}}, "sts.cold", "unknown key"),
        ({"sts": {"connect": 1.0}}, "sts.connect", "unknown key"),
        (
            {"sts": {"max_concurrent_fetches": 0}},
            "sts.max_concurrent_fetches",
            "max_concurrent_fetches",
        ),
        ({"probe": {"enabled": "yes"}}, "probe.enabled", "expected true or false"),
        ({"probe": {"enabled": 1}}, "probe.enabled", "expected true or false"),
        ({"probe": {"concurrency": 0}}, "probe.concurrency", "concurrency"),
        ({"log": {"lvl": "info"}}, "log.lvl", "unknown key"),
        ({"profiles": []}, "profiles", "expected tables [profiles.NAME]"),
        ({"profiles": {"x": 1}}, "profiles.x", "expected a table"),
        ({"profiles": {"x": {"name": "y"}}}, "profiles.x.name", "unknown key"),
        ({"profiles": {"x": {"unknwn": "may"}}}, "profiles.x.unknwn", "unknown key"),
        (
            {"profiles": {"x": {"unknown": "secure"}}},
            "profiles.x.unknown",
            "'secure' is not one of NOTFOUND, may, encrypt",
        ),
        ({"profiles": {"x": {"unknown": "notfound"}}}, "profiles.x.unknown", "is not one of"),
        ({"profiles": {"x": {"sts_cold": 1}}}, "profiles.x.sts_cold", "is not one of"),
        ({"profiles": {"x": {"probe_verified": []}}}, "profiles.x.probe_verified", "not one of"),
        ({"profiles": {"x": {"sts_attributes": "yes"}}}, "profiles.x.sts_attributes", "true or"),
        (
            {"profiles": {"x": {"probe_no_tls": "encrypt"}}},
            "profiles.x.probe_no_tls",
            "cannot be encrypt",
        ),
        ({"profiles": {"bad name": {}}}, "profiles.bad name", "bad profile name"),
    ],
)
def test_errors(data: dict[str, Any], key: str, problem: str) -> None:
    check_error(data, key, problem)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"log": {"level": "loud"}}, "log.level"),
        ({"dns": {"timeout": "2"}}, "dns.timeout"),
        ({"dns": {"lifetime": -1}}, "dns.lifetime"),
        ({"sts": {"fetch_timeout": "10"}}, "sts.fetch_timeout"),
        ({"sts": {"connect_timeout": -1.0}}, "sts.connect_timeout"),
    ],
)
def test_error_names_the_key_the_file_uses(data: dict[str, Any], key: str) -> None:
    """The key in the error is the one the postmaster wrote, not an internal field name."""
    with pytest.raises(ConfigError) as info:
        parse(data, PATH)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("data", "word"),
    [
        ({"dns": {"timeout": 0}}, "timeout"),
        ({"sts": {"read_timeout": 0}}, "read_timeout"),
        ({"dns": {"nameservers": ["resolver.example"]}}, "resolver.example"),
    ],
)
def test_value_errors_name_the_setting(data: dict[str, Any], word: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(data, PATH)
    assert info.value.path == PATH
    assert word in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        {"server": {"request_timeout": float("nan")}},
        {"server": {"lookup_budget": float("inf")}},
        {"server": {"cpu_slice": float("nan")}},
        {"probe": {"confirm_seconds": float("nan")}},
    ],
)
def test_non_finite_numbers_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        parse(data, PATH)


def test_control_socket_must_be_unix() -> None:
    """The control socket grants override rights by peer credentials: unix only (STYLE.md)."""
    with pytest.raises(ConfigError) as info:
        parse({"server": {"control": "inet:127.0.0.1:8462"}}, PATH)
    assert info.value.key == "server.control"


def test_load_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert info.value.path == str(missing)
    assert "cannot read" in info.value.problem


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert "cannot read" in info.value.problem


@pytest.mark.parametrize(
    "body", [b"[server\n", b"a = = 1\n", b"\xff\xfe = 1\n", b"[log]\nlevel = 'a'\nlevel = 'b'\n"]
)
def test_load_invalid_toml(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(body)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.path == str(path)
    assert "not valid TOML" in info.value.problem


def test_load_reports_the_file_for_semantic_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[server]\nsocketmap = ["udp:1"]\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: server.socketmap[0]: ")


def test_profiles_empty_table_keeps_builtins() -> None:
    assert parse({"profiles": {}}).profiles == DEFAULT_PROFILES


def test_profile_postfix_can_be_tuned() -> None:
    cfg = parse({"profiles": {"postfix": {"sts_attributes": True}}})
    pf = cfg.profile("postfix")
    assert pf is not None and pf.sts_attributes and pf.unknown is Fallback.NOTFOUND
    assert cfg.profile("strict") == DEFAULT_PROFILES[1]


def test_config_is_frozen() -> None:
    cfg = parse({})
    with pytest.raises(AttributeError):
        cfg.path = "x"  # type: ignore[misc]


# --- listeners ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "listener"),
    [
        ("unix:/run/policyd/policyd.sock", Listener(UNIX, path="/run/policyd/policyd.sock")),
        ("unix:run/p.sock", Listener(UNIX, path="run/p.sock")),
        ("inet:127.0.0.1:8461", Listener(INET, host="127.0.0.1", port=8461)),
        ("inet:localhost:1", Listener(INET, host="localhost", port=1)),
        ("inet:[::1]:8461", Listener(INET, host="::1", port=8461)),
        ("inet:[2001:db8::5]:65535", Listener(INET, host="2001:db8::5", port=65535)),
    ],
)
def test_parse_listener(spec: str, listener: Listener) -> None:
    assert parse_listener(spec) == listener
    assert parse_listener(str(listener)) == listener  # str() gives a spec back


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "unix",
        "unix:",
        "inet:",
        "inet:127.0.0.1",
        "inet:127.0.0.1:",
        "inet::8461",
        "inet:[]:8461",
        "inet:127.0.0.1:0",
        "inet:127.0.0.1:65536",
        "inet:127.0.0.1:http",
        "inet:127.0.0.1:-1",
        "inet:[::1]",
        "tcp:127.0.0.1:8461",
        "UNIX:/x",
    ],
)
def test_parse_listener_errors(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_listener(spec)


@pytest.mark.parametrize("spec", ["inet:127.0.0.1:\u00b2", "inet:127.0.0.1:\u0668\u0664"])
def test_parse_listener_non_ascii_port(spec: str) -> None:
    """str.isdigit() accepts superscripts and Arabic-Indic digits; a port is ASCII."""
    with pytest.raises(ValueError):
        parse_listener(spec)


def test_probe_damping_defaults_are_the_cores() -> None:
    """policyd.settings repeats them (it may not import core.probe, which is heavy)."""
    s = ProbeSettings()
    assert (s.confirm_probes, s.confirm_seconds) == (
        DEFAULT_CONFIRM_PROBES,
        DEFAULT_CONFIRM_SECONDS,
    )


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        ({"metrics": {"listen": "unix:/run/m.sock"}}, "metrics.listen", "inet:HOST:PORT"),
        ({"metrics": {"listen": "inet:127.0.0.1"}}, "metrics.listen", "inet:host:port"),
        ({"metrics": {"listen": 9464}}, "metrics.listen", "expected a string"),
        ({"server": {"socketmap": ["unix:/a", 1]}}, "server.socketmap", "expected a string"),
    ],
)
def test_listener_errors(data: dict[str, Any], key: str, problem: str) -> None:
    check_error(data, key, problem)


def test_listeners_and_modes_are_parsed_at_load() -> None:
    cfg = parse(
        {
            "server": {"control": "unix:/run/c.sock", "socket_mode": "0600"},
            "control": {"mode": "0640"},
            "metrics": {"listen": "inet:[::1]:9464"},
        }
    )
    assert cfg.server.control == Listener(UNIX, path="/run/c.sock")
    assert (cfg.server.socket_mode, cfg.control.mode) == (0o600, 0o640)
    assert cfg.metrics.listen == Listener(INET, host="::1", port=9464)
    assert parse({"metrics": {"listen": ""}}).metrics.listen is None


def test_config_imports_nothing_heavy() -> None:
    """policyctl and policyd-milter read the file without the daemon's libraries."""
    code = (
        "import sys, policyd.config; "
        "heavy = {'dns', 'httpx', 'cryptography', 'redis', 'asyncio', 'ssl'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": ListenerKind.UNIX},
        {"kind": ListenerKind.INET, "port": 25},
        {"kind": ListenerKind.INET, "host": "::1"},
        {"kind": ListenerKind.INET, "host": "::1", "port": 65536},
    ],
)
def test_listener_values_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="listener needs"):
        Listener(**kwargs)


def test_outbound_and_redis_pool_keys() -> None:
    cfg = parse(
        {
            "outbound": {"allow_networks": ["10.1.0.0/16", "fd12:3456::/48"]},
            "store": {"redis_max_connections": 8},
        }
    )
    assert cfg.outbound.allow_networks == ("10.1.0.0/16", "fd12:3456::/48")
    assert cfg.store.redis_max_connections == 8
    assert parse({}).outbound.allow_networks == ()
