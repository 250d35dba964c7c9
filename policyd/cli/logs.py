"""Logging of the two long-running programs: Postfix style, one bounded line per record.

``policyd[PID]: message`` and ``policyd-milter[PID]: message`` on standard error, where
journald or the terminal adds the time.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

MAX_LOG_LINE: Final = 2048  # characters per log line (RFC 5424 6.1: 2048 octets)


class BoundedFormatter(logging.Formatter):
    """Cuts a log line at MAX_LOG_LINE characters (a traceback still follows in full): some
    of what is logged comes from remote parties, and RFC 5424 6.1 only asks syslog
    receivers to take 2048 octets."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        if len(text) > MAX_LOG_LINE:
            return text[: MAX_LOG_LINE - 3] + "..."
        return text


def set_log_level(level: str | int) -> None:
    logging.getLogger().setLevel(level.upper() if isinstance(level, str) else level)


def setup_logging(program: str, level: str | int) -> None:
    """Log records of ``level`` and above to standard error as ``program[PID]: message``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(BoundedFormatter(f"{program}[{os.getpid()}]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_log_level(level)
