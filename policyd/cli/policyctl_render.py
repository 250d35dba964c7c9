"""Human output of ``policyctl``: the JSON results the daemon sends, laid out for a postmaster.

Everything here reads the result documents described in policyctl(8) through :class:`Doc`,
which tolerates missing fields (an older or newer daemon) rather than failing.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from typing import Final, TextIO

from policyd.codec import control
from policyd.codec.control import JsonValue, format_duration

TLSA_SHOWN: Final = 64  # hex digits of TLSA data shown before eliding (a SHA-256 is 64)
NAMES_SHOWN: Final = 8  # destinations listed per level in the report table


class Doc:
    """Typed, forgiving access to a JSON object."""

    __slots__ = ("_d",)

    def __init__(self, d: Mapping[str, JsonValue]) -> None:
        self._d = d

    @classmethod
    def of(cls, value: JsonValue) -> Doc:
        return cls(value if isinstance(value, dict) else {})

    def raw(self, key: str) -> JsonValue:
        return self._d.get(key)

    def text(self, key: str, default: str = "") -> str:
        value = self._d.get(key)
        if value is None or isinstance(value, dict | list):
            return default
        return str(value).lower() if isinstance(value, bool) else str(value)

    def num(self, key: str) -> float | None:
        value = self._d.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    def flag(self, key: str) -> bool:
        return self._d.get(key) is True

    def doc(self, key: str) -> Doc | None:
        value = self._d.get(key)
        return Doc(value) if isinstance(value, dict) else None

    def docs(self, key: str) -> list[Doc]:
        value = self._d.get(key)
        if not isinstance(value, list):
            return []
        return [Doc(v) for v in value if isinstance(v, dict)]

    def strs(self, key: str) -> list[str]:
        value = self._d.get(key)
        return [str(v) for v in value] if isinstance(value, list) else []

    def items(self) -> list[tuple[str, JsonValue]]:
        return list(self._d.items())


def ago(age: float | None) -> str:
    return "never" if age is None else f"{format_duration(age)} ago"


def within(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"in {format_duration(seconds)}" if seconds >= 0 else f"{format_duration(-seconds)} ago"


def clock(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


# -- explain -------------------------------------------------------------------------------


def explain(doc: Doc) -> str:
    now = doc.num("now") or time.time()
    answers = doc.docs("answers")
    dest = doc.text("destination", "?")
    head = "; ".join(f"{a.text('profile')} -> {_answer(a)}" for a in answers)
    out = [f"{dest}: {head}"]
    width = max((len(a.text("profile")) for a in answers), default=0)
    for a in answers:
        dry = f"  (dry run: would be {a.text('would_reply')})" if a.flag("dry_run") else ""
        out.append(f"  {a.text('profile'):<{width}}  {a.text('reply')}{dry}")
        out.append(f"  {'':<{width}}  decided by {a.text('rule')}: {a.text('reason')}")
    out += ["", *_dns(doc.doc("dns"), now), "", *_dane(doc.doc("dns"))]
    out += ["", *_sts(doc.doc("mta_sts"))]
    out += ["", *_probe(doc.doc("probe"))]
    out += ["", *_override(doc.doc("override"))]
    return "\n".join(out) + "\n"


def _answer(a: Doc) -> str:
    """What Postfix gets, short: the level, NOTFOUND or TEMP (the details follow below)."""
    reply = a.text("reply")
    if reply.startswith("OK "):
        return reply[3:].split(" ", 1)[0]
    return reply.split(" ", 1)[0] or a.text("level")


def _dns(dns: Doc | None, now: float) -> list[str]:
    if dns is None:
        return ["DNS: not looked up (parent-domain form or address literal)"]
    status = dns.text("mx_status")
    signed = {"secure": "DNSSEC-validated", "insecure": "not signed"}
    expires = dns.num("expires_at")
    if status == "failed":
        # The kind of a failed lookup means nothing: "MX listed" would read as found.
        line = "DNS: MX lookup FAILED"
    else:
        line = f"DNS: MX {dns.text('kind')}, {status} ({signed.get(status, status)})"
    line += f", fetched {ago(dns.num('age'))}"
    if expires is not None:
        line += f", expires {within(expires - now)}"
    out = [line]
    if dns.text("error"):
        out.append(f"  error: {dns.text('error')}")
    for h in dns.docs("hosts"):
        addrs = ", ".join(h.strs("addresses")) or "-"
        pref, addr_status = h.text("preference", "-"), h.text("address_status")
        out.append(f"  {pref:>5} {h.text('name')}  addresses {addr_status}: {addrs}")
        if h.text("address_error"):
            out.append(f"        error: {h.text('address_error')}")
    return out


def _dane(dns: Doc | None) -> list[str]:
    if dns is None or not dns.docs("hosts"):
        return ["DANE: no MX hosts"]
    out = ["DANE:"]
    for h in dns.docs("hosts"):
        tlsa = h.text("tlsa_status")
        if not tlsa:
            out.append(f"  {h.text('name')}: TLSA not looked up (addresses not DNSSEC-signed)")
            continue
        records = h.docs("tlsa")
        what = f"{len(records)} record(s)" if records else "no records"
        out.append(f"  {h.text('name')}: TLSA {tlsa}, {what}")
        if h.text("tlsa_error"):
            out.append(f"      error: {h.text('tlsa_error')}")
        for r in records:
            data = r.text("data")
            if len(data) > TLSA_SHOWN:
                data = data[:TLSA_SHOWN] + "..."
            usable = "usable" if r.flag("usable") else "UNUSABLE for SMTP (RFC 7672 3.1)"
            out.append(
                f"      {r.text('usage')} {r.text('selector')} {r.text('mtype')} {data}  {usable}"
            )
    return out


def _sts(sts: Doc | None) -> list[str]:
    if sts is None:
        return ["MTA-STS: not applicable"]
    pol = sts.doc("policy")
    out: list[str] = []
    if pol is None:
        out.append("MTA-STS: no policy" + (" (fetch still running)" if sts.flag("pending") else ""))
    else:
        max_age = pol.num("max_age")
        shown_age = (
            "-" if max_age is None else f"{pol.text('max_age')}s ({format_duration(max_age)})"
        )
        valid = "" if pol.flag("valid") else ", EXPIRED"
        out.append(
            f"MTA-STS: id={pol.text('id')} mode={pol.text('mode')} max_age={shown_age}{valid}"
        )
        out.append(f"  mx: {', '.join(pol.strs('mx')) or '-'}")
        out.append(f"  fetched {clock(pol.num('fetched_at'))} ({ago(pol.num('age'))})")
    if sts.text("error"):
        out.append(f"  last discovery/fetch FAILED: {sts.text('error')}")
    return out


def _probe(probe: Doc | None) -> list[str]:
    if probe is None:
        return ["Probe: no probe results yet"]
    names = ", ".join(probe.strs("verified_names")) or "none"
    out = [
        f"Probe: level {probe.text('level', 'unknown (nothing reachable)')},"
        f" probed {ago(probe.num('age'))}; verified names: {names}"
    ]
    damping = probe.doc("damping")
    if damping is None:
        out.append("  damping: nothing held back")
    elif damping.strs("pending_names"):
        out.append(
            f"  damping: HOLDING verified names; other names"
            f" {', '.join(damping.strs('pending_names'))} seen {damping.text('count')} time(s)"
            f" since {ago(damping.num('age'))}, not yet confirmed"
        )
    else:
        out.append(
            f"  damping: HOLDING {damping.text('held_level', '-')}; weaker"
            f" {damping.text('pending')} seen {damping.text('count')} time(s) since"
            f" {ago(damping.num('age'))}, not yet confirmed"
        )
    for h in probe.docs("hosts"):
        tls = " ".join(x for x in (h.text("protocol"), h.text("cipher")) if x)
        line = f"  {h.text('host')} [{h.text('address')}]: {h.text('verdict')}"
        if tls:
            line += f", {tls}"
        out.append(line + f" ({ago(h.num('age'))})")
        if h.text("detail"):
            out.append(f"      {h.text('detail')}")
        if h.text("leaf_sha256"):
            out.append(f"      leaf sha256 {h.text('leaf_sha256')}")
        if h.text("spki_sha256"):
            out.append(f"      spki sha256 {h.text('spki_sha256')}")
    return out


def _override(ov: Doc | None) -> list[str]:
    if ov is None:
        return ["Override: none"]
    return ["Override:", *_override_lines(ov)]


def _override_lines(ov: Doc) -> list[str]:
    expires = ov.num("expires_in")
    until = "never expires" if expires is None else f"expires {within(expires)}"
    state = "" if ov.flag("active") else " (EXPIRED)"
    out = [
        f"  {ov.text('destination')}: {ov.text('policy')}{state}",
        f"      by {ov.text('author') or '?'} {ago(ov.num('age'))}, {until}",
    ]
    if ov.text("comment"):
        out.append(f"      comment: {ov.text('comment')}")
    return out


# -- the other commands ---------------------------------------------------------------------


def overrides(doc: Doc) -> str:
    items = doc.docs("overrides")
    if not items:
        return "no overrides\n"
    return "\n".join(line for ov in items for line in _override_lines(ov)) + "\n"


def status(doc: Doc) -> str:
    cache = doc.doc("cache") or Doc({})
    look = doc.doc("lookups") or Doc({})
    rows = [
        ("version", f"policyd {doc.text('version')}"),
        ("uptime", format_duration(doc.num("uptime") or 0)),
        ("listeners", ", ".join(doc.strs("listeners"))),
        ("store", doc.text("store")),
        ("connections", f"{doc.text('connections', '-')} (refused {doc.text('refused', '0')})"),
        (
            "cache",
            f"{cache.text('answers', '0')} answers, {cache.text('verdicts', '0')} verdicts,"
            f" {cache.text('overrides', '0')} overrides",
        ),
        (
            "lookups",
            f"{look.text('lookups', '0')} served from the slow path, {look.text('hits', '0')}"
            f" cache hits, {look.text('temp', '0')} TEMP, {look.text('perm', '0')} PERM",
        ),
    ]
    probe = doc.doc("probe")
    if probe is not None:
        rows.append(("probe queue", ", ".join(f"{k}={_flat(v)}" for k, v in probe.items())))
    sts = doc.doc("mta_sts")
    if sts is not None:
        rows.append(("sts fetches", ", ".join(f"{k}={_flat(v)}" for k, v in sts.items())))
    fleet = doc.doc("fleet")
    if fleet is not None:
        counts = ", ".join(f"{k}={_flat(v)}" for k, v in fleet.items() if k != "link")
        rows.append(("fleet", f"link {fleet.text('link')}; {counts}"))
    return "".join(f"{name:<12} {value}\n" for name, value in rows)


def _flat(value: JsonValue) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def report(doc: Doc) -> str:
    now = doc.num("now") or time.time()
    since = doc.num("since") or now
    out = [f"Report since {clock(since)} ({format_duration(now - since)})", ""]
    changes = doc.docs("changes")
    out.append(f"Level changes: {len(changes)}")
    for c in changes:
        previous = c.text("previous", "(first seen)")
        profile = "" if c.text("profile") == "postfix" else f" [{c.text('profile')}]"
        out.append(
            f"  {clock(c.num('at'))}  {c.text('destination')}{profile}:"
            f" {previous} -> {c.text('level')}  ({c.text('reason')})"
        )
    levels = doc.doc("levels") or Doc({})
    rules = doc.doc("rules") or Doc({})
    for profile, by_level in levels.items():
        out += ["", f"Destinations by level (profile {profile}):"]
        for level, names in Doc.of(by_level).items():
            listed = [str(n) for n in names] if isinstance(names, list) else []
            more = f", ... (+{len(listed) - NAMES_SHOWN})" if len(listed) > NAMES_SHOWN else ""
            out.append(f"  {level:<22} {len(listed):>5}  {', '.join(listed[:NAMES_SHOWN])}{more}")
        counts = Doc.of(rules.raw(profile)).items()
        out.append("  decided by: " + ", ".join(f"{r} {n}" for r, n in sorted(counts)))
    temp = doc.doc("temp") or Doc({})
    out += ["", f"TEMP answers since start: {temp.text('answers', '0')}"]
    for t in temp.docs("destinations"):
        out.append(f"  {t.text('destination')} [{t.text('profile')}]: {t.text('reason')}")
    held = doc.docs("held")
    out += ["", f"Held by damping: {len(held)}"]
    for h in held:
        d = h.doc("damping") or Doc({})
        out.append(
            f"  {h.text('destination')}: holding {d.text('held_level')}, weaker {d.text('pending')}"
            f" seen {d.text('count')} time(s) since {ago(d.num('age'))}"
        )
    failing = doc.docs("sts_failing")
    out += ["", f"Failing MTA-STS fetches: {len(failing)}"]
    for f in failing:
        cached = " (cached policy still applies)" if f.flag("cached") else ""
        out.append(f"  {f.text('destination')}: {f.text('error')}{cached}")
    out += _dry_run(doc.doc("dry_run") or Doc({}))
    return "\n".join(out) + "\n"


def _dry_run(dry: Doc) -> list[str]:
    """What each dry-run profile would have changed: Postfix was told NOTFOUND."""
    out: list[str] = []
    for profile, body in dry.items():
        section = Doc.of(body)
        would = section.doc("would_change") or Doc({})
        total = sum(len(v) for _l, v in would.items() if isinstance(v, list))
        out += ["", f"Dry run (profile {profile}): {total} destination(s) would have changed"]
        out.append("  Postfix was told NOTFOUND; with dry_run = false it would be told:")
        for level, names in would.items():
            listed = [str(n) for n in names] if isinstance(names, list) else []
            more = f", ... (+{len(listed) - NAMES_SHOWN})" if len(listed) > NAMES_SHOWN else ""
            out.append(f"  {level:<22} {len(listed):>5}  {', '.join(listed[:NAMES_SHOWN])}{more}")
        answers = Doc.of(section.raw("answers")).items()
        if answers:
            out.append("  answers since start: " + ", ".join(f"{k} {v}" for k, v in answers))
    return out


CSV_FIELDS: Final = ("section", "at", "destination", "profile", "level", "previous", "detail")


def report_csv(doc: Doc, out: TextIO) -> None:
    """One flat table; ``section`` says which part of the report a row belongs to."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for c in doc.docs("changes"):
        w.writerow(
            ("change", c.text("at"), c.text("destination"), c.text("profile"), c.text("level"),
             c.text("previous"), c.text("reason"))
        )  # fmt: skip
    levels = doc.doc("levels") or Doc({})
    for profile, by_level in levels.items():
        for level, names in Doc.of(by_level).items():
            for name in names if isinstance(names, list) else []:
                w.writerow(("level", "", str(name), profile, level, "", ""))
    temp = doc.doc("temp") or Doc({})
    for t in temp.docs("destinations"):
        w.writerow(
            ("temp", "", t.text("destination"), t.text("profile"), "TEMP", "", t.text("reason"))
        )
    for h in doc.docs("held"):
        d = h.doc("damping") or Doc({})
        w.writerow(
            ("held", d.text("since"), h.text("destination"), "", d.text("held_level"), "",
             f"pending={d.text('pending')} count={d.text('count')}")
        )  # fmt: skip
    for f in doc.docs("sts_failing"):
        w.writerow(("sts-failing", "", f.text("destination"), "", "", "", f.text("error")))
    dry = doc.doc("dry_run") or Doc({})
    for profile, body in dry.items():
        would = Doc.of(body).doc("would_change") or Doc({})
        for level, names in would.items():
            for name in names if isinstance(names, list) else []:
                w.writerow(("dry-run", "", str(name), profile, level, "NOTFOUND", ""))


def human(req: control.Request, doc: Doc) -> str:
    if isinstance(req, control.Explain):
        return explain(doc)
    if isinstance(req, control.Probe):
        if doc.flag("queued"):
            return f"{doc.text('destination')}: probe queued; see `policyctl explain` shortly\n"
        return explain(doc)
    if isinstance(req, control.OverrideSet):
        return "override set:\n" + "\n".join(_override_lines(doc)) + "\n"
    if isinstance(req, control.OverrideDel):
        return f"{doc.text('destination')}: override deleted\n"
    if isinstance(req, control.OverrideList):
        return overrides(doc)
    if isinstance(req, control.Flush):
        what = doc.text("destination") or "all destinations"
        return f"{what}: cached evidence flushed ({doc.text('records', '0')} stored records)\n"
    if isinstance(req, control.Report):
        return report(doc)
    if isinstance(req, control.Status):
        return status(doc)
    return "configuration and overrides reloaded\n"
