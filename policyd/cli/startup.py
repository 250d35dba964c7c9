"""What ``policyd`` and ``policyd-milter`` do first: load the configuration, or check it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from policyd.config import Config, ConfigError, load


def config_or_exit(
    program: str,
    path: str,
    *,
    check_only: bool,
    warnings: Callable[[Config], Iterable[str]] = lambda _config: (),
) -> Config | int:
    """The configuration at ``path``, or the exit status when the program is done: 1 when
    it cannot be loaded (said on stderr), 0 after ``--check-config`` (``check_only``), which
    prints the ``warnings`` and "configuration ok"."""
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return 1
    if check_only:
        for warning in warnings(config):
            print(f"{program}: {config.path}: warning: {warning}", file=sys.stderr)
        print(f"{program}: {config.path}: configuration ok")
        return 0
    return config
