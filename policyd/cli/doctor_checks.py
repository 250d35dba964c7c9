"""What ``policyctl doctor`` reports (:class:`Check`), and its checks that act: as another
user (Postfix's mail_owner connecting to a listener, the database's owner writing to it)
and on the store."""

from __future__ import annotations

import enum
import os
import pwd
import socket
import sqlite3
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from policyd.adapters.store import Kind, Record, StoreError
from policyd.adapters.store_sqlite import path_from_url

CONNECT_TIMEOUT: Final = 5.0  # seconds for a test connection or the SQLite lock
MAX_CHILD_OUTPUT: Final = 4096  # bytes a check run as another user may report


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix and self.status is not Status.OK else ""
        return f"{self.status.value.upper():4} {self.name}: {self.detail}{fix}"

    def doc(self) -> dict[str, str]:
        return {
            "check": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
        }


# -- helpers that act as another user ---------------------------------------------------


def try_connect(target: str) -> str:
    """ "" when a connection succeeds; else "permission", "missing" or the error."""
    try:
        if target.startswith("/"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(target)
        else:
            host, _, port = target.rpartition(":")
            conn = socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT)
            conn.close()
    except PermissionError:
        return "permission"
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return str(exc.strerror or exc)
    return ""


def try_sqlite_write(path: str) -> str:
    """ "" when a schema change can be made and rolled back (journal included)."""
    try:
        uri = f"file:{urllib.parse.quote(path)}?mode=rw"
        db = sqlite3.connect(uri, uri=True, timeout=CONNECT_TIMEOUT)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE policyctl_doctor_probe (x)")
            db.rollback()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return str(exc)
    return ""


def as_user(user: str | None, action: Callable[[str], str], arg: str) -> str:
    """``action(arg)`` as ``user`` (when root: in a forked child that drops to the user's
    uid, gid and groups, so nothing it creates is root's); its result string."""
    if user is None or os.geteuid() != 0:
        return action(arg)
    entry = pwd.getpwnam(user)
    groups = os.getgrouplist(user, entry.pw_gid)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        out = "internal error"
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            out = action(arg)
        except BaseException as exc:  # noqa: BLE001 (the child's only frame)
            out = f"internal error: {exc}"
        finally:
            os.write(write_end, out.encode()[:MAX_CHILD_OUTPUT])
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read(MAX_CHILD_OUTPUT)
    os.waitpid(pid, 0)
    return data.decode(errors="replace")


def connect_as(user: str, target: str | tuple[str, int]) -> str | None:
    """None when ``user`` can connect; else "permission", "missing" or the error."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        return f"no user {user} on this host"
    arg = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
    return as_user(user, try_connect, arg) or None


def sqlite_check(url: str) -> Check:
    """Writable by the owner of the database (the daemon's user), without changing it:
    a write lock taken and released. Run as that user so no file becomes root's."""
    try:
        path = path_from_url(url)
    except StoreError as exc:
        return Check("store", Status.FAIL, str(exc))
    if path == ":memory:":
        return Check("store", Status.WARN, "in memory: nothing survives a restart")
    db = Path("/" + path.lstrip("/")) if path.startswith("/") else Path(path)
    if not db.exists():
        parent = db.parent
        if not parent.is_dir():
            return Check(
                "store",
                Status.FAIL,
                f"{parent} does not exist: the daemon cannot create {db}",
                f"install -d -o policyd -g policyd {parent}",
            )
        return Check("store", Status.WARN, f"{db} does not exist yet (the daemon creates it)")
    owner = pwd.getpwuid(db.stat().st_uid).pw_name
    problem = as_user(owner, try_sqlite_write, str(db))
    if problem:
        return Check(
            "store",
            Status.FAIL,
            f"{db} not writable by its owner {owner}: {problem}",
            f"chown {owner} {db} {db.parent}, and check the file system is not read-only",
        )
    return Check("store", Status.OK, f"{db} writable by {owner}")


async def redis_check(url: str) -> Check:
    from policyd.adapters.store_redis import RedisStore

    try:
        store = await RedisStore.open(url)
        try:
            key = "policyctl-doctor"
            await store.put(Record(Kind.ANSWER, key, "{}", None))
            await store.delete(Kind.ANSWER, key)
        finally:
            await store.close()
    except StoreError as exc:
        return Check("store", Status.FAIL, f"redis: {exc}", "check [store] url and Redis")
    return Check("store", Status.OK, "redis writable")
