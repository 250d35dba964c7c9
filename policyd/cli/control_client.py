"""A blocking, deadline-bounded client of the daemon's control socket.

``policyctl`` uses it, and policyd-milter can: one connection per exchange (so threads may
share a client), the requests sent at once, the replies read in order until one deadline
that covers connecting, sending and reading. Every way it can fail is a
:class:`ControlError` whose :class:`Trouble` says which, with one line for the postmaster
and the replies that did arrive in time.
"""

from __future__ import annotations

import enum
import socket
import time
from collections.abc import Callable, Sequence
from typing import Final

from policyd.codec import control
from policyd.codec.control import results

READ_CHUNK: Final = 65536  # bytes per recv


class Trouble(enum.Enum):
    DENIED = "denied"  # the socket's permissions keep this user out
    UNREACHABLE = "unreachable"  # no daemon listening at the path
    TIMEOUT = "timeout"  # no (complete) reply before the deadline
    LOST = "lost"  # the connection broke or closed before every reply
    BAD_REPLY = "bad-reply"  # a reply this client cannot read (a version skew, a bug)
    FAILED = "failed"  # the daemon answered with a failure (see ``failure``)


class ControlError(Exception):
    def __init__(
        self,
        trouble: Trouble,
        message: str,
        replies: Sequence[control.Reply] = (),
        failure: control.Failure | None = None,
    ) -> None:
        super().__init__(message)
        self.trouble = trouble
        self.message = message
        self.replies = tuple(replies)  # those that arrived before the trouble
        self.failure = failure


class ControlClient:
    """``timeout``: seconds for a whole exchange; ``connect_timeout`` caps the connect."""

    def __init__(
        self,
        path: str,
        timeout: float,
        *,
        connect_timeout: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._monotonic = monotonic

    def exchange(
        self, requests: Sequence[control.Request], timeout: float | None = None
    ) -> list[control.Reply]:
        """The replies to ``requests``, in order, sent on one connection. A Failure reply is
        returned like any other; only transport and protocol trouble raise."""
        limit = self.timeout if timeout is None else timeout
        deadline = self._monotonic() + limit
        replies: list[control.Reply] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(min(self.connect_timeout, limit))
            try:
                sock.connect(self.path)
            except PermissionError:
                raise ControlError(
                    Trouble.DENIED,
                    f"permission denied on {self.path} (root or the control group only)",
                ) from None
            except OSError as exc:
                raise ControlError(
                    Trouble.UNREACHABLE,
                    f"daemon unreachable at {self.path}: {exc.strerror or exc}",
                ) from None
            try:
                sock.settimeout(max(deadline - self._monotonic(), 0.001))
                sock.sendall(b"".join(control.encode_request(r) for r in requests))
                self._read(sock, len(requests), deadline, replies)
            except TimeoutError:
                raise ControlError(
                    Trouble.TIMEOUT, f"no reply from the daemon within {limit:g}s", replies
                ) from None
            except OSError as exc:
                raise ControlError(
                    Trouble.LOST,
                    f"connection to the daemon lost: {exc.strerror or exc}",
                    replies,
                ) from None
            except control.ControlProtocolError as exc:
                raise ControlError(
                    Trouble.BAD_REPLY, f"bad reply from the daemon: {exc.message}", replies
                ) from None
        return replies

    def _read(
        self, sock: socket.socket, wanted: int, deadline: float, replies: list[control.Reply]
    ) -> None:
        decoder = control.reply_decoder()
        while len(replies) < wanted:
            msg = decoder.next_message()
            if msg is not control.NEED_DATA:
                replies.append(msg)
                continue
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            data = sock.recv(READ_CHUNK)
            if not data:
                raise ControlError(
                    Trouble.LOST, "the daemon closed the connection without a reply", replies
                )
            decoder.receive_data(data)

    def call(self, req: control.Request, timeout: float | None = None) -> results.Result:
        """One request's typed result; a Failure reply raises with ``Trouble.FAILED``."""
        (reply,) = self.exchange([req], timeout)
        if isinstance(reply, control.Failure):
            raise ControlError(Trouble.FAILED, reply.message, (reply,), reply)
        try:
            return results.decode_result(req, reply.result)
        except control.ControlProtocolError as exc:
            raise ControlError(
                Trouble.BAD_REPLY, f"unexpected reply from the daemon: {exc.message}", (reply,)
            ) from None
