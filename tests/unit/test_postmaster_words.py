"""What the person running the mail host reads: --help, --check-config warnings (a
resolver not on this host, dry-run profiles) and the new configuration keys' errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from policyd.adapters.hostaddr import is_local_address, remote_nameservers
from policyd.cli import daemon, policyctl
from policyd.config import ConfigError, parse


def test_loopback_and_own_addresses_are_local() -> None:
    assert is_local_address("127.0.0.1")
    assert is_local_address("::1")
    assert is_local_address("127.0.0.53")
    assert not is_local_address("192.0.2.1")  # TEST-NET-1: never assigned to this host
    assert not is_local_address("not an address")
    assert remote_nameservers(("127.0.0.1", "192.0.2.1", "2001:db8::1")) == [
        "192.0.2.1",
        "2001:db8::1",
    ]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policyd.toml"
    path.write_text(text)
    return str(path)


def test_check_config_warns_about_a_remote_resolver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[dns]\nnameservers = ["127.0.0.1", "192.0.2.1"]\n')
    assert daemon.main(["--config", path, "--check-config"]) == 0
    out, err = capsys.readouterr()
    assert out == f"policyd: {path}: configuration ok\n"
    (line,) = err.splitlines()
    assert line.startswith(f"policyd: {path}: warning: [dns] nameservers: 192.0.2.1 is not on")
    assert "AD bit" in line


def test_check_config_quiet_for_a_local_resolver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[dns]\nnameservers = ["127.0.0.1"]\n')
    assert daemon.main(["--config", path, "--check-config"]) == 0
    assert capsys.readouterr().err == ""


def test_check_config_warns_about_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[profiles.postfix]\ndry_run = true\n")
    assert daemon.main(["--config", path, "--check-config"]) == 0
    assert "[profiles.postfix] dry_run = true: Postfix is told NOTFOUND" in capsys.readouterr().err


def test_new_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse({"metrics": {"listen": "tcp:9464"}})
    with pytest.raises(ConfigError, match="must be inet:HOST:PORT"):
        parse({"metrics": {"listen": "unix:/run/policyd/metrics.sock"}})
    with pytest.raises(ConfigError, match="alerts"):
        parse({"alerts": {"resolver_check_name": "two words"}})
    with pytest.raises(ConfigError, match=r"alerts\.dane_temp_after: must not be negative"):
        parse({"alerts": {"dane_temp_after": -1}})
    assert parse({"metrics": {"listen": "inet:127.0.0.1:9464"}}).metrics.listen


@pytest.mark.parametrize(
    ("module", "words"),
    [
        ("policyd.cli.daemon", "Tell Postfix, per destination, how strictly to check TLS"),
        ("policyd.cli.policyctl", "what Postfix is told for a destination"),
    ],
)
def test_help_speaks_to_the_postmaster(module: str, words: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(res.stdout.split())
    assert words in text
    for jargon in ("composition root", "entry point", "dispatcher"):
        assert jargon not in text


def test_policyctl_lists_doctor() -> None:
    help_text = policyctl.build_parser().format_help()
    assert "doctor" in help_text
    assert "check Postfix" in " ".join(help_text.split())


def test_empty_nameservers_checks_resolv_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon, "resolv_conf_nameservers", lambda: ["192.0.2.7", "127.0.0.53"])
    (warning,) = daemon.config_warnings(parse({}))
    assert warning.startswith("/etc/resolv.conf: 192.0.2.7 is not on this host")
    monkeypatch.setattr(daemon, "resolv_conf_nameservers", lambda: ["127.0.0.53"])
    assert daemon.config_warnings(parse({})) == []
