"""Human output of ``policyctl``: the typed results the daemon sends, laid out for a
postmaster (policyctl(8))."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from typing import Final, TextIO, assert_never

from policyd.cli.durations import format_duration
from policyd.codec.control import results as r
from policyd.codec.control.evidence import DnsDoc, HostDoc, OverrideDoc, ProbeDoc, StsDoc
from policyd.codec.control.report import DryRunDoc, ReportResult
from policyd.core.evidence import DnsStatus

TLSA_SHOWN: Final = 64  # hex digits of TLSA data shown before eliding (a SHA-256 is 64)
NAMES_SHOWN: Final = 8  # destinations listed per level in the report table
_SIGNED: Final = {DnsStatus.SECURE: "DNSSEC-validated", DnsStatus.INSECURE: "not signed"}


def ago(age: float | None) -> str:
    return "never" if age is None else f"{format_duration(age)} ago"


def within(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"in {format_duration(seconds)}" if seconds >= 0 else ago(-seconds)


def clock(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


# -- explain -------------------------------------------------------------------------------


def explain(doc: r.ExplainResult) -> str:
    head = "; ".join(f"{a.profile} -> {a.told}" for a in doc.answers)
    out = [f"{doc.destination}: {head}"]
    width = max((len(a.profile) for a in doc.answers), default=0)
    for a in doc.answers:
        dry = f"  (dry run: would be {a.would_reply})" if a.would_reply is not None else ""
        out.append(f"  {a.profile:<{width}}  {a.reply}{dry}")
        out.append(f"  {'':<{width}}  decided by {a.rule}: {a.reason}")
    out += ["", *_dns(doc.dns, doc.now), "", *_dane(doc.dns)]
    out += ["", *_sts(doc.mta_sts)]
    out += ["", *_probe(doc.probe)]
    out += ["", *_override(doc.override)]
    return "\n".join(out) + "\n"


def _dns(dns: DnsDoc | None, now: float) -> list[str]:
    if dns is None:
        return ["DNS: not looked up (parent-domain form or address literal)"]
    status = dns.mx_status
    if status is DnsStatus.FAILED:
        # The kind of a failed lookup means nothing: "MX listed" would read as found.
        line = "DNS: MX lookup FAILED"
    else:
        line = f"DNS: MX {dns.kind.value}, {status.value} ({_SIGNED.get(status, status.value)})"
    line += f", fetched {ago(dns.age)}"
    if dns.expires_at is not None:
        line += f", expires {within(dns.expires_at - now)}"
    out = [line]
    if dns.error:
        out.append(f"  error: {dns.error}")
    for h in dns.hosts:
        addrs = ", ".join(h.addresses) or "-"
        out.append(f"  {h.preference:>5} {h.name}  addresses {h.address_status.value}: {addrs}")
        if h.address_error:
            out.append(f"        error: {h.address_error}")
    return out


def _dane(dns: DnsDoc | None) -> list[str]:
    if dns is None or not dns.hosts:
        return ["DANE: no MX hosts"]
    out = ["DANE:"]
    for h in dns.hosts:
        out += _tlsa(h)
    return out


def _tlsa(h: HostDoc) -> list[str]:
    if h.tlsa_status is None:
        return [f"  {h.name}: TLSA not looked up (addresses not DNSSEC-signed)"]
    what = f"{len(h.tlsa)} record(s)" if h.tlsa else "no records"
    out = [f"  {h.name}: TLSA {h.tlsa_status.value}, {what}"]
    if h.tlsa_error:
        out.append(f"      error: {h.tlsa_error}")
    for t in h.tlsa:
        data = t.data if len(t.data) <= TLSA_SHOWN else t.data[:TLSA_SHOWN] + "..."
        usable = "usable" if t.usable else "UNUSABLE for SMTP (RFC 7672 3.1)"
        out.append(f"      {t.usage} {t.selector} {t.mtype} {data}  {usable}")
    return out


def _sts(sts: StsDoc) -> list[str]:
    pol = sts.policy
    out: list[str] = []
    if pol is None:
        out.append("MTA-STS: no policy" + (" (fetch still running)" if sts.pending else ""))
    else:
        valid = "" if pol.valid else ", EXPIRED"
        out.append(
            f"MTA-STS: id={pol.id} mode={pol.mode.value}"
            f" max_age={pol.max_age}s ({format_duration(pol.max_age)}){valid}"
        )
        out.append(f"  mx: {', '.join(pol.mx) or '-'}")
        out.append(f"  fetched {clock(pol.fetched_at)} ({ago(pol.age)})")
    if sts.error:
        out.append(f"  last discovery/fetch FAILED: {sts.error}")
    return out


def _probe(probe: ProbeDoc | None) -> list[str]:
    if probe is None:
        return ["Probe: no probe results yet"]
    names = ", ".join(probe.verified_names) or "none"
    level = "unknown (nothing reachable)" if probe.level is None else probe.level.value
    out = [f"Probe: level {level}, probed {ago(probe.age)}; verified names: {names}"]
    damping = probe.damping
    if damping is None:
        out.append("  damping: nothing held back")
    elif damping.pending_names:
        out.append(
            f"  damping: HOLDING verified names; other names"
            f" {', '.join(damping.pending_names)} seen {damping.count} time(s)"
            f" since {ago(damping.age)}, not yet confirmed"
        )
    else:
        held = "-" if damping.held_level is None else damping.held_level.value
        out.append(
            f"  damping: HOLDING {held}; weaker {damping.pending.value} seen {damping.count}"
            f" time(s) since {ago(damping.age)}, not yet confirmed"
        )
    for h in probe.hosts:
        tls = " ".join(x for x in (h.protocol, h.cipher) if x)
        line = f"  {h.host} [{h.address}]: {h.verdict.value}"
        if tls:
            line += f", {tls}"
        out.append(line + f" ({ago(h.age)})")
        if h.detail:
            out.append(f"      {h.detail}")
        if h.leaf_sha256:
            out.append(f"      leaf sha256 {h.leaf_sha256}")
        if h.spki_sha256:
            out.append(f"      spki sha256 {h.spki_sha256}")
    return out


def _override(ov: OverrideDoc | None) -> list[str]:
    if ov is None:
        return ["Override: none"]
    return ["Override:", *_override_lines(ov)]


def _override_lines(ov: OverrideDoc) -> list[str]:
    until = "never expires" if ov.expires_in is None else f"expires {within(ov.expires_in)}"
    state = "" if ov.active else " (EXPIRED)"
    out = [
        f"  {ov.destination}: {ov.policy}{state}",
        f"      by {ov.author or '?'} {ago(ov.age)}, {until}",
    ]
    if ov.comment:
        out.append(f"      comment: {ov.comment}")
    return out


# -- the other commands ---------------------------------------------------------------------


def overrides(doc: r.Overrides) -> str:
    if not doc.overrides:
        return "no overrides\n"
    return "\n".join(line for ov in doc.overrides for line in _override_lines(ov)) + "\n"


def _pairs(counts: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={_flat(v)}" for k, v in counts.items())


def _flat(value: object) -> str:
    if isinstance(value, Mapping):
        return json.dumps({str(k): v for k, v in value.items()}, separators=(",", ":"))
    return str(value)


def status(doc: r.StatusResult) -> str:
    cache, look = doc.cache, doc.lookups
    connections = "-" if doc.connections is None else str(doc.connections)
    refused = 0 if doc.refused is None else doc.refused
    rows = [
        ("version", f"policyd {doc.version}"),
        ("uptime", format_duration(doc.uptime)),
        ("listeners", ", ".join(doc.listeners)),
        ("store", doc.store),
        ("connections", f"{connections} (refused {refused})"),
        (
            "cache",
            f"{cache.answers} answers, {cache.verdicts} verdicts, {cache.overrides} overrides",
        ),
        (
            "lookups",
            f"{look.lookups} served from the slow path, {look.hits} cache hits,"
            f" {look.temp} TEMP, {look.perm} PERM",
        ),
    ]
    if doc.prefetch is not None:
        rows.append(("prefetches", _pairs(doc.prefetch.to_json())))
    if doc.probe is not None:
        rows.append(("probe queue", _pairs(doc.probe.to_json())))
    if doc.mta_sts is not None:
        rows.append(("sts fetches", _pairs(doc.mta_sts.to_json())))
    if doc.fleet is not None:
        counts = {k: v for k, v in doc.fleet.to_json().items() if k != "link"}
        rows.append(("fleet", f"link {doc.fleet.link}; {_pairs(counts)}"))
    return "".join(f"{name:<12} {value}\n" for name, value in rows)


def _names(level: str, listed: tuple[str, ...]) -> str:
    more = f", ... (+{len(listed) - NAMES_SHOWN})" if len(listed) > NAMES_SHOWN else ""
    return f"  {level:<22} {len(listed):>5}  {', '.join(listed[:NAMES_SHOWN])}{more}"


def report(doc: ReportResult) -> str:
    now, since = doc.now, doc.since
    out = [f"Report since {clock(since)} ({format_duration(now - since)})", ""]
    out.append(f"Level changes: {len(doc.changes)}")
    for c in doc.changes:
        previous = c.previous or "(first seen)"
        profile = "" if c.profile == "postfix" else f" [{c.profile}]"
        out.append(
            f"  {clock(c.at)}  {c.destination}{profile}: {previous} -> {c.level}  ({c.reason})"
        )
    for profile, by_level in doc.levels.items():
        out += ["", f"Destinations by level (profile {profile}):"]
        out += [_names(level, names) for level, names in by_level.items()]
        counts = doc.rules.get(profile, {}).items()
        out.append("  decided by: " + ", ".join(f"{rule} {n}" for rule, n in sorted(counts)))
    out += ["", f"TEMP answers since start: {doc.temp.answers}"]
    for t in doc.temp.destinations:
        out.append(f"  {t.destination} [{t.profile}]: {t.reason}")
    out += ["", f"Held by damping: {len(doc.held)}"]
    for h in doc.held:
        d = h.probe.damping
        if d is None:
            continue
        held = "" if d.held_level is None else d.held_level.value
        out.append(
            f"  {h.destination}: holding {held}, weaker {d.pending.value}"
            f" seen {d.count} time(s) since {ago(d.age)}"
        )
    out += ["", f"Failing MTA-STS fetches: {len(doc.sts_failing)}"]
    for f in doc.sts_failing:
        cached = " (cached policy still applies)" if f.cached else ""
        out.append(f"  {f.destination}: {f.error}{cached}")
    for profile, dry in doc.dry_run.items():
        out += _dry_run(profile, dry)
    return "\n".join(out) + "\n"


def _dry_run(profile: str, dry: DryRunDoc) -> list[str]:
    """What a dry-run profile would have changed: Postfix was told NOTFOUND."""
    total = sum(len(names) for names in dry.would_change.values())
    out = ["", f"Dry run (profile {profile}): {total} destination(s) would have changed"]
    out.append("  Postfix was told NOTFOUND; with dry_run = false it would be told:")
    out += [_names(level, names) for level, names in dry.would_change.items()]
    if dry.answers:
        counted = ", ".join(f"{level} {n}" for level, n in dry.answers.items())
        out.append(f"  answers since start: {counted}")
    return out


CSV_FIELDS: Final = ("section", "at", "destination", "profile", "level", "previous", "detail")


def report_csv(doc: ReportResult, out: TextIO) -> None:
    """One flat table; ``section`` says which part of the report a row belongs to."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for c in doc.changes:
        w.writerow(("change", c.at, c.destination, c.profile, c.level, c.previous or "", c.reason))
    for profile, by_level in doc.levels.items():
        for level, names in by_level.items():
            for name in names:
                w.writerow(("level", "", name, profile, level, "", ""))
    for t in doc.temp.destinations:
        w.writerow(("temp", "", t.destination, t.profile, "TEMP", "", t.reason))
    for h in doc.held:
        d = h.probe.damping
        if d is None:
            continue
        since = "" if d.since is None else d.since
        held = "" if d.held_level is None else d.held_level.value
        w.writerow(
            ("held", since, h.destination, "", held, "",
             f"pending={d.pending.value} count={d.count}")
        )  # fmt: skip
    for f in doc.sts_failing:
        w.writerow(("sts-failing", "", f.destination, "", "", "", f.error))
    for profile, dry in doc.dry_run.items():
        for level, names in dry.would_change.items():
            for name in names:
                w.writerow(("dry-run", "", name, profile, level, "NOTFOUND", ""))


def human(result: r.Result) -> str:
    match result:
        case r.ExplainResult():
            return explain(result)
        case r.ProbeQueued():
            return f"{result.destination}: probe queued; see `policyctl explain` shortly\n"
        case OverrideDoc():
            return "override set:\n" + "\n".join(_override_lines(result)) + "\n"
        case r.OverrideDeleted():
            return f"{result.destination}: override deleted\n"
        case r.Overrides():
            return overrides(result)
        case r.Flushed():
            what = result.destination or "all destinations"
            return f"{what}: cached evidence flushed ({result.records} stored records)\n"
        case ReportResult():
            return report(result)
        case r.StatusResult():
            return status(result)
        case r.Reloaded():
            return "configuration and overrides reloaded\n"
        case r.Warmed():
            return f"{result.scheduled} of {result.requested} lookups started\n"
        case r.Checked():
            problem = f": {result.problem}" if result.problem else ""
            return f"{result.destination}: {result.level} ({result.rule}){problem}\n"
        case _:
            assert_never(result)
