"""``policyctl doctor``: check the installation end to end, one line per check.

Each check reads what Postfix reads (``postconf -c DIR``, never a guess at main.cf's
syntax), or does what Postfix will do (connect to the socketmap listener as Postfix's
mail_owner, at the path a chrooted smtp(8) sees), and says what to change when it fails.
Exit 0 when nothing failed (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, TextIO

from policyd.adapters.dns import Resolver
from policyd.adapters.hostaddr import remote_nameservers, resolv_conf_nameservers
from policyd.cli.doctor_checks import Check, Status, connect_as, redis_check, sqlite_check
from policyd.config import Config, Listener, ListenerKind, parse_listener
from policyd.core.evidence import DnsStatus

DEFAULT_CONFIG_DIRECTORY: Final = "/etc/postfix"
POSTCONF_TIMEOUT: Final = 30.0  # seconds for one postconf run
STS_ATTRIBUTES_SINCE: Final = (3, 10)  # Postfix parses policy_type= etc. from 3.10 on
SERVERNAME_SINCE: Final = (3, 4)  # servername= in TLS policies (postconf(5), Postfix 3.4)
INSECURE_MX_POLICY_SINCE: Final = (3, 6)  # smtp_tls_dane_insecure_mx_policy appeared
CA_BUNDLE: Final = "/etc/ssl/certs/ca-certificates.crt"  # Debian's ca-certificates
# Delivery agents that read smtp_tls_policy_maps (master.cf command column).
SMTP_COMMANDS: Final = frozenset({"smtp", "lmtp"})


@dataclass(frozen=True, slots=True)
class MapTable:
    """One ``socketmap:`` table of smtp_tls_policy_maps."""

    text: str
    listener: Listener
    profile: str


@dataclass(frozen=True, slots=True)
class Service:
    """One master.cf line that runs smtp(8) or lmtp(8)."""

    name: str
    kind: str
    chroot: bool


class Postconf:
    """``postconf -c DIR``: what Postfix itself reads from this configuration."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _run(self, *args: str) -> str:
        proc = subprocess.run(
            ["postconf", "-c", self.directory, *args],
            capture_output=True,
            text=True,
            timeout=POSTCONF_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip() or f"postconf exited {proc.returncode}")
        return proc.stdout

    def get(self, name: str) -> str:
        """The value Postfix uses (``$name`` and ``${{...}}`` expanded)."""
        return self._run("-x", "-h", name).strip()

    def services(self) -> list[Service]:
        out: list[Service] = []
        for line in self._run("-M").splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            command = fields[7]
            if command in SMTP_COMMANDS and fields[1] == "unix":
                # "-" is the default: n since Postfix 3.0 (master(5)).
                out.append(Service(fields[0], fields[1], fields[4] == "y"))
        return out


def version_tuple(text: str) -> tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def parse_tables(value: str) -> list[MapTable]:
    """The socketmap tables of a map list (``socketmap:unix:/p:NAME``,
    ``socketmap:inet:host:port:NAME``); others are skipped."""
    out: list[MapTable] = []
    for item in re.split(r"[\s,]+", value):
        if not item.startswith("socketmap:"):
            continue
        spec, sep, profile = item.removeprefix("socketmap:").rpartition(":")
        if not sep:
            continue
        try:
            listener = parse_listener(spec)
        except ValueError:
            continue
        out.append(MapTable(item, listener, profile))
    return out


class Doctor:
    def __init__(
        self,
        config: Config,
        postfix_dir: str,
        *,
        control_ok: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        self.postconf = Postconf(postfix_dir)
        self.postfix_dir = postfix_dir
        self._control_ok = control_ok

    def run(self) -> list[Check]:
        checks: list[Check] = []
        for step in (self._postfix, self._daemon, self._resolver, self._store):
            try:
                checks.extend(step())
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                name = step.__name__.strip("_")
                checks.append(Check(name, Status.FAIL, f"could not check: {exc}"))
        return checks

    # -- Postfix ---------------------------------------------------------------------

    def _postfix(self) -> Iterator[Check]:
        pc = self.postconf
        version_text = pc.get("mail_version")
        version = version_tuple(version_text)
        yield Check("postfix-version", Status.OK, f"Postfix {version_text}")
        level = pc.get("smtp_dns_support_level")
        if level == "dnssec":
            yield Check("smtp_dns_support_level", Status.OK, "dnssec")
        else:
            yield Check(
                "smtp_dns_support_level",
                Status.FAIL,
                f"is {level or 'empty'}: Postfix treats dane and dane-only answers as may",
                "set smtp_dns_support_level = dnssec in main.cf",
            )
        sec = pc.get("smtp_tls_security_level")
        if sec in ("may", "dane"):
            yield Check("smtp_tls_security_level", Status.OK, sec)
        elif sec in ("encrypt", "verify", "secure", "dane-only", "fingerprint"):
            yield Check(
                "smtp_tls_security_level",
                Status.WARN,
                f"is {sec}: destinations policyd answers NOTFOUND for need it too",
                "set smtp_tls_security_level = may unless every destination must meet it",
            )
        else:
            yield Check(
                "smtp_tls_security_level",
                Status.FAIL,
                f"is {sec or 'empty'}: NOTFOUND destinations get no TLS at all",
                "set smtp_tls_security_level = may in main.cf",
            )
        yield from self._maps(version_text, version)
        yield self._ca()
        yield self._insecure_mx(version)

    def _maps(self, version_text: str, version: tuple[int, int]) -> Iterator[Check]:
        value = self.postconf.get("smtp_tls_policy_maps")
        tables = [t for t in parse_tables(value) if self._ours(t.listener)]
        first = self._listeners()[0] if self._listeners() else None
        example = ""
        if first is not None:
            example = f"smtp_tls_policy_maps = socketmap:{_spec(first)}:postfix"
        if not tables:
            yield Check(
                "smtp_tls_policy_maps",
                Status.FAIL,
                f"{value or '(empty)'} names no listener of this policyd",
                f"set {example} in main.cf" if example else "add a [server] socketmap listener",
            )
            return
        names = {p.name: p for p in self.config.profiles}
        for table in tables:
            profile = names.get(table.profile)
            if profile is None:
                yield Check(
                    "smtp_tls_policy_maps",
                    Status.FAIL,
                    f"{table.text}: no profile {table.profile!r} in {self.config.path}",
                    f"use one of {', '.join(sorted(names))} or add [profiles.{table.profile}]",
                )
                continue
            yield Check("smtp_tls_policy_maps", Status.OK, f"{table.text} (profile {profile.name})")
            if version < SERVERNAME_SINCE:
                yield Check(
                    "profile-attributes",
                    Status.FAIL,
                    f"MTA-STS answers carry servername=hostname, which Postfix {version_text} "
                    "cannot parse",
                    "upgrade to Postfix 3.4 or later",
                )
            if profile.sts_attributes and version < STS_ATTRIBUTES_SINCE:
                yield Check(
                    "profile-attributes",
                    Status.FAIL,
                    f"profile {profile.name} adds policy_type, policy_domain and "
                    f"mx_host_pattern, which Postfix {version_text} cannot parse",
                    f"set sts_attributes = false in [profiles.{profile.name}] or "
                    "upgrade to Postfix 3.10",
                )
            if profile.dry_run:
                yield Check(
                    "profile-dry-run",
                    Status.WARN,
                    f"profile {profile.name} is a dry run: Postfix is told NOTFOUND",
                    f"set dry_run = false in [profiles.{profile.name}] to enforce",
                )
        yield from self._reachable(tables)

    def _ca(self) -> Check:
        ca_file = self.postconf.get("smtp_tls_CAfile")
        ca_path = self.postconf.get("smtp_tls_CApath")
        fix = f"set smtp_tls_CAfile = {CA_BUNDLE} in main.cf"
        if not ca_file and not ca_path:
            return Check(
                "smtp_tls_CAfile",
                Status.FAIL,
                "no CA configured: verify and secure (MTA-STS) answers would fail",
                fix,
            )
        for name, value in (("smtp_tls_CAfile", ca_file), ("smtp_tls_CApath", ca_path)):
            if value and not os.path.exists(value):
                return Check(name, Status.FAIL, f"{value} does not exist", fix)
        return Check("smtp_tls_CAfile", Status.OK, ca_file or ca_path)

    def _insecure_mx(self, version: tuple[int, int]) -> Check:
        name = "smtp_tls_dane_insecure_mx_policy"
        if version < INSECURE_MX_POLICY_SINCE:
            return Check(
                name,
                Status.WARN,
                "this Postfix has no such setting: dane for an insecure MX RRset acts as may",
                "upgrade to Postfix 3.6 or later",
            )
        value = self.postconf.get(name)
        if value == "dane":
            return Check(name, Status.OK, value)
        return Check(
            name,
            Status.FAIL,
            f"is {value}: MX hosts with TLSA behind an unsigned MX RRset get no DANE "
            "(policyd answers dane for them, RFC 7672 2.2.1)",
            f"set {name} = dane in main.cf",
        )

    # -- the listeners, as Postfix reaches them ----------------------------------------

    def _listeners(self) -> list[Listener]:
        return list(self.config.server.socketmap)

    def _queue_directory(self) -> str:
        return self.postconf.get("queue_directory")

    def _ours(self, listener: Listener) -> bool:
        """Does the table's listener reach one of the daemon's, directly or from inside
        the chroot (queue_directory + path)?"""
        qdir = None
        for own in self._listeners():
            if listener.kind != own.kind:
                continue
            if listener.kind is ListenerKind.INET:
                if (listener.host, listener.port) == (own.host, own.port):
                    return True
                continue
            if listener.path == own.path:
                return True
            qdir = qdir or self._queue_directory()
            if _in_chroot(qdir, listener.path) == own.path:
                return True
        return False

    def _reachable(self, tables: list[MapTable]) -> Iterator[Check]:
        services = self.postconf.services()
        chrooted = [s.name for s in services if s.chroot]
        plain = [s.name for s in services if not s.chroot]
        owner = self.postconf.get("mail_owner") or "postfix"
        qdir = self._queue_directory()
        for table in tables:
            if table.listener.kind is ListenerKind.INET:
                yield self._connect_check(
                    "reach", table, (table.listener.host, table.listener.port), owner, ""
                )
                continue
            path = table.listener.path
            if plain or not services:
                yield self._connect_check("reach", table, path, owner, "")
            if chrooted:
                inside = _in_chroot(qdir, path)
                where = f"chrooted {'/'.join(chrooted)} in {qdir}"
                if not os.path.exists(inside):
                    yield Check(
                        "reach-chroot",
                        Status.FAIL,
                        f"{table.text}: {where} looks for {inside}, which does not exist "
                        "(path missing in the chroot)",
                        f"listen on unix:{qdir}/policyd/policyd.sock and set "
                        "smtp_tls_policy_maps = socketmap:unix:/policyd/policyd.sock:"
                        f"{table.profile}, or use an inet: listener",
                    )
                else:
                    yield self._connect_check("reach-chroot", table, inside, owner, where)

    def _connect_check(
        self, name: str, table: MapTable, target: str | tuple[str, int], owner: str, where: str
    ) -> Check:
        shown = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
        problem = connect_as(owner, target)
        suffix = f" ({where})" if where else ""
        who = f"user {owner}{suffix}"
        if os.geteuid() != 0:
            who = f"this user, not {owner} (doctor is not root){suffix}"
        if problem is None:
            if os.geteuid() != 0:
                return Check(
                    name,
                    Status.WARN,
                    f"{who} reaches {shown}",
                    f"run doctor as root to test {owner}",
                )
            return Check(name, Status.OK, f"{who} reaches {shown}")
        if problem == "permission":
            return Check(
                name,
                Status.FAIL,
                f"{who} cannot connect to {shown}: permission denied",
                "set [server] socket_group to a group of "
                f"{owner} (and socket_mode 0660), and check the directories above it",
            )
        if problem == "missing":
            return Check(
                name,
                Status.FAIL,
                f"{who} cannot connect to {shown}: no such socket (is policyd running?)",
                "start policyd, or make [server] socketmap and smtp_tls_policy_maps agree",
            )
        return Check(name, Status.FAIL, f"{who} cannot connect to {shown}: {problem}")

    # -- the daemon, its resolver and its store ------------------------------------------

    def _daemon(self) -> Iterator[Check]:
        if self._control_ok is None:
            return
        problem = self._control_ok()
        if problem is None:
            yield Check("daemon", Status.OK, "answers on its control socket")
        else:
            yield Check(
                "daemon", Status.FAIL, problem, "systemctl start policyd; journalctl -u policyd"
            )

    def _resolver(self) -> Iterator[Check]:
        dns = self.config.dns
        configured = dns.nameservers or tuple(resolv_conf_nameservers())
        remote = remote_nameservers(configured)
        if remote:
            yield Check(
                "dns-nameservers",
                Status.WARN,
                f"{', '.join(remote)} not on this host: policyd trusts its AD bit, which "
                "an attacker on the path can forge",
                "run a validating resolver here (unbound) and set [dns] nameservers = "
                '["127.0.0.1"]',
            )
        name = self.config.alerts.resolver_check_name
        answer = asyncio.run(Resolver(dns).query(name, "DNSKEY"))
        shown = ", ".join(configured) or "resolv.conf"
        if answer.status is DnsStatus.SECURE:
            yield Check("resolver-validates", Status.OK, f"{shown}: {name} DNSKEY validated")
        elif answer.status is DnsStatus.INSECURE:
            yield Check(
                "resolver-validates",
                Status.FAIL,
                f"{shown}: {name} DNSKEY came back without the AD bit: no DNSSEC validation",
                "use a validating resolver (unbound with its root trust anchor)",
            )
        else:
            yield Check(
                "resolver-validates",
                Status.FAIL,
                f"{shown}: {name} DNSKEY lookup failed: {answer.error}",
                "start the resolver, or fix [dns] nameservers",
            )

    def _store(self) -> Iterator[Check]:
        url = self.config.store.url
        if url.startswith("sqlite:"):
            yield sqlite_check(url)
        else:
            yield asyncio.run(redis_check(url))


def _in_chroot(qdir: str, path: str) -> str:
    return os.path.normpath(f"{qdir.rstrip('/')}/{path.lstrip('/')}")


def _spec(listener: Listener) -> str:
    if listener.kind is ListenerKind.UNIX:
        return f"unix:{listener.path}"
    return f"inet:{listener.host}:{listener.port}"


def render(checks: list[Check], out: TextIO, *, as_json: bool) -> int:
    failed = any(c.status is Status.FAIL for c in checks)
    if as_json:
        doc = {"ok": not failed, "checks": [c.doc() for c in checks]}
        json.dump(doc, out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        for check in checks:
            out.write(check.line() + "\n")
    return 1 if failed else 0
