"""Unit tests of every filesystem side effect in ``watchd.files`` (real files in ``tmp_path``)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from watchd.errors import InputRejected, UnsafePath
from watchd.files import (
    OS_LITTER,
    atomic_write,
    error_note_path,
    move_file,
    numbered,
    prune_taken_folder,
    read_input,
    remove_file,
    remove_stray_temp,
    temp_name,
    unique_named,
    unique_path,
    with_suffix,
    write_error_note,
)

LIMIT = 1024 * 1024


def leftovers(folder: Path) -> list[str]:
    """Temp files watchd may have left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".watchd-"))


def is_regular_fd(fd: int, *_: Any) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def fail_once(
    monkeypatch: pytest.MonkeyPatch, name: str, error: int, when: Callable[..., bool]
) -> list[tuple[Any, ...]]:
    """Make ``os.<name>`` raise ``OSError(error)`` the first time ``when(*args)`` holds."""
    real = getattr(os, name)
    calls: list[tuple[Any, ...]] = []

    def fake(*args: Any, **kwargs: Any) -> Any:
        if not calls and when(*args):
            calls.append(args)
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, fake)
    return calls


# --- read_input -----------------------------------------------------------------------------------


def test_read_input_returns_the_bytes_of_a_regular_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # more than one read chunk
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    assert read_input(path, LIMIT * 2) == data
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert read_input(empty, LIMIT) == b""


def test_read_input_allows_exactly_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    assert read_input(path, 100) == b"x" * 100


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_read_input_refuses_a_symlink(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, where: str
) -> None:
    folder = tmp_path if where == "inside" else tmp_path_factory.mktemp("elsewhere")
    target = folder / "secret.jpg"
    target.write_bytes(b"secret")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    link = inbox / "a.jpg"
    link.symlink_to(target)
    with pytest.raises(UnsafePath, match="symbolic link"):
        read_input(link, LIMIT)
    # A dangling link and a link to a folder are refused the same way.
    dangling = inbox / "b.jpg"
    dangling.symlink_to(folder / "missing.jpg")
    with pytest.raises(UnsafePath, match="symbolic link"):
        read_input(dangling, LIMIT)
    to_folder = inbox / "c.jpg"
    to_folder.symlink_to(folder)
    with pytest.raises(UnsafePath, match="symbolic link"):
        read_input(to_folder, LIMIT)


def test_read_input_refuses_a_symlink_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "secret.jpg"
    target.write_bytes(b"secret")
    link = tmp_path / "a.jpg"
    link.symlink_to(target)
    reads: list[int] = []
    real_read = os.read

    def spy(fd: int, n: int) -> bytes:
        reads.append(fd)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", spy)
    with pytest.raises(UnsafePath):
        read_input(link, LIMIT)
    assert reads == []


def test_read_input_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes] = []

    def attempt() -> None:
        try:
            outcome.append(read_input(fifo, LIMIT))
        except BaseException as exc:
            outcome.append(exc)

    # Without O_NONBLOCK, opening a fifo that has no writer blocks: run it aside and wait.
    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # unblock it before failing
        reader.join(timeout=10)
        pytest.fail("read_input blocked on a fifo")
    assert len(outcome) == 1
    assert isinstance(outcome[0], UnsafePath)
    assert "not a regular file" in str(outcome[0])


def test_read_input_refuses_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "sock.jpg"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        with pytest.raises(InputRejected):
            read_input(path, LIMIT)
    finally:
        server.close()


def test_read_input_refuses_a_device(tmp_path: Path) -> None:
    with pytest.raises(UnsafePath, match="not a regular file"):
        read_input(Path("/dev/null"), LIMIT)


def test_read_input_refuses_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    with pytest.raises(UnsafePath, match="not a regular file"):
        read_input(folder, LIMIT)


def test_read_input_missing_file_is_rejected_readably(tmp_path: Path) -> None:
    with pytest.raises(InputRejected, match="disappeared") as info:
        read_input(tmp_path / "gone.jpg", LIMIT)
    assert not isinstance(info.value, UnsafePath)
    assert "Errno" not in str(info.value)


def test_read_input_too_big_names_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    path.write_bytes(b"x" * 101)
    with pytest.raises(InputRejected, match=r"limit of 100 bytes") as info:
        read_input(path, 100)
    assert "101 bytes" in str(info.value)


def test_read_input_closes_its_descriptor(tmp_path: Path) -> None:
    ok = tmp_path / "a.jpg"
    ok.write_bytes(b"data")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 10)
    folder = tmp_path / "f"
    folder.mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        read_input(ok, LIMIT)
        with pytest.raises(InputRejected):
            read_input(big, 5)
        with pytest.raises(UnsafePath):
            read_input(folder, LIMIT)
    assert len(os.listdir("/proc/self/fd")) == before


# --- atomic_write ---------------------------------------------------------------------------------


def test_atomic_write_creates_parents_and_writes_exact_bytes(tmp_path: Path) -> None:
    target = tmp_path / "out" / "scan" / "deep" / "a.png"
    data = os.urandom(300_000)
    atomic_write(target, data, file_id=7)
    assert target.read_bytes() == data
    assert leftovers(target.parent) == []
    assert temp_name(7) == ".watchd-7.tmp"


def test_atomic_write_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"old content that is longer than the new one")
    old_inode = target.stat().st_ino
    atomic_write(target, b"new", file_id=1)
    assert target.read_bytes() == b"new"
    # Replaced by a rename, not rewritten in place: readers of the old file never see a mix.
    assert target.stat().st_ino != old_inode
    assert leftovers(tmp_path) == []


def test_atomic_write_failure_leaves_no_temp_and_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    calls = fail_once(monkeypatch, "write", errno.ENOSPC, lambda *args: True)
    with pytest.raises(OSError) as info:
        atomic_write(target, b"new data", file_id=3)
    assert info.value.errno == errno.ENOSPC
    assert calls, "the fake os.write was not used"
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    # The next attempt (same file id) succeeds.
    atomic_write(target, b"new data", file_id=3)
    assert target.read_bytes() == b"new data"


def test_atomic_write_fsync_failure_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    calls = fail_once(monkeypatch, "fsync", errno.EIO, is_regular_fd)
    with pytest.raises(OSError):
        atomic_write(target, b"new", file_id=3)
    assert calls, "the fake os.fsync was not used"
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_atomic_write_onto_a_folder_leaves_no_temp(tmp_path: Path) -> None:
    # Someone on the share made a folder with the output's name: the rename fails.
    target = tmp_path / "a.png"
    target.mkdir()
    (target / "theirs.txt").write_text("keep me")
    with pytest.raises(OSError):
        atomic_write(target, b"new", file_id=4)
    assert (target / "theirs.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_atomic_write_short_writes_are_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def dribble(fd: int, data: Any) -> int:
        return real_write(fd, bytes(data[:1000]))

    monkeypatch.setattr(os, "write", dribble)
    data = os.urandom(10_500)
    atomic_write(tmp_path / "a.png", data, file_id=5)
    assert (tmp_path / "a.png").read_bytes() == data


def test_atomic_write_does_not_follow_a_symlink_planted_at_the_temp_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / temp_name(9)).symlink_to(victim)
    atomic_write(out / "a.png", b"new", file_id=9)  # the planted link is removed, not followed
    assert victim.read_text() == "precious"
    assert (out / "a.png").read_bytes() == b"new"
    assert leftovers(out) == []


# --- move_file ------------------------------------------------------------------------------------


def test_move_file_renames_on_the_same_file_system(tmp_path: Path) -> None:
    src = tmp_path / "inbox" / "a.jpg"
    src.parent.mkdir()
    src.write_bytes(b"photo")
    inode = src.stat().st_ino
    dst = tmp_path / "archive" / "2024" / "a.jpg"
    move_file(src, dst, file_id=1)
    assert not src.exists()
    assert dst.read_bytes() == b"photo"
    assert dst.stat().st_ino == inode  # a rename, not a copy
    assert leftovers(dst.parent) == []


def test_move_file_within_one_folder(tmp_path: Path) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(b"photo")
    move_file(src, tmp_path / "b.jpg", file_id=1)
    assert not src.exists()
    assert (tmp_path / "b.jpg").read_bytes() == b"photo"


def test_move_file_missing_source_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        move_file(tmp_path / "gone.jpg", tmp_path / "spool" / "1", file_id=1)
    assert leftovers(tmp_path / "spool") == []


def test_move_file_across_file_systems_copies_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "spool" / "12"
    src.parent.mkdir()
    data = os.urandom(3 * 1024 * 1024 + 17)  # several copy chunks
    src.write_bytes(data)
    mtime_ns = 1_600_000_000_123_456_789
    os.utime(src, ns=(mtime_ns, mtime_ns))
    dst = tmp_path / "archive" / "sub" / "a.jpg"
    calls = fail_once(monkeypatch, "rename", errno.EXDEV, lambda s, d: Path(s) == src)
    synced: list[bool] = []  # for each fsync: was it a regular file (the copy)?
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        synced.append(is_regular_fd(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    move_file(src, dst, file_id=12)
    assert calls == [(src, dst)]
    assert not src.exists()
    assert dst.read_bytes() == data
    assert dst.stat().st_mtime_ns == mtime_ns
    assert leftovers(dst.parent) == []
    assert True in synced, "the copy was not fsynced"
    assert False in synced, "the folder was not fsynced"


def test_move_file_failed_copy_leaves_no_temp_and_keeps_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "spool" / "5"
    src.parent.mkdir()
    src.write_bytes(b"original")
    dst = tmp_path / "archive" / "a.jpg"
    fail_once(monkeypatch, "rename", errno.EXDEV, lambda *args: True)
    synced = fail_once(monkeypatch, "fsync", errno.ENOSPC, is_regular_fd)
    with pytest.raises(OSError) as info:
        move_file(src, dst, file_id=5)
    assert info.value.errno == errno.ENOSPC
    assert synced, "the copy was not fsynced"
    assert src.read_bytes() == b"original"
    assert not dst.exists()
    assert leftovers(dst.parent) == []


def test_move_file_other_rename_errors_propagate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(b"x")
    fail_once(monkeypatch, "rename", errno.EACCES, lambda *args: True)
    with pytest.raises(PermissionError):
        move_file(src, tmp_path / "archive" / "a.jpg", file_id=1)
    assert src.read_bytes() == b"x"


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_move_file_whose_source_cannot_be_removed_leaves_no_copy(tmp_path: Path) -> None:
    """A share the daemon may read but not change (here a real read-only bind mount: a rename
    from it is cross-device, the copy works, the unlink fails with EROFS): the move fails
    whole, so the input stays where it was dropped and nothing is taken twice."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "a.jpg").write_bytes(b"original")
    subprocess.run(["mount", "--bind", str(share), str(share)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(share)], check=True)
        dst = tmp_path / "spool" / "7"
        with pytest.raises(OSError) as info:
            move_file(share / "a.jpg", dst, file_id=7)
        assert info.value.errno == errno.EROFS
        assert not dst.exists()
        assert leftovers(dst.parent) == []
        assert (share / "a.jpg").read_bytes() == b"original"
    finally:
        subprocess.run(["umount", str(share)], check=True)


# --- removing -------------------------------------------------------------------------------------


def test_remove_file_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    remove_file(path)
    assert not path.exists()
    remove_file(path)  # already gone counts as done
    assert not path.exists()


def test_remove_stray_temp_is_idempotent(tmp_path: Path) -> None:
    stray = tmp_path / temp_name(42)
    stray.write_bytes(b"half an output")
    other = tmp_path / temp_name(43)
    other.write_bytes(b"another file's temp")
    assert remove_stray_temp(tmp_path, 42) is True
    assert not stray.exists()
    assert remove_stray_temp(tmp_path, 42) is False
    assert other.exists()  # only this file's temp is removed
    assert remove_stray_temp(tmp_path / "missing-folder", 42) is False


# --- error notes ----------------------------------------------------------------------------------


def test_write_error_note_beside_the_original(tmp_path: Path) -> None:
    original = tmp_path / "failed" / "scan" / "a.jpg"
    note = write_error_note(original, "not an image (cannot identify)", "scan/a.jpg", file_id=8)
    assert note == error_note_path(original) == original.parent / "a.jpg.error.txt"
    text = note.read_text(encoding="utf-8")
    assert "not an image (cannot identify)" in text
    assert "scan/a.jpg" in text
    assert "a.jpg" in text
    assert leftovers(note.parent) == []


def test_write_error_note_with_odd_characters_is_readable_utf8(tmp_path: Path) -> None:
    odd_name = os.fsdecode(b"caf\xe9.jpg")  # not valid UTF-8 on disk
    original = tmp_path / odd_name
    reason = "décodage impossible: 画像 😿 \x00\t\udcff\ud800 end"
    note = write_error_note(original, reason, odd_name, file_id=2)
    assert os.fsencode(note.name) == b"caf\xe9.jpg.error.txt"
    raw = note.read_bytes()
    text = raw.decode("utf-8")  # strict: the whole note is valid UTF-8
    assert "décodage impossible: 画像 😿" in text
    assert "end" in text
    assert "caf" in text


def test_write_error_note_overwrites_an_older_note(tmp_path: Path) -> None:
    original = tmp_path / "a.jpg"
    write_error_note(original, "first reason", "a.jpg", file_id=1)
    write_error_note(original, "second reason", "a.jpg", file_id=1)
    text = error_note_path(original).read_text()
    assert "second reason" in text and "first reason" not in text


# --- naming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("sub/a.jpg", "sub/a.png"),
        ("noext", "noext.png"),
        ("a.b.jpg", "a.b.png"),
        ("a.png", "a.png"),
        ("deep/er/x.JPEG", "deep/er/x.png"),
        ("dir.v2/noext", "dir.v2/noext.png"),
        ("my photo (1).jpg", "my photo (1).png"),
    ],
)
def test_with_suffix(rel: str, expected: str) -> None:
    assert with_suffix(rel, ".png") == expected


def test_numbered() -> None:
    assert numbered(Path("/out/a.png"), 1) == Path("/out/a.png")
    assert numbered(Path("/out/a.png"), 2) == Path("/out/a (2).png")
    assert numbered(Path("/out/sub/a.b.png"), 3) == Path("/out/sub/a.b (3).png")
    assert numbered(Path("/out/noext"), 2) == Path("/out/noext (2)")


def test_unique_path_returns_the_first_free_option() -> None:
    taken = {Path("/out/a.png"), Path("/out/a (2).png"), Path("/out/a (4).png")}
    asked: list[Path] = []

    def is_taken(path: Path) -> bool:
        asked.append(path)
        return path in taken

    assert unique_path(Path("/out/a.png"), is_taken) == Path("/out/a (3).png")
    assert asked == [Path("/out/a.png"), Path("/out/a (2).png"), Path("/out/a (3).png")]
    # Deterministic: the same history gives the same answer.
    assert unique_path(Path("/out/a.png"), is_taken) == Path("/out/a (3).png")
    assert unique_path(Path("/out/b.png"), is_taken) == Path("/out/b.png")


def test_unique_named_numbers_before_a_compound_suffix_and_fits_name_max() -> None:
    taken = {Path("/out/a.manifest.json"), Path("/out/a (2).manifest.json")}
    found = unique_named(Path("/out"), "a", ".manifest.json", taken.__contains__)
    assert found == Path("/out/a (3).manifest.json")  # still matches *.manifest.json
    long = "é" * 200  # 400 bytes: the stem is cut at a character, the suffix kept whole
    name = unique_named(Path("/out"), long, ".manifest.json", lambda _p: False).name
    assert name.endswith(".manifest.json") and len(os.fsencode(name)) <= 255
    assert name.startswith("é" * 120)


def test_unique_path_for_folders_keeps_the_whole_name() -> None:
    taken = {Path("/out/scan-0930"), Path("/out/scan.2024")}
    assert unique_path(Path("/out/scan-0930"), taken.__contains__, folder=True) == Path(
        "/out/scan-0930 (2)"
    )
    # A dot in a folder name is not a suffix.
    assert unique_path(Path("/out/scan.2024"), taken.__contains__, folder=True) == Path(
        "/out/scan.2024 (2)"
    )
    assert unique_path(Path("/out/new"), taken.__contains__, folder=True) == Path("/out/new")


def test_unique_path_against_the_file_system(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"someone's output")
    (tmp_path / "a (2).png").mkdir()
    choice = unique_path(tmp_path / "a.png", os.path.lexists)
    assert choice == tmp_path / "a (3).png"


def test_move_file_copy_does_not_follow_a_symlink_planted_at_the_temp_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    src = tmp_path / "spool" / "6"
    src.parent.mkdir()
    src.write_bytes(b"original")
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / temp_name(6)).symlink_to(victim)
    fail_once(monkeypatch, "rename", errno.EXDEV, lambda *args: True)
    with pytest.raises(OSError):
        move_file(src, archive / "a.jpg", file_id=6)
    assert victim.read_text() == "precious"
    assert src.read_bytes() == b"original"
    assert not (archive / "a.jpg").exists()


# --- hard links and taken folders ---


def test_read_input_refuses_a_hard_link(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not yours")
    link = tmp_path / "photo.jpg"
    os.link(secret, link)
    with pytest.raises(UnsafePath, match="hard link"):
        read_input(link, 1024)


def _litter(name: str) -> bool:
    from watchd.watcher import is_ignored

    return is_ignored(name, OS_LITTER)


def test_prune_removes_an_empty_taken_tree_with_os_litter(tmp_path: Path) -> None:
    root = tmp_path / "inbox" / "scan-0930"
    (root / "page" / "deep").mkdir(parents=True)
    (root / "@eaDir" / "p1.jpg").mkdir(parents=True)
    (root / "@eaDir" / "p1.jpg" / "SYNOPHOTO_THUMB_M.jpg").write_bytes(b"thumb")
    (root / ".DS_Store").write_bytes(b"mac")
    (root / "page" / "Thumbs.db").write_bytes(b"windows")
    (root / "page" / "._p1.jpg").write_bytes(b"appledouble")
    assert prune_taken_folder(root, _litter) is True
    assert list((tmp_path / "inbox").iterdir()) == []


def test_prune_keeps_a_folder_with_a_late_file_or_a_link(tmp_path: Path) -> None:
    root = tmp_path / "inbox" / "job"
    (root / "a" / "empty").mkdir(parents=True)
    (root / "late.jpg").write_bytes(b"arrived after the batch was taken")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".DS_Store").write_bytes(b"must survive")
    (root / "a" / "link").symlink_to(elsewhere)
    assert prune_taken_folder(root, _litter) is False
    assert (root / "late.jpg").exists()
    assert not (root / "a" / "empty").exists()
    assert (root / "a" / "link").is_symlink()
    assert (elsewhere / ".DS_Store").read_bytes() == b"must survive"  # never followed


# --- never wider (issue 12) -----------------------------------------------------------------------


def test_copy_file_keeps_the_sources_mode_and_refuses_a_swapped_file(tmp_path: Path) -> None:
    import stat as stat_

    from watchd.errors import UnsafePath
    from watchd.files import copy_file

    src = tmp_path / "private.jpg"
    src.write_bytes(b"secret")
    src.chmod(0o600)
    copy_file(src, tmp_path / "spool" / "1", 1)
    assert stat_.S_IMODE((tmp_path / "spool" / "1").stat().st_mode) == 0o600
    checked = (src.stat().st_dev, src.stat().st_ino)
    other = tmp_path / "other.jpg"
    other.write_bytes(b"another file, swapped in at the same name")
    os.replace(other, src)
    with pytest.raises(UnsafePath, match="replaced"):
        copy_file(src, tmp_path / "spool" / "2", 2, expect=checked)
    assert not (tmp_path / "spool" / "2").exists()
    assert leftovers(tmp_path / "spool") == []


def test_atomic_write_creates_with_the_mode_asked_for(tmp_path: Path) -> None:
    import stat as stat_

    atomic_write(tmp_path / "out.png", b"png", 3, mode=0o640)
    assert stat_.S_IMODE((tmp_path / "out.png").stat().st_mode) == 0o640


def test_permanent_and_transient_write_errors() -> None:
    import errno

    from watchd.files import is_permanent

    for code in (errno.ENAMETOOLONG, errno.EINVAL, errno.ENOTDIR, errno.EISDIR, errno.EILSEQ):
        assert is_permanent(OSError(code, os.strerror(code)))
    for code in (errno.ENOSPC, errno.EROFS, errno.EIO, errno.EACCES, errno.EDQUOT):
        assert not is_permanent(OSError(code, os.strerror(code)))


def test_a_folder_name_over_name_max_is_shortened(tmp_path: Path) -> None:
    long = "é" * 200  # 400 bytes
    first = unique_path(tmp_path / long, lambda _p: False, folder=True)
    assert len(os.fsencode(first.name)) <= 255 and long.startswith(first.name)
    second = unique_path(tmp_path / long, lambda p: p == first, folder=True)
    assert len(os.fsencode(second.name)) <= 255 and second.name.endswith(" (2)")
