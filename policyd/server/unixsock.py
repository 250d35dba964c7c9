"""Unix listening sockets: stale-socket removal and permissions, shared by both servers."""

from __future__ import annotations

import grp
import os
import stat


def prepare_unix_path(path: str) -> None:
    """Create the directory and remove a stale socket left by a previous run.

    Anything at the path that is not a socket is left alone and reported: a config typo
    must not delete a postmaster's file.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    remove_stale_socket(path)


def remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; not removing it")
    os.unlink(path)


def apply_socket_perms(path: str, mode: int, group: str) -> None:
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    os.chmod(path, mode)
