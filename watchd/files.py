"""Every filesystem side effect on users' folders.

Three promises live here (docs/design.md, invariants 1, 3 and 4):

* inputs are read only if they are regular files reached without following a
  symlink (``O_NOFOLLOW`` + ``fstat`` on the opened descriptor, so a file swapped
  for a symlink after it was checked is still refused);
* an output is either absent or complete: it is written to a temp file beside
  its final name, fsynced, renamed, and the folder is fsynced;
* moves keep exactly one copy: a rename where possible, and across file systems
  a durable copy followed by the removal of the source;
* nothing watchd makes of a file is readable by more people than the file was: copies
  keep the source's permission bits, and outputs get their input's (both within the
  process umask), so a private photo never becomes a public cutout or a public copy;
  a daemon running as root also gives them the input's owner and group (as ``cp -p``
  does), so the person whose private photo it was can still read what came of it.

Temp names are derived from the ledger's file id (``.watchd-<id>.tmp``; the pages of
a multi-page input ``.watchd-<id>.p<n>.tmp``), so recovery after a crash knows exactly
which stray temp files to remove, and the name stays short whatever the user's file
is called.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path, PurePosixPath

from watchd.errors import InputRejected, UnsafePath

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1024 * 1024


def temp_name(file_id: int, page: int | None = None) -> str:
    """The hidden temp name used while writing the output or a copy for file ``file_id``.

    Each page of a multi-page input has its own (``page`` counts from 1), so pages never
    share a temp file, also if they are one day written concurrently.
    """
    if page is None:
        return f".watchd-{file_id}.tmp"
    return f".watchd-{file_id}.p{page}.tmp"


def read_input(path: Path, max_bytes: int) -> bytes:
    """Read a whole input file, refusing anything that is not a plain regular file."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath("the file is a symbolic link; watchd does not follow links") from None
        if exc.errno == errno.ENOENT:
            raise InputRejected("the file disappeared before it could be read") from None
        raise InputRejected(f"the file cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath("not a regular file (a folder, device, pipe or socket)")
        if info.st_nlink > 1:
            raise UnsafePath("the file is a hard link to another file; watchd does not read those")
        if info.st_size > max_bytes:
            raise InputRejected(
                f"the file is {info.st_size} bytes, more than the limit of {max_bytes} bytes"
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise InputRejected(f"the file grew beyond the limit of {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable: the entry lives in the folder's inode.

    The one folder fsync of watchd (outputs, moves, the ledger's creation, models, stats).
    """
    _fsync(path, os.O_DIRECTORY)


def fsync_file(path: Path) -> None:
    """Flush the contents of the file at ``path`` (never through a symlink) to disk."""
    _fsync(path, os.O_NOFOLLOW)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each new entry so it survives a crash."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        fsync_dir(folder.parent)


#: Write errors that the same write meets again however long it waits: the name is too long
#: or invalid for that file system, a folder or a file sits where the other is needed, a
#: link loops, the file is too big for the file system. A file meeting one fails with the
#: reason at once. Everything else (a full or read-only disk, I/O errors, permissions an
#: operator can fix) is transient: retried with backoff (docs/reliability.md).
PERMANENT_ERRNOS = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.EILSEQ,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.EFBIG,
    }
)


def is_permanent(exc: OSError) -> bool:
    """Whether retrying the write that raised ``exc`` can ever succeed (see PERMANENT_ERRNOS)."""
    return exc.errno in PERMANENT_ERRNOS


def atomic_write(
    path: Path,
    data: bytes,
    file_id: int,
    *,
    page: int | None = None,
    mode: int = 0o666,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file.

    ``page``: which page of a multi-page input this is (its own temp name). ``mode``: the
    permission bits it is created with (the umask still applies): an output gets its
    input's, so it is never readable by more people than the input was. ``owner``:
    (uid, gid) to give it, where the daemon may (root); elsewhere it stays the daemon's.
    """
    write_via_temp(path, data, temp_name(file_id, page), mode=mode, owner=owner)


def give_to(fd: int, owner: tuple[int, int] | None) -> None:
    """``fchown`` where permitted: a daemon that is not root keeps its files as its own."""
    if owner is not None and owner != (os.geteuid(), os.getegid()):
        with contextlib.suppress(PermissionError):
            os.fchown(fd, *owner)


def write_via_temp(
    path: Path,
    data: bytes,
    temp_name: str,
    *,
    mode: int = 0o666,
    owner: tuple[int, int] | None = None,
) -> None:
    """:func:`atomic_write` with a temp name of the caller's (hidden, beside ``path``).

    The one write-temp-fsync-rename of watchd: outputs, error notes, manifests, stuck
    notes and the stats and metrics files all come through here.
    """
    ensure_dir(path.parent)
    temp = path.parent / temp_name
    # A leftover (or planted) entry at the temp name is removed, never written through.
    _unlink_quiet(temp)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, mode & 0o666)
    try:
        try:
            give_to(fd, owner)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)  # may fail too (e.g. a folder has the name): no temp left then
    except BaseException:
        _unlink_quiet(temp)
        raise
    fsync_dir(path.parent)


def move_file(
    src: Path,
    dst: Path,
    file_id: int,
    *,
    plain_only: bool = False,
    sync: bool = True,
    expect: tuple[int, int] | None = None,
) -> None:
    """Move ``src`` to ``dst`` durably; across file systems copy, fsync, rename, then unlink.

    A move moves the directory entry, never what a symlink points to: a rename does
    that by itself, and across file systems a symlink is recreated as a symlink
    (like ``mv``), so a link swapped in for a checked file is never read through.
    ``plain_only`` (taking inputs out of an inbox) refuses, with :class:`UnsafePath`
    and nothing moved, a copy whose source is not a regular file with a single
    link: the copy would turn a link to someone else's file into an input.
    ``sync=False`` leaves fsyncing both folders to the caller (one fsync per folder for a
    whole batch of moves); a copy is always made durable before its source is removed.
    ``expect``: the (device, inode) a permission check saw (``submit --move``); another
    file at ``src`` now is refused with :class:`UnsafePath`, nothing moved.
    """
    ensure_dir(dst.parent)
    if expect is not None:
        _check_identity(os.lstat(src), expect)
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        mode = os.lstat(src).st_mode
        if stat.S_ISLNK(mode) and not plain_only:
            _copy_symlink(src, dst, file_id)
        elif stat.S_ISLNK(mode):
            raise UnsafePath(_SYMLINK_REASON) from None
        elif not stat.S_ISREG(mode):  # never opened: opening a device can do things
            raise _refusal(_SPECIAL_REASON, plain_only) from None
        else:
            _copy_across(src, dst, file_id, plain_only=plain_only)
        fsync_dir(dst.parent)
        try:
            os.unlink(src)
        except OSError:
            # The source cannot be removed (a read-only share, a folder the daemon may not
            # write): undo the copy, so the file is moved once or not at all, never both
            # kept where the watcher would offer it again (docs/design.md, invariants).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            raise
    if not sync:
        return
    fsync_dir(src.parent)
    if src.parent != dst.parent:
        fsync_dir(dst.parent)


def move_entry(src: Path, dst: Path) -> None:
    """Rename the directory entry ``src`` to ``dst`` (durably), whatever it is; never a copy.

    For entries watchd must not read (a link, a pipe, a hard link to someone's file):
    a rename moves the name and nothing else. Across file systems it fails with EXDEV
    and the entry stays where it is.
    """
    ensure_dir(dst.parent)
    os.rename(src, dst)
    fsync_dir(src.parent)
    if src.parent != dst.parent:
        fsync_dir(dst.parent)


_SYMLINK_REASON = "the file is a symbolic link; watchd does not follow links"
_HARDLINK_REASON = "the file is a hard link to another file; watchd does not read those"
_SPECIAL_REASON = "not a regular file (a folder, device, pipe or socket)"


def _refusal(reason: str, plain_only: bool) -> Exception:
    """UnsafePath for an input being taken (it costs that file); otherwise an OSError,
    which callers moving originals around already treat as "leave it, try again later"."""
    return UnsafePath(reason) if plain_only else OSError(errno.EINVAL, reason)


def _copy_across(src: Path, dst: Path, file_id: int, *, plain_only: bool) -> None:
    """The copy half of a move across file systems, read through ``O_NOFOLLOW``."""
    temp = dst.parent / temp_name(file_id)
    try:
        fd = os.open(src, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a symlink since the lstat: not followed
            raise _refusal(_SYMLINK_REASON, plain_only) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refusal(_SPECIAL_REASON, plain_only)
        if plain_only and info.st_nlink > 1:
            raise UnsafePath(_HARDLINK_REASON)
        # a leftover temp is written over (a link planted there refuses the move); owner,
        # group, mode and times are kept, as a rename keeps them
        _copy_into(dst, fd, info, temp, open_as="wb", times_from=src)
    finally:
        os.close(fd)


def _copy_symlink(src: Path, dst: Path, file_id: int) -> None:
    """Recreate the symlink ``src`` at ``dst`` (its target is only read as text)."""
    temp = dst.parent / temp_name(file_id)
    _unlink_quiet(temp)
    os.symlink(os.readlink(src), temp)
    try:
        os.replace(temp, dst)
    except BaseException:
        _unlink_quiet(temp)
        raise


def _copy_into(
    dst: Path,
    fd: int,
    info: os.stat_result,
    temp: Path,
    *,
    mode: int = 0o666,
    open_as: str = "xb",
    times_from: Path | None = None,
) -> None:
    """Copy the open file ``fd`` (``info``: its fstat) to ``dst`` durably, through ``temp``.

    ``temp`` is opened with ``open_as`` ("xb": must be new; "wb": a leftover is written
    over), never through a link planted at the name, with ``mode`` (the umask still
    applies); it gets the source's owner and group where the daemon may, is fsynced, gets
    ``times_from``'s mode and times (``copystat``) if set, and is renamed to ``dst``. On
    any failure it is removed. The caller fsyncs the folder.
    """
    try:
        opener = partial(_open_new, mode=mode)
        with open(fd, "rb", closefd=False) as reader, open(temp, open_as, opener=opener) as writer:
            give_to(writer.fileno(), (info.st_uid, info.st_gid))
            shutil.copyfileobj(reader, writer, _CHUNK)
            writer.flush()
            os.fsync(writer.fileno())
        if times_from is not None:
            shutil.copystat(times_from, temp, follow_symlinks=False)
        os.replace(temp, dst)
    except BaseException:
        _unlink_quiet(temp)
        raise


def _open_new(path: str, flags: int, mode: int = 0o666) -> int:
    """``open()`` opener for temp files: never write through a symlink planted at the name."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def _check_identity(info: os.stat_result, expect: tuple[int, int]) -> None:
    if (info.st_dev, info.st_ino) != expect:
        raise UnsafePath("the file was replaced after watchd checked who may read it")


def copy_file(src: Path, dst: Path, file_id: int, *, expect: tuple[int, int] | None = None) -> None:
    """Copy a plain file durably (``submit`` without ``move``): the source is left untouched.

    The copy gets the source's permission bits (within the umask), never wider ones, and,
    where the daemon may (root), the source's owner and group.
    ``expect``: the (device, inode) a permission check saw; the opened file must be it.
    """
    ensure_dir(dst.parent)
    temp = dst.parent / temp_name(file_id)
    _unlink_quiet(temp)
    fd = os.open(src, _READ_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath("not a regular file")
        if expect is not None:
            _check_identity(info, expect)
        _copy_into(dst, fd, info, temp, mode=stat.S_IMODE(info.st_mode) & 0o666)
    finally:
        os.close(fd)
    fsync_dir(dst.parent)


def remove_file(path: Path) -> None:
    """Delete an original (``after = "delete"``); already gone counts as done."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def remove_stray_temp(folder: Path, file_id: int) -> bool:
    """Remove the temp files a crash may have left for ``file_id``; True when one was there.

    That is the file's own temp name and, for a multi-page input, its pages' ones
    (``.watchd-<id>.p<n>.tmp``), found by name in ``folder``; nothing else is touched.
    """
    removed = _unlink_quiet(folder / temp_name(file_id))
    pattern = re.compile(rf"\.watchd-{file_id}\.p[1-9][0-9]*\.tmp")
    try:
        with os.scandir(folder) as entries:
            strays = [entry.name for entry in entries if pattern.fullmatch(entry.name)]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for name in strays:
        removed = _unlink_quiet(folder / name) or removed
    return removed


def is_regular(path: Path) -> bool:
    """Whether ``path`` is a regular file itself (not a link to one); False if it is gone."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _unlink_quiet(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def write_error_note(
    original: Path,
    reason: str,
    source_name: str,
    file_id: int,
    *,
    left_in_inbox: bool = False,
    where: str | None = None,
) -> Path:
    """Write ``<original>.error.txt`` for people on a share who cannot read the daemon's log.

    ``where``: a sentence saying where the dropped entry is, when it is neither next to
    the note nor left in the inbox by ``after = "keep"``.
    """
    note = error_note_path(original)
    if where is None:
        where = (
            "The original file was left where it was dropped (after = keep).\n"
            if left_in_inbox
            else f"The original file is kept next to this note as {original.name}.\n"
        )
    text = (
        f"watchd could not process {source_name}\n\n"
        f"Reason: {reason}\n\n"
        f"{where}"
        "Fix the problem and drop the file into the inbox again to retry.\n"
    )
    atomic_write(note, text.encode("utf-8", "replace"), file_id)
    return note


def error_note_path(original: Path) -> Path:
    """``<name>.error.txt`` beside ``original``; a name too long for that is shortened first."""
    name = fit_name(original.name, NAME_MAX - len(_NOTE_SUFFIX))
    return original.with_name(name + _NOTE_SUFFIX)


# --- output naming -------------------------------------------------------------------------------

#: The longest file name (one path component, in bytes) Linux file systems accept.
NAME_MAX = 255
_NOTE_SUFFIX = ".error.txt"
_MAX_KEPT_SUFFIX = 16  # bytes; a longer "suffix" is just part of the name when shortening


def _nbytes(text: str) -> int:
    return len(os.fsencode(text))


def fit_name(name: str, limit: int = NAME_MAX, label: str = "") -> str:
    """``name`` with ``label`` before its suffix, shortened to at most ``limit`` bytes.

    Names watchd derives (``a.png`` from ``a.jpeg``, ``a (2).png``, ``a.jpg.error.txt``)
    can be longer than the longest name the file system takes, although the dropped
    name was not. The stem is cut at a character boundary and the suffix kept, so
    ``<254 bytes>`` becomes ``<251 bytes>.png``; a name that already fits is unchanged.
    Deterministic, so the same drops always give the same names; a clash between two
    shortened names is numbered like any other clash.
    """
    suffix = PurePosixPath(name).suffix
    if _nbytes(suffix) > _MAX_KEPT_SUFFIX:
        suffix = ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    tail = label + suffix
    if _nbytes(stem + tail) <= limit:
        return stem + tail
    short = _cut(stem, limit - _nbytes(tail)).rstrip(" ")
    return short + tail if short else _cut(stem + tail, limit)


def _cut(text: str, limit: int) -> str:
    """The longest prefix of ``text`` (whole characters) that is at most ``limit`` bytes."""
    sizes = [_nbytes(char) for char in text]
    total = sum(sizes)
    end = len(text)
    while end > 0 and total > limit:
        end -= 1
        total -= sizes[end]
    return text[:end]


def page_paths(output: Path, pages: int) -> list[Path]:
    """Where the outputs of an input with ``pages`` pages go, given its assigned ``output``.

    A single-page input keeps ``output``. The pages of a multi-page input (a scanned
    TIFF) go next to it as ``<stem>-p<k><suffix>``, ``k`` counting from 1 and zero-padded
    to the width of ``pages`` (``-p01`` .. ``-p12``), so a plain name sort is page order.
    Deterministic in (``output``, ``pages``): a rerun after a crash overwrites the same
    paths. Each name is shortened to fit :data:`NAME_MAX` like any derived name.
    """
    if pages <= 1:
        return [output]
    width = len(str(pages))
    return [
        output.with_name(fit_name(output.name, NAME_MAX, f"-p{k:0{width}d}"))
        for k in range(1, pages + 1)
    ]


#: Zero-padding widths a first page's name can have (page_paths pads to the page count,
#: and a worker refuses more than pipeline.MAX_PAGES = 500 pages).
_PAGE_WIDTHS = (1, 2, 3)
_PAGE_RE = re.compile(r"(?s)(.*)-p[0-9]+(\.[^.]*)")


def page_base(path: Path) -> Path | None:
    """The output a page name (``scan-p02.png``) would belong to (``scan.png``), if any."""
    match = _PAGE_RE.fullmatch(path.name)
    return path.with_name(match[1] + match[2]) if match else None


def first_page_names(output: Path) -> list[Path]:
    """The names page 1 of a multi-page input assigned ``output`` can get (-p1, -p01, -p001)."""
    return [output.with_name(fit_name(output.name, NAME_MAX, f"-p{1:0{w}d}")) for w in _PAGE_WIDTHS]


def with_suffix(rel: str, suffix: str) -> str:
    """``sub/a.jpg`` -> ``sub/a.png``; names without a suffix just gain one."""
    path = PurePosixPath(rel)
    stem = path.stem if path.suffix else path.name
    return str(path.with_name(stem + suffix))


def numbered(path: Path, n: int) -> Path:
    """The n-th alternative of a taken file name: ``a.png`` -> ``a (2).png``.

    Shortened to fit :data:`NAME_MAX` (see :func:`fit_name`), also for ``n == 1``.
    """
    label = f" ({n})" if n > 1 else ""
    name = fit_name(path.name, NAME_MAX, label)
    return path if name == path.name else path.with_name(name)


def unique_path(candidate: Path, taken: Callable[[Path], bool], *, folder: bool = False) -> Path:
    """The first of ``candidate``, ``candidate (2)``, ... that is not taken.

    Deterministic: the same history of drops gives the same names, and nobody's
    existing output is ever overwritten by someone else's.
    """
    n = 1
    while True:
        option = _numbered_folder(candidate, n) if folder else numbered(candidate, n)
        if not taken(option):
            return option
        n += 1


def unique_named(folder: Path, stem: str, suffix: str, taken: Callable[[Path], bool]) -> Path:
    """The first of ``<stem><suffix>``, ``<stem> (2)<suffix>``, ... in ``folder`` not taken.

    For names with a compound suffix that tools match on (``x.manifest.json``): the
    number goes before the whole suffix, and the stem is shortened to fit NAME_MAX.
    """
    n = 1
    while True:
        tail = (f" ({n})" if n > 1 else "") + suffix
        option = folder / (_cut(stem, NAME_MAX - _nbytes(tail)).rstrip(" ") + tail)
        if not taken(option):
            return option
        n += 1


def _numbered_folder(path: Path, n: int) -> Path:
    """``path``, or ``path (n)``; a name longer than NAME_MAX (a ``submit --name`` can be
    255 bytes, and `` (2)`` makes it longer) is shortened like any derived name."""
    if n == 1:
        name = _cut(path.name, NAME_MAX)
        return path if name == path.name else path.with_name(name)
    label = f" ({n})"
    return path.with_name(_cut(path.name, NAME_MAX - _nbytes(label)) + label)


# --- taken folders --------------------------------------------------------------------------------

#: Files operating systems leave in folders on their own; they do not keep a taken folder alive.
OS_LITTER = ("@eaDir", ".DS_Store", "Thumbs.db", "desktop.ini", "._*")


def prune_taken_folder(root: Path, litter: Callable[[str], bool]) -> bool:
    """Remove a folder job's now-empty tree from the inbox, so people see it was taken.

    Only empty folders and operating-system litter (``litter(name)`` true, regular
    files only) are removed; anything else — a file that arrived late, a link —
    keeps its folder, and the watcher picks it up as new work. Returns True when
    ``root`` itself is gone.
    """
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        folder = Path(dirpath)
        in_litter_dir = any(litter(part) for part in folder.relative_to(root).parts)
        for name in filenames:
            path = folder / name
            if (in_litter_dir or litter(name)) and is_regular(path):
                _unlink_quiet(path)
        try:
            os.rmdir(folder)
        except OSError:
            continue  # not empty: something real is still in there
    if root.exists():
        return False
    fsync_dir(root.parent)
    return True
