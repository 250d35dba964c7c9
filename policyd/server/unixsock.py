"""Unix listening sockets shared by both servers: claiming a path without breaking a running
instance, permissions Postfix can use, and removing only the socket this process made."""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import stat
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("policyd")

POSTFIX_GROUP: Final = "postfix"  # Debian's (and upstream's default) group of Postfix
PROBE_TIMEOUT: Final = 1.0  # seconds to wait for a running server to accept
PARENT_MODE: Final = 0o755  # a directory policyd creates: clients must traverse it


class SocketInUse(OSError):
    """Another process answers on the path: starting would cut it off from its clients."""


def claim_unix_path(path: str) -> None:
    """Make the path ready to bind: create its directory, and remove a stale socket.

    A socket that accepts a connection belongs to a running server (another policyd on the
    same configuration): it is never replaced. Anything at the path that is not a socket is
    left alone and reported: a config typo must not delete a postmaster's file.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
        os.chmod(parent, PARENT_MODE)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; not removing it")
    if _answers(path):
        raise SocketInUse(
            f"another process (a running policyd?) answers on {path}; not replacing it. "
            "Stop it first, or give this instance other listeners."
        )
    os.unlink(path)


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # stale: nobody listens
    except TimeoutError:
        return True  # a listener with a full backlog is still a listener
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True
        raise OSError(f"cannot tell whether {path} is in use: {exc.strerror}") from None
    finally:
        probe.close()
    return True


@dataclass(frozen=True, slots=True)
class BoundSocket:
    """A socket file this process created, known by its inode, so that shutting down never
    removes a socket a later instance bound at the same path."""

    path: str
    dev: int
    ino: int

    @classmethod
    def record(cls, path: str) -> BoundSocket:
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} is not the socket just bound")
        return cls(path, st.st_dev, st.st_ino)

    def is_ours(self) -> bool:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def remove(self) -> None:
        if self.is_ours():
            os.unlink(self.path)


def postfix_gid() -> int | None:
    try:
        return grp.getgrnam(POSTFIX_GROUP).gr_gid
    except KeyError:
        return None


def apply_socket_perms(bound: BoundSocket, mode: int, group: str) -> None:
    """Give a control socket its configured group and mode (the group must exist)."""
    if not bound.is_ours():
        raise OSError(f"{bound.path} was replaced before its permissions were set")
    if group:
        os.chown(bound.path, -1, grp.getgrnam(group).gr_gid, follow_symlinks=False)
    os.chmod(bound.path, mode)


def apply_socketmap_perms(bound: BoundSocket, mode: int, group: str) -> None:
    """Permissions for a socketmap socket: Postfix's delivery agents, which run as the
    postfix user, must connect.

    ``group`` set: that group, which must exist. ``group`` empty (the default): the postfix
    group when it exists. When this process may not give the socket that group (it runs as
    its own user without membership of the postfix group), the socket is made connectable
    by every local user instead, with a warning: it answers lookups only, like the loopback
    TCP listener, and a socket Postfix cannot reach would defer all outbound mail.
    """
    if group:
        apply_socket_perms(bound, mode, group)
        return
    if not bound.is_ours():
        raise OSError(f"{bound.path} was replaced before its permissions were set")
    gid = postfix_gid()
    if gid is None:
        os.chmod(bound.path, mode)  # no Postfix here (a test or development machine)
        return
    try:
        os.chown(bound.path, -1, gid, follow_symlinks=False)
    except PermissionError:
        log.warning(
            "socketmap: cannot give %s the group %s (this user is not a member); "
            "making it connectable by all local users so Postfix can reach it. "
            "Run policyd with SupplementaryGroups=%s (systemd/policyd.service does) "
            "or set [server] socket_group.",
            bound.path,
            POSTFIX_GROUP,
            POSTFIX_GROUP,
        )
        os.chmod(bound.path, mode | 0o006)
        return
    os.chmod(bound.path, mode)
