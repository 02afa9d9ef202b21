"""Which file system a folder lives on, read from the kernel's mount table.

Two decisions depend on it: the ledger refuses network file systems (SQLite's
locking and WAL need a local one), and ``method = "auto"`` watches network and
FUSE mounts by polling, because inotify on a client sees nothing another client
writes to the share.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

#: File systems whose contents other machines change behind the kernel's back.
NETWORK_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "ocfs2",
        "gfs2",
        "beegfs",
        "davfs",
        "virtiofs",
    }
)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The type (``ext4``, ``nfs4``, ``fuse.bindfs``, ...) of the mount holding ``path``.

    The path's nearest existing ancestor is used, so a folder the daemon will
    create still gets the answer for where it will be created.
    """
    target = Path(os.path.realpath(_existing(path)))
    text = mountinfo if mountinfo is not None else MOUNTINFO.read_text()
    best_len = -1
    best_type = "unknown"
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) < 5:
            continue
        mount_point = Path(_unescape(fields[4]))
        fstype = right.split()[0] if right.split() else "unknown"
        if (target == mount_point or mount_point in target.parents) and len(
            str(mount_point)
        ) >= best_len:
            best_len = len(str(mount_point))
            best_type = fstype
    return best_type


def is_network(fstype: str) -> bool:
    """True for network file systems and for FUSE mounts (sshfs, bindfs, rclone, ...)."""
    return fstype in NETWORK_TYPES or fstype.startswith("fuse") or fstype.startswith("nfs")


def _existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current
