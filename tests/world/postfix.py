"""Throwaway Postfix instances for the world: a config and a queue directory of their
own under one base directory, services without chroot, and ``master -c DIR -s -d`` in the
world's network namespace (so it reads the world's resolv.conf). Receivers
(:func:`tests.world.smtp_world.postfix_instance`) and the sending Postfix of the
end-to-end tests (:mod:`tests.postfix_sender`) are both built here."""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.world.procs import Background
from tests.world.world import World

POSTFIX_MASTER: Final = "/usr/lib/postfix/sbin/master"

POSTFIX_SERVICES: Final = """\
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""
QUEUE_SUBDIRS: Final = [
    "active",
    "bounce",
    "corrupt",
    "defer",
    "deferred",
    "flush",
    "hold",
    "incoming",
    "private",
    "saved",
    "trace",
]


@dataclass(frozen=True)
class Instance:
    """The files of one instance under ``base``."""

    base: Path

    @property
    def conf(self) -> Path:
        return self.base / "conf"

    @property
    def queue(self) -> Path:
        return self.base / "queue"

    @property
    def maillog(self) -> Path:
        return self.base / "maillog"

    def configure(
        self, myhostname: str, listen: str, naming: Sequence[str], settings: Sequence[str]
    ) -> None:
        """The queue directories, and main.cf and master.cf for an smtpd on ``listen``
        (address:port): the settings every instance shares, then ``naming`` (domains and
        networks), then ``settings``."""
        self._make_queue()
        queue = self.queue
        lines = [
            "compatibility_level = 3.6",
            f"queue_directory = {queue}",
            "data_directory = data",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            f"myhostname = {myhostname}",
            *naming,
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            # Postfix's own log (postlogd, the postlog service of master.cf) goes to the
            # master's stdout, which is the maillog file.
            "maillog_file = /dev/stdout",
            "smtpd_peername_lookup = no",
            *settings,
        ]
        (self.conf / "main.cf").write_text("\n".join(lines) + "\n")
        (self.conf / "master.cf").write_text(f"{listen} inet n - n - - smtpd\n" + POSTFIX_SERVICES)

    def master(self, world: World, name: str) -> Background:
        """The instance's master process (not started yet), logging to :attr:`maillog`."""
        return Background(
            name,
            [*world.exec_prefix(), POSTFIX_MASTER, "-c", str(self.conf), "-s", "-d"],
            self.maillog,
        )

    def _make_queue(self) -> None:
        # data_directory relative to queue_directory: Postfix opens it after dropping to
        # the postfix user, who cannot traverse pytest's 0700 temporary directories.
        conf, queue = self.conf, self.queue
        data = queue / "data"
        for d in (conf, queue, data):
            d.mkdir(parents=True, exist_ok=True)
        owner = pwd.getpwnam("postfix")
        postdrop = grp.getgrnam("postdrop").gr_gid
        for name in QUEUE_SUBDIRS:
            (queue / name).mkdir(exist_ok=True)
            os.chown(queue / name, owner.pw_uid, owner.pw_gid)
            os.chmod(queue / name, 0o700)
        (queue / "pid").mkdir(exist_ok=True)
        for name, mode in (("maildrop", 0o730), ("public", 0o710)):
            (queue / name).mkdir(exist_ok=True)
            os.chown(queue / name, owner.pw_uid, postdrop)
            os.chmod(queue / name, mode)
        os.chown(data, owner.pw_uid, owner.pw_gid)
