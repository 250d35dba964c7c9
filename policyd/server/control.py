"""The control socket: where ``policyctl`` talks to the running daemon.

A unix socket only (the control channel is for local administrators, as in
postfix-tlspol), created with ``[control] mode`` and group ``[control] group``. File
permissions are the first fence; the second is the peer's credentials (SO_PEERCRED,
socket(7)), checked per connection against the configuration in force, so a reload that
changes the groups applies to the next connection:

* root and members of ``[control] group`` may run every command;
* members of ``[control] read_group`` may run the read-only ones (explain, report,
  status, override list);
* anyone else is refused.

One JSON request per line, many per connection, answered in order. Bounded: line size
(:data:`policyd.codec.control.MAX_LINE`), read chunk, the time from a request's first byte
to its end (so trickling bytes keeps no connection open), idle time between requests, and
connections: at the limit the longest-idle one is closed to admit the new one, as the
socketmap listener does (security review L7: 32 peers sending a byte a minute no longer
lock out policyctl and the milter). Each request
is dispatched exhaustively to one operation of :class:`policyd.admin.Admin`; this module
adds only the audit log lines, which name the peer.
"""

from __future__ import annotations

import asyncio
import enum
import grp
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, assert_never

from policyd.admin import Admin, AdminError
from policyd.codec import control
from policyd.codec.control import ErrorCode, Failure, JsonObject, Ok
from policyd.codec.postfix_policy import render as render_policy
from policyd.config import Config
from policyd.server.unixsock import BoundSocket, apply_socket_perms, claim_unix_path
from policyd.settings import ControlSettings

log = logging.getLogger("policyd")

READ_CHUNK: Final = 4096  # bytes per read from a control connection
IDLE_TIMEOUT: Final = 60.0  # seconds a connection may wait between requests
# Seconds from a request's first byte to its newline: policyctl and the milter send a
# request in one write; a peer trickling bytes is closed, however often they come.
REQUEST_TIMEOUT: Final = 10.0
WRITE_TIMEOUT: Final = 10.0  # seconds to hand a reply to a peer that stopped reading
# Concurrent control connections; at the limit the longest-idle is closed for a new one.
MAX_CONNECTIONS: Final = 32
_PEERCRED: Final = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a control connection (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    user: str

    def __str__(self) -> str:
        return f"{self.user}(uid={self.uid},pid={self.pid})"


class _Conn:
    """One control connection's place in the eviction order (ControlServer._conns)."""

    __slots__ = ("busy", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.busy = False  # running a command: evicted only when every connection is


class Access(enum.Enum):
    NONE = "none"
    READ = "read"
    WRITE = "write"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def _in_group(group: str, user: str, gids: set[int]) -> bool:
    if not group:
        return False
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        log.warning("control: group %r does not exist; nobody is in it", group)
        return False
    return entry.gr_gid in gids or user in entry.gr_mem


def peer_access(uid: int, gid: int, settings: ControlSettings) -> tuple[str, Access]:
    """The peer's user name and what it may do. Blocking (NSS): run in a thread."""
    try:
        pw = pwd.getpwuid(uid)
        user, gids = pw.pw_name, {gid, pw.pw_gid}
    except KeyError:
        user, gids = f"uid{uid}", {gid}
    if uid == 0 or _in_group(settings.group, user, gids):
        return user, Access.WRITE
    # The daemon's own user may read: it could read the store's files anyway. The
    # milter has a user of its own and reads through read_group (review L7).
    if uid == os.getuid() or _in_group(settings.read_group, user, gids):
        return user, Access.READ
    return user, Access.NONE


def allowed(access: Access, cmd: control.Command) -> bool:
    if access is Access.WRITE:
        return True
    return access is Access.READ and not cmd.writes


class ControlServer:
    """The control socket in front of an :class:`~policyd.admin.Admin`.

    ``access``: the ``[control]`` settings in force, read per connection (a reload that
    changes the groups applies to the next one); ``mode`` and ``group`` are the socket
    file's, applied once at start.
    """

    def __init__(
        self,
        admin: Admin,
        path: str,
        *,
        mode: int,
        group: str,
        access: Callable[[], ControlSettings],
        max_connections: int = MAX_CONNECTIONS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._admin = admin
        self._path = path
        self._mode = mode
        self._group = group
        self._access = access
        self._max_connections = max_connections
        self._clock = monotonic
        self._server: asyncio.Server | None = None
        self._bound: BoundSocket | None = None
        # Insertion order is activity order: the first is the longest idle (_touch).
        self._conns: dict[asyncio.Task[None], _Conn] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # every connection's, evicted ones too
        self.evicted = 0  # connections closed to admit new ones, since start

    @classmethod
    def of(
        cls,
        admin: Admin,
        config: Config,
        access: Callable[[], ControlSettings],
        *,
        max_connections: int = MAX_CONNECTIONS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> ControlServer:
        """The control socket ``config`` names, with its mode and group."""
        return cls(
            admin,
            config.server.control.path,  # a unix listener (checked at load)
            mode=config.control.mode,
            group=config.control.group,
            access=access,
            max_connections=max_connections,
            monotonic=monotonic,
        )

    @property
    def path(self) -> str:
        return self._path

    async def start(self) -> None:
        path = self._path
        claim_unix_path(path)
        # Created under a tight umask so there is no moment when others could connect.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path, limit=control.MAX_LINE
            )
        finally:
            os.umask(old)
        self._bound = BoundSocket.record(path)
        apply_socket_perms(self._bound, self._mode, self._group)
        log.info("control: listening on unix:%s", path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._bound is not None:
            self._bound.remove()  # only the socket this process made, never a successor's
            self._bound = None
        self._server = None

    def _admit(self, task: asyncio.Task[None], conn: _Conn) -> None:
        """Take a new connection; at the limit close the longest-idle one first (one not
        running a command if there is any), never the newcomer."""
        while len(self._conns) >= self._max_connections:
            victim = next((t for t, c in self._conns.items() if not c.busy), None)
            if victim is None:
                victim = next(iter(self._conns))
            self._conns.pop(victim).writer.close()  # its read ends, and so does its task
            self.evicted += 1
            if self.evicted % 100 == 1:
                log.warning(
                    "control: %d connections reached, closed the longest-idle to admit "
                    "another (closed so far: %d)",
                    self._max_connections,
                    self.evicted,
                )
        self._conns[task] = conn

    def _touch(self, task: asyncio.Task[None]) -> None:
        """The connection was active: it becomes the last to be evicted."""
        conn = self._conns.pop(task, None)
        if conn is not None:
            self._conns[task] = conn

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(writer)
        self._tasks.add(task)
        self._admit(task, conn)
        peer_text = "unknown peer"
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, gid = peer_credentials(sock)
            user, access = await asyncio.to_thread(peer_access, uid, gid, self._access())
            peer = Peer(pid, uid, gid, user)
            peer_text = str(peer)
            await self._converse(reader, writer, peer, access, conn)
        except asyncio.CancelledError:
            # Only close() cancels these tasks; ending quietly keeps asyncio's stream
            # callback from logging the cancellation as an error.
            return
        except ConnectionError:
            log.debug("control %s: peer left before its reply", peer_text)
        except Exception:  # the per-connection catch-all: one bad peer never stops others
            log.exception("control %s: internal error, closing connection", peer_text)
        finally:
            self._tasks.discard(task)
            if self._conns.get(task) is conn:
                del self._conns[task]
            writer.close()

    async def _converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        access: Access,
        conn: _Conn,
    ) -> None:
        decoder = control.request_decoder()
        task = asyncio.current_task()
        assert task is not None
        idle_since = self._clock()  # the end of the last reply, or the connection's start
        started = 0.0  # when the first byte of the unfinished request came; 0: none yet
        while True:
            try:
                req = decoder.next_message()
            except control.ControlProtocolError as exc:
                log.warning("control %s: bad request: %s", peer, exc.message)
                await _send(writer, Failure(exc.code, exc.message))
                if exc.fatal:
                    return
                continue
            if req is control.NEED_DATA:
                now = self._clock()
                if decoder.buffered:  # a request has begun: its deadline runs from then
                    left = started + REQUEST_TIMEOUT - now
                    if left <= 0:
                        log.warning("control %s: request not finished in time, closing", peer)
                        return
                else:
                    left = idle_since + IDLE_TIMEOUT - now
                    if left <= 0:
                        return
                try:
                    async with asyncio.timeout(left):
                        data = await reader.read(READ_CHUNK)
                except TimeoutError:
                    return
                if not data:
                    return
                if not decoder.buffered:
                    started = self._clock()
                decoder.receive_data(data)
                self._touch(task)
                continue
            conn.busy = True
            try:
                await _send(writer, await self._answer(req, peer, access))
            finally:
                conn.busy = False
            idle_since = started = self._clock()  # bytes still buffered began a new request
            self._touch(task)

    async def _answer(self, req: control.Request, peer: Peer, access: Access) -> control.Reply:
        cmd = req.command
        if not allowed(access, cmd):
            log.warning("control %s: refused %s", peer, cmd.value)
            what = "changes" if cmd.writes else "queries"
            return Failure(
                ErrorCode.REFUSED,
                f"{cmd.value}: user {peer.user} may not make {what} "
                "(needs root or the control group)",
            )
        try:
            return Ok(await self.run(req, peer))
        except AdminError as exc:
            return Failure(exc.code, " ".join(exc.message.split()))
        except Exception:  # the connection's catch-all: a bug in one command is not fatal
            log.exception("control %s: %s failed", peer, cmd.value)
            return Failure(ErrorCode.INTERNAL, f"{cmd.value} failed: internal error, see the log")

    async def run(self, req: control.Request, peer: Peer) -> JsonObject:
        """One command, dispatched exhaustively: a request type added to the codec and not
        handled here is a type error (mypy), never a fall-through to another command."""
        admin = self._admin
        match req:
            case control.OverrideSet():
                ov = await admin.set_override(
                    req.destination, req.policy, req.expires, req.comment, peer.user
                )
                comment = f" comment={req.comment}" if req.comment else ""
                log.info(
                    "control: %s set override %s: %s%s",
                    peer, ov.destination, render_policy(req.policy), comment,
                )  # fmt: skip
                return ov.to_json()
            case control.OverrideDel():
                deleted = await admin.delete_override(req.destination)
                log.info("control: %s deleted the override for %s", peer, deleted.destination)
                return deleted.to_json()
            case control.OverrideList():
                return admin.overrides().to_json()
            case control.Explain():
                return (await admin.explain(req.destination)).to_json()
            case control.Probe():
                log.info("control: %s asked for a probe of %s", peer, req.destination.key)
                if req.wait:
                    return (await admin.probe_now(req.destination)).to_json()
                return admin.probe_soon(req.destination).to_json()
            case control.Flush():
                flushed = await admin.flush(req.destination, mta_sts=req.include_mta_sts)
                sts = " (MTA-STS policies included)" if req.include_mta_sts else ""
                what = flushed.destination or "all cached evidence"
                log.info("control: %s flushed %s%s", peer, what, sts)
                return flushed.to_json()
            case control.Report():
                return (await admin.report(req.since)).to_json()
            case control.Status():
                return admin.status().to_json()
            case control.Warm():
                return admin.warm(req.destinations).to_json()
            case control.Check():
                return (await admin.check(req.destination)).to_json()
            case control.Reload():
                reloaded = await admin.reload()
                log.info("control: %s reloaded the configuration", peer)
                return reloaded.to_json()
            case _:
                assert_never(req)


async def _send(writer: asyncio.StreamWriter, reply: control.Reply) -> None:
    writer.write(control.encode_reply(reply))
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()
