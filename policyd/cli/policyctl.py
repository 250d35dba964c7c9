"""``policyctl``: the postmaster's tool, a client of the daemon's control socket.

It never opens the store itself: the daemon stays the one writer and every change applies
at once on every listener. The socket comes from ``--socket PATH`` or from the daemon's own
configuration file (``--config PATH``, ``[server] control``), the same way for every
command. Exit codes: 0 ok, 1 not found or refused, 2 usage, 3 daemon unreachable, each
failure with one line on stderr. See policyctl(8).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Final, NoReturn, TextIO, TypeAlias

from policyd import __version__
from policyd.cli import policyctl_render as render
from policyd.cli.control_client import ControlClient, ControlError, Trouble
from policyd.cli.durations import DurationError, parse_duration
from policyd.codec import control
from policyd.codec.control import ControlProtocolError, ErrorCode, JsonObject, results
from policyd.codec.control.report import ReportResult

DEFAULT_CONFIG: Final = "/etc/policyd/policyd.toml"  # = policyd.config.DEFAULT_PATH
CONNECT_TIMEOUT: Final = 5.0  # seconds to connect to the control socket
REPLY_TIMEOUT: Final = 30.0  # seconds for a reply (explain may wait for DNS and MTA-STS)
PROBE_WAIT_TIMEOUT: Final = 300.0  # seconds for `probe --wait`: DNS + STARTTLS to every MX

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # not found, refused, or the daemon could not do it
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

_EXIT_FOR: Final = {
    ErrorCode.NOTFOUND: EXIT_FAILED,
    ErrorCode.REFUSED: EXIT_FAILED,
    ErrorCode.INTERNAL: EXIT_FAILED,
    ErrorCode.USAGE: EXIT_USAGE,
}


class CtlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- finding and talking to the daemon -------------------------------------------------


def socket_path(args: argparse.Namespace) -> str:
    given = getattr(args, "socket", None)
    if given:
        return str(given)
    # Imported here: reading the daemon's configuration pulls in its settings modules,
    # which `--socket` users do not need.
    from policyd.config import ConfigError, load

    try:
        listener = load(getattr(args, "config", None) or DEFAULT_CONFIG).server.control
    except ConfigError as exc:
        raise CtlError(EXIT_UNREACHABLE, f"cannot find the control socket: {exc}") from None
    return listener.path  # a unix listener: the loader checks it


def call(path: str, req: control.Request, timeout: float | None = None) -> results.Result:
    """Send one request and return its typed result; failures become :class:`CtlError`."""
    client = ControlClient(
        path, REPLY_TIMEOUT if timeout is None else timeout, connect_timeout=CONNECT_TIMEOUT
    )
    try:
        return client.call(req)
    except ControlError as exc:
        if exc.failure is not None:
            raise CtlError(_EXIT_FOR[exc.failure.code], exc.message) from None
        status = EXIT_FAILED if exc.trouble is Trouble.DENIED else EXIT_UNREACHABLE
        raise CtlError(status, exc.message) from None


# -- the command line ------------------------------------------------------------------


# Shown by `policyctl COMMAND --help`; the one-line help of each is in the main --help.
DESCRIPTIONS: Final = {
    "override": "Set, delete or list policies set by hand. An override outranks DANE, "
    "MTA-STS and probes until it expires or is deleted.",
    "explain": "Show what Postfix is told for DOMAIN under each profile, which rule chose "
    "it, and the evidence behind it: DNS and DANE records, the MTA-STS policy, probe "
    "results, any override.",
    "probe": "Connect to DOMAIN's MX hosts with STARTTLS now and record what their "
    "certificates show; with --wait, print the result as explain does.",
    "flush": "Forget cached evidence and answers for DOMAIN (or --all), so the next lookup "
    "starts fresh. Overrides stay.",
    "report": "What changed: level changes with their reasons, destinations per level, TEMP "
    "answers, weaker results held back by damping, failing MTA-STS fetches, and what "
    "dry-run profiles would have changed.",
    "status": "Version, uptime, listeners, connections, cache sizes, lookups served and "
    "the probe queue.",
    "reload": "Apply a changed policyd.toml and the overrides without dropping connections, "
    "as systemctl reload policyd does.",
    "doctor": "Check the installation end to end: Postfix's settings (read with postconf), "
    "whether Postfix can reach policyd's socket (also from its chroot), whether the "
    "resolver validates DNSSEC, and whether the store is writable. One line per check "
    "with what to change; exit status 1 when a check fails. Run it as root.",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line on stderr and exit 2, as for every other failure.
        raise CtlError(EXIT_USAGE, f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: given after the subcommand, these must not reset values given before it.
    common.add_argument(
        "--socket",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="policyd's control socket (default: [server] control of --config)",
    )
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"policyd's configuration file (default {DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    parser = _Parser(
        prog="policyctl",
        description="Ask the running policyd what Postfix is told for a destination and "
        "why, fix a destination by hand, see what changed, and check the installation "
        "(doctor). See policyctl(8).",
        epilog="Exit status: 0 ok, 1 not found or refused (doctor: a check failed), "
        "2 usage, 3 policyd unreachable.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"policyctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ov = sub.add_parser("override", help="set, delete or list policies set by hand").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    ov_set = ov.add_parser("set", parents=[common], help="set a manual policy")
    ov_set.add_argument("domain")
    ov_set.add_argument(
        "policy", nargs="+", help="a Postfix TLS policy, e.g. secure match=.example.net"
    )
    ov_set.add_argument("--expires", help="drop it after DURATION (30m, 12h, 7d, 1w)")
    ov_set.add_argument("--comment", default="", help="why (shown by override list and explain)")
    ov.add_parser("del", parents=[common], help="delete a manual policy").add_argument("domain")
    ov.add_parser("list", parents=[common], help="list manual policies")

    sub.add_parser(
        "explain", parents=[common], help="what Postfix is told for a domain, and why"
    ).add_argument("domain")
    probe = sub.add_parser(
        "probe", parents=[common], help="test the STARTTLS of a domain's MX hosts now"
    )
    probe.add_argument("domain")
    probe.add_argument("--wait", action="store_true", help="wait and show the new evidence")
    flush = sub.add_parser(
        "flush", parents=[common], help="forget what is cached, so the next lookup starts fresh"
    )
    which = flush.add_mutually_exclusive_group(required=True)
    which.add_argument("domain", nargs="?")
    which.add_argument("--all", action="store_true", help="every destination")
    flush.add_argument(
        "--include-mta-sts",
        action="store_true",
        help="drop cached MTA-STS policies too (they protect against downgrades)",
    )
    report = sub.add_parser(
        "report",
        parents=[common],
        help="level changes, current levels, held and failing destinations, dry runs",
    )
    report.add_argument(
        "--since", default="24h", metavar="DURATION", help="look back DURATION (default 24h)"
    )
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    sub.add_parser("status", parents=[common], help="uptime, connections, caches, probe queue")
    sub.add_parser(
        "reload", parents=[common], help="apply a changed policyd.toml (as systemctl reload)"
    )
    doctor = sub.add_parser(
        "doctor",
        parents=[common],
        help="check Postfix, the listeners, the resolver and the store",
    )
    doctor.add_argument(
        "--config-directory",
        default="/etc/postfix",
        metavar="DIR",
        help="Postfix's configuration directory, as postconf -c (default /etc/postfix)",
    )
    for name, text in DESCRIPTIONS.items():
        sub.choices[name].description = text
    return parser


def _domain(args: argparse.Namespace) -> JsonObject:
    return {"domain": args.domain}


def _nothing(args: argparse.Namespace) -> JsonObject:
    return {}


def _override_set(args: argparse.Namespace) -> JsonObject:
    expires = None if args.expires is None else parse_duration(args.expires)
    return {
        "domain": args.domain,
        "policy": " ".join(args.policy),
        "expires": expires,
        "comment": args.comment,
    }


# The command line, as the request each (sub)command sends: its class in the control codec
# and the ``args`` object, so the daemon and policyctl check a request with the same code.
ArgsOf: TypeAlias = Callable[[argparse.Namespace], JsonObject]
REQUESTS: Final[dict[str, tuple[control.RequestType, ArgsOf]]] = {
    "override set": (control.OverrideSet, _override_set),
    "override del": (control.OverrideDel, _domain),
    "override list": (control.OverrideList, _nothing),
    "explain": (control.Explain, _domain),
    "probe": (control.Probe, lambda a: {"domain": a.domain, "wait": a.wait}),
    "flush": (
        control.Flush,
        lambda a: {"domain": None if a.all else a.domain, "include_mta_sts": a.include_mta_sts},
    ),
    "report": (control.Report, lambda a: {"since": parse_duration(a.since)}),
    "status": (control.Status, _nothing),
    "reload": (control.Reload, _nothing),
}


def build_request(args: argparse.Namespace) -> control.Request:
    """The typed request for the command line; invalid input is a usage error (exit 2)."""
    name = args.command if args.command != "override" else f"override {args.action}"
    cls, make_args = REQUESTS[name]
    try:
        return cls.from_args(make_args(args))
    except (ControlProtocolError, DurationError) as exc:
        raise CtlError(EXIT_USAGE, str(exc)) from None


def show(
    args: argparse.Namespace, req: control.Request, result: results.Result, out: TextIO
) -> None:
    as_json = getattr(args, "json", False) or getattr(args, "format", "") == "json"
    if as_json:
        json.dump(result.to_json(), out, indent=2, sort_keys=True, ensure_ascii=False)
        out.write("\n")
        return
    if isinstance(result, ReportResult) and args.format == "csv":
        render.report_csv(result, out)
        return
    out.write(render.human(result))


def doctor(args: argparse.Namespace) -> int:
    """``policyctl doctor``: the installation checked end to end (policyd.cli.doctor)."""
    from policyd.cli import doctor as checks
    from policyd.config import ConfigError, load

    config_path = getattr(args, "config", None) or DEFAULT_CONFIG
    try:
        config = load(config_path)
    except ConfigError as exc:
        raise CtlError(EXIT_FAILED, f"cannot check: {exc}") from None

    def control_ok() -> str | None:
        try:
            call(socket_path(args), control.Status())
        except CtlError as exc:
            return exc.message
        return None

    found = checks.Doctor(config, args.config_directory, control_ok=control_ok).run()
    return checks.render(found, sys.stdout, as_json=getattr(args, "json", False))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "doctor":
            return doctor(args)
        req = build_request(args)
        timeout = (
            PROBE_WAIT_TIMEOUT if isinstance(req, control.Probe) and req.wait else REPLY_TIMEOUT
        )
        result = call(socket_path(args), req, timeout)
        show(args, req, result, sys.stdout)
    except CtlError as exc:
        print(f"policyctl: {exc.message}", file=sys.stderr)
        return exc.status
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
