"""Whether the user on the other end of the control socket could read a path themselves.

``submit`` runs in the daemon, which may be root: without this, anyone allowed on the
socket could have root copy ``/etc/shadow`` into the failed folder. So a submitted path
is taken only if its caller — the uid and groups the kernel recorded for the socket
(``SO_PEERCRED``, ``SO_PEERGROUPS``) — could read it, checked the way the kernel would:

* the path is resolved once (``realpath``), then walked from ``/`` one component at a
  time with ``O_PATH | O_NOFOLLOW``, so every check is on the very inode the walk holds,
  and a link swapped into the path meanwhile stops the walk instead of redirecting it;
* every folder on the way needs search (x) permission for the caller, folders being
  listed (inside a submitted folder) read permission too, and the file read permission:
  owner bits if the caller owns it, else group bits if it is in one of the caller's
  groups, else the other bits (the kernel's order; root may read anything);
* ``--move`` also needs write and search permission on the file's folder, and, in a
  sticky folder (``/tmp``), owning the file or the folder, as ``mv`` would;
* a POSIX ACL can grant or deny beyond the mode bits, and is not evaluated here: an
  entry with an ACL that its caller does not own is refused (with that reason), which
  can only deny more than the kernel would, never allow more.

The check returns the (device, inode) it saw; the copy or move refuses another file at
that name later (:func:`watchd.files.copy_file`), so swapping the file after the check
gains nothing. ``os.access`` is no use here: it answers for the daemon's own user.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from watchd.errors import AccessDenied

READ = 4
WRITE = 2
SEARCH = 1

_WALK_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_ACL_XATTR = "system.posix_acl_access"


@dataclass(frozen=True)
class Caller:
    """A user as the kernel identified them: uid, and primary plus supplementary groups."""

    uid: int
    gids: frozenset[int]

    def may(self, info: os.stat_result, want: int) -> bool:
        """Whether the mode bits of ``info`` give this caller every permission in ``want``."""
        if self.uid == 0:
            return True
        mode = info.st_mode
        if info.st_uid == self.uid:
            bits = (mode >> 6) & 7
        elif info.st_gid in self.gids:
            bits = (mode >> 3) & 7
        else:
            bits = mode & 7
        return bits & want == want


def check_access(
    path: Path, caller: Caller, *, listed_below: Path | None = None, remove: bool = False
) -> tuple[int, int]:
    """Raise :class:`AccessDenied` unless ``caller`` could read ``path`` (and, with
    ``remove``, move it away); return the (device, inode) checked.

    ``listed_below``: a submitted folder that ``path`` was found in by listing it: every
    folder from there down must be readable by the caller too, not only searchable.
    """
    if caller.uid == 0:
        info = os.lstat(path)
        return info.st_dev, info.st_ino
    real = Path(os.path.realpath(path))
    listed = Path(os.path.realpath(listed_below)) if listed_below is not None else None
    fd = os.open("/", _WALK_FLAGS | os.O_DIRECTORY)
    current = Path("/")
    try:
        parent_info = os.fstat(fd)
        for name in real.parts[1:]:
            folder_info = os.fstat(fd)
            if not stat.S_ISDIR(folder_info.st_mode):
                raise AccessDenied(f"{path}: {current} changed while it was checked")
            want = SEARCH
            if listed is not None and (current == listed or listed in current.parents):
                want |= READ
            _require(fd, current, folder_info, caller, want, path, "folder")
            try:
                child = os.open(name, _WALK_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise AccessDenied(f"{path}: {exc.strerror}") from None
            os.close(fd)
            fd, parent_info, current = child, folder_info, current / name
        info = os.fstat(fd)
        if stat.S_ISLNK(info.st_mode):
            raise AccessDenied(f"{path}: changed into a symbolic link while it was checked")
        _require(fd, current, info, caller, READ, path, "file")
        if remove:
            _require(fd, current.parent, parent_info, caller, WRITE | SEARCH, path, "move")
            sticky = parent_info.st_mode & stat.S_ISVTX
            if sticky and caller.uid not in (info.st_uid, parent_info.st_uid):
                raise AccessDenied(
                    f"{path}: cannot be moved by uid {caller.uid}: its folder is sticky and "
                    "neither the file nor the folder is theirs"
                )
        return info.st_dev, info.st_ino
    finally:
        os.close(fd)


def _require(  # noqa: PLR0917 - one call site per role, all in this module
    fd: int,
    where: Path,
    info: os.stat_result,
    caller: Caller,
    want: int,
    asked: Path,
    role: str,
) -> None:
    if _has_acl(fd) and info.st_uid != caller.uid:
        raise AccessDenied(
            f"{asked}: not readable by uid {caller.uid} as far as watchd can tell: {where} "
            "has an access control list, which watchd does not evaluate"
        )
    if caller.may(info, want):
        return
    if role == "folder":
        if want & READ:  # found by listing: name the folder only, not what is inside it
            raise AccessDenied(
                f"{where}: not readable by uid {caller.uid}: the folder cannot be listed by "
                "them; watchd submits only what its caller could read"
            )
        raise AccessDenied(
            f"{asked}: not readable by uid {caller.uid}: the folder {where} cannot be entered "
            "by them; watchd submits only what its caller could read"
        )
    if role == "move":
        raise AccessDenied(
            f"{asked}: cannot be moved by uid {caller.uid}: the folder {where} is not writable "
            "by them (submit without --move copies it)"
        )
    raise AccessDenied(
        f"{asked}: not readable by uid {caller.uid}; watchd submits only what its caller could read"
    )


def _has_acl(fd: int) -> bool:
    """Whether the inode ``fd`` holds (an ``O_PATH`` descriptor) carries a POSIX access ACL."""
    try:
        os.getxattr(f"/proc/self/fd/{fd}", _ACL_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise AccessDenied(f"cannot read the permissions of an entry: {exc.strerror}") from None
    return True
