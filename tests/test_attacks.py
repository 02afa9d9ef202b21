"""Hostile drops and socket users (issue 12): each costs at most its own job, never the daemon,
never exposes a file, never re-does finished work, and always leaves a readable reason.

Every scenario runs the real daemon (subprocess) with the real model on real files, except
where a crash is needed at one exact instant: there the real intake and ledger are driven
step by step (``test_recovery_removes_a_folder_emptied_by_a_crash``).
"""

from __future__ import annotations

import os
import pwd
import socket
import sqlite3
import stat
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import DaemonProcess, drop, is_output, wait_for
from tests.test_intake_faults import files_by_state, job_json, ledger_rows, small_photo
from watchd.control_client import ControlClient
from watchd.errors import ProtocolError
from watchd.files import error_note_path
from watchd.ledger import Ledger, NewFile, NewJob
from watchd.options import JobOptions

pytestmark = pytest.mark.e2e

PEER_USER = "watchd-peer"
PEER_GROUP = "watchd-peer-team"


def client(root: Path) -> ControlClient:
    return ControlClient(root / "state" / "control.sock", timeout=60)


def note_of(path: Path) -> str:
    return error_note_path(path).read_text()


def outputs(root: Path) -> list[str]:
    base = root / "outbox"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if is_output(p))


def place(folder: Path, inbox: Path) -> None:
    """Drop a folder whole, as a share client's rename does."""
    os.rename(folder, inbox / folder.name)


def staged_folder(root: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = root / "staging" / name
    folder.mkdir(parents=True)
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


# --- 1. a sidecar that breaks the TOML parser -----------------------------------------------------


@pytest.mark.parametrize(
    "sidecar",
    [
        b"x = " + b"{a = " * 3000 + b"1" + b"}" * 3000 + b"\n",
        b"x = " + b"[" * 3000 + b"1" + b"]" * 3000 + b"\n",
    ],
    ids=["inline-tables", "arrays"],
)
def test_a_deeply_nested_sidecar_costs_its_job_not_the_daemon(
    daemon_factory: Callable[..., DaemonProcess], sidecar: bytes
) -> None:
    assert len(sidecar) < 64 * 1024  # under the sidecar size limit
    daemon = daemon_factory().start()
    root = daemon.root
    place(
        staged_folder(root, "deep", {"a.jpg": small_photo(), "watchd.toml": sidecar}),
        root / "inbox",
    )
    wait_for(
        lambda: daemon.count("job.done") == 1 or daemon.proc.poll() is not None, what="job end"
    )
    assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
    assert "deep/watchd.toml: not valid TOML" in note_of(root / "failed" / "deep" / "a.jpg")
    assert (root / "failed" / "deep" / "a.jpg").read_bytes() == small_photo()
    assert (root / "failed" / "deep" / "watchd.toml").exists()
    assert not (root / "inbox" / "deep").exists()
    drop(small_photo(), root / "inbox", "after.jpg")  # and it carries on
    wait_for(lambda: outputs(root) == ["after.png"], what="the next file processed")
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log_text()


# --- 2. submit only what the connecting user may read; never widen permissions --------------------


@pytest.fixture(scope="module")
def peer_user() -> pwd.struct_passwd:
    """A real unprivileged user: the daemon is root, the peer on its socket is not."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create an unprivileged peer user (CI runs as root)")
    try:
        return pwd.getpwnam(PEER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PEER_USER],
            check=True,
        )
        return pwd.getpwnam(PEER_USER)


@pytest.fixture
def open_site() -> Iterator[Path]:
    """A folder every user can reach (tmp_path sits under a root-only folder)."""
    site = Path(tempfile.mkdtemp(prefix="watchd-peer-"))
    site.chmod(0o755)
    try:
        yield site
    finally:
        subprocess.run(["rm", "-rf", str(site)], check=False)


def submit_as(
    user: pwd.struct_passwd, sock: Path, args: dict[str, Any], groups: tuple[int, ...] = ()
) -> dict[str, Any]:
    """One ``submit`` over the real socket from a process running as ``user``."""
    import json

    script = (
        "import json, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(sys.argv[1])\n"
        "s.sendall(sys.argv[2].encode() + b'\\n')\n"
        "data = b''\n"
        "while not data.endswith(b'\\n'):\n"
        "    chunk = s.recv(65536)\n"
        "    if not chunk: break\n"
        "    data += chunk\n"
        "print(data.decode())\n"
    )
    request = json.dumps({"version": 1, "command": "submit", "args": args})
    run = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", script, str(sock), request],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=list(groups),
        cwd="/",  # the checkout may be under a folder the peer cannot enter
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    answer: dict[str, Any] = json.loads(run.stdout)
    return answer


@pytest.fixture(scope="module")
def team_gid(peer_user: pwd.struct_passwd) -> int:
    """A real group the peer user is not a member of (it is given to its process only)."""
    import grp

    try:
        return grp.getgrnam(PEER_GROUP).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", PEER_GROUP], check=True)
        return grp.getgrnam(PEER_GROUP).gr_gid


def test_submit_takes_only_what_the_peer_may_read_and_never_widens_modes(
    daemon_factory: Callable[..., DaemonProcess],
    peer_user: pwd.struct_passwd,
    team_gid: int,
    open_site: Path,
) -> None:
    sock = open_site / "control.sock"
    daemon = daemon_factory(daemon__socket=str(sock), daemon__socket_mode="0666").start()
    root = daemon.root
    # root's private files: the peer may not read them, so it may not submit them
    private = open_site / "shadow"
    private.write_bytes(b"root:$6$secret:19000:0:99999:7:::\n")
    private.chmod(0o640)
    closed = open_site / "closed"
    closed.mkdir(mode=0o700)
    (closed / "open.jpg").write_bytes(small_photo())
    (closed / "open.jpg").chmod(0o644)  # readable itself, but inside a folder the peer cannot enter
    secret_dir = open_site / "album"
    secret_dir.mkdir(mode=0o755)
    (secret_dir / "mine.jpg").write_bytes(small_photo())
    (secret_dir / "private.jpg").write_bytes(small_photo())
    (secret_dir / "private.jpg").chmod(0o600)
    for path, why in (
        (private, "shadow"),
        (closed / "open.jpg", "open.jpg"),
        (secret_dir, "private.jpg"),
    ):
        answer = submit_as(peer_user, sock, {"paths": [str(path)]})
        assert answer["ok"] is False, answer
        assert answer["error"]["code"] == "bad_request"
        assert why in answer["error"]["message"] and "not readable" in answer["error"]["message"]
    # the peer's own private image: taken, and nothing made of it is wider than it was
    own = open_site / "own.jpg"
    own.write_bytes(small_photo())
    os.chown(own, peer_user.pw_uid, peer_user.pw_gid)
    own.chmod(0o600)
    answer = submit_as(peer_user, sock, {"paths": [str(own)]})
    assert answer["ok"] is True, answer
    # readable through a supplementary group only: taken when the peer is in it
    # (SO_PEERGROUPS), refused when it is not
    team = open_site / "team.jpg"
    team.write_bytes(b"not an image, but the team's")
    os.chown(team, 0, team_gid)
    team.chmod(0o640)
    refused = submit_as(peer_user, sock, {"paths": [str(team)]})
    assert refused["ok"] is False and "not readable" in refused["error"]["message"]
    taken = submit_as(peer_user, sock, {"paths": [str(team)]}, groups=(team_gid,))
    assert taken["ok"] is True, taken
    # root's private non-image, submitted by root (root may read it): fails, still private
    ControlClient(sock, timeout=60).call("submit", paths=[str(private)])
    wait_for(lambda: daemon.count("job.done") == 3, what="the three submitted jobs ended")
    for made in (root / "outbox" / "own.png", root / "archive" / "own.jpg"):
        assert stat.S_IMODE(made.stat().st_mode) & 0o077 == 0, made
        assert made.stat().st_uid == peer_user.pw_uid, made  # still theirs to read
    assert stat.S_IMODE((root / "failed" / "shadow").stat().st_mode) & 0o077 == 0o040
    assert stat.S_IMODE((root / "failed" / "shadow").stat().st_mode) & 0o007 == 0
    assert not (root / "failed" / "open.jpg").exists()
    assert stat.S_IMODE((root / "failed" / "team.jpg").stat().st_mode) == 0o640
    assert (root / "failed" / "team.jpg").stat().st_gid == team_gid
    assert files_by_state(root) == {"done": 1, "failed": 2}


def test_move_into_the_inbox_keeps_a_private_files_mode(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    private = root / "staging" / "private.jpg"
    private.parent.mkdir()
    private.write_bytes(small_photo())
    private.chmod(0o600)
    bad = root / "staging" / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    bad.chmod(0o640)
    os.rename(private, root / "inbox" / "private.jpg")
    os.rename(bad, root / "inbox" / "bad.jpg")
    wait_for(
        lambda: daemon.count("job.done") >= 1 and not list((root / "inbox").iterdir()), what="done"
    )
    wait_for(lambda: files_by_state(root) == {"done": 1, "failed": 1}, what="both ended")
    assert stat.S_IMODE((root / "outbox" / "private.png").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "archive" / "private.jpg").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "failed" / "bad.jpg").stat().st_mode) == 0o640


# --- 3 and 5. a ledger file that is not a healthy watchd ledger stops start-up, untouched ---------


def start_refused(daemon: DaemonProcess) -> str:
    daemon.start(wait_ready=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=120) == 2, daemon.log_text()[-3000:]
    text = daemon.log_text()
    assert "Traceback" not in text
    [failed] = daemon.events("daemon.failed")
    return str(failed["error"])


def test_an_emptied_ledger_is_refused_not_taken_as_new(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = daemon_factory(watch__after="keep").start()
    root = daemon.root
    drop(small_photo(), root / "inbox", "k0.jpg")
    wait_for(lambda: outputs(root) == ["k0.png"], what="first output")
    wait_for(lambda: daemon.count("job.done") == 1, what="job done")
    assert daemon.stop() == 0
    ledger = root / "state" / "ledger.sqlite3"
    os.truncate(ledger, 0)
    for extra in ("-wal", "-shm"):
        Path(str(ledger) + extra).unlink(missing_ok=True)
    error = start_refused(daemon)
    assert str(ledger) in error and "empty" in error
    assert ledger.stat().st_size == 0  # not re-initialised
    assert outputs(root) == ["k0.png"]  # and the kept input was not processed again


@pytest.mark.parametrize("kind", ["text", "other-sqlite"])
def test_a_foreign_ledger_file_is_refused_and_left_as_it_is(
    daemon_factory: Callable[..., DaemonProcess], kind: str
) -> None:
    daemon = daemon_factory()
    ledger = daemon.root / "state" / "ledger.sqlite3"
    ledger.parent.mkdir()
    if kind == "text":
        ledger.write_text("this is somebody's notes file\n")
    else:
        with sqlite3.connect(ledger) as db:
            db.execute("CREATE TABLE recipes (name TEXT)")
    before = ledger.read_bytes()
    error = start_refused(daemon)
    assert "not a watchd ledger" in error and str(ledger) in error
    assert ledger.read_bytes() == before


def test_a_ledger_with_garbage_in_the_middle_stops_start_up_cleanly(
    daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = daemon_factory()
    path = daemon.root / "state" / "ledger.sqlite3"
    path.parent.mkdir()
    ledger = Ledger.open(path, clock=lambda: 1000.0)
    for job in range(300):
        files = [
            NewFile(
                rel=f"f{i}.jpg",
                source=tmp_path / f"in/{job}/f{i}.jpg",
                output=tmp_path / f"out/{job}/f{i}.png",
                archive=tmp_path / f"arc/{job}/f{i}.jpg",
                failed=tmp_path / f"fail/{job}/f{i}.jpg",
                size=100,
                mtime_ns=1,
            )
            for i in range(10)
        ]
        ledger.create_job(
            NewJob("photos", f"job{job}", "folder", JobOptions("u2netp", "archive", 1 << 30), files)
        )
    ledger.close()
    size = path.stat().st_size
    assert size > 64 * 1024
    with open(path, "r+b") as handle:
        handle.seek((size // 2) // 4096 * 4096)
        handle.write(os.urandom(4096))
    error = start_refused(daemon)
    assert "cannot use the ledger" in error and str(path) in error


# --- 4. an over-long job name; permanent write errors ---------------------------------------------


def test_an_over_long_job_name_is_refused_at_the_socket(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    folder = staged_folder(root, "src", {"a.jpg": small_photo()})
    with pytest.raises(ProtocolError) as refused:
        client(root).call("submit", paths=[str(folder)], name="n" * 300)
    assert refused.value.code == "bad_request" and "255 bytes" in refused.value.message
    # 255 bytes is the longest a name may be; the job's folders fit (shortened where needed)
    answer = client(root).call("submit", paths=[str(folder)], name="é" * 127)
    wait_for(lambda: daemon.count("job.done") == 1, what="the long-named job done")
    assert job_json(daemon, answer["id"])["state"] == "done"
    assert outputs(root) == ["é" * 127 + "/a.png"]


def test_a_permanent_write_error_fails_the_file_instead_of_retrying(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    assert client(root).call("pause")["paused"] is True
    drop(small_photo(), root / "inbox", "a.jpg")
    wait_for(lambda: files_by_state(root) == {"queued": 1}, what="accepted while paused")
    (root / "outbox" / "a.png").mkdir()  # someone's folder at the output's name: EISDIR
    client(root).call("resume")
    wait_for(lambda: files_by_state(root) == {"failed": 1}, what="failed, not retried")
    assert daemon.count("file.write_failed") == 0
    note = note_of(root / "failed" / "a.jpg")
    assert "cannot write the output" in note and "Is a directory" in note
    [(attempts,)] = ledger_rows(root, "SELECT attempts FROM files")
    assert attempts == 1


# --- 6. a sidecar naming a model that cannot exist or is not installed ----------------------------


@pytest.mark.parametrize("model", ["/etc/passwd", "../../x", "u2net_cloth_seg_not_installed"])
def test_a_sidecar_with_an_impossible_or_missing_model_fails_at_intake(
    daemon_factory: Callable[..., DaemonProcess], model: str
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    sidecar = f'model = "{model}"\n'.encode()
    place(
        staged_folder(root, "m", {"a.jpg": small_photo(), "watchd.toml": sidecar}), root / "inbox"
    )
    wait_for(lambda: files_by_state(root) == {"failed": 1}, what="failed at intake")
    note = note_of(root / "failed" / "m" / "a.jpg")
    assert "m/watchd.toml: model:" in note and model in note
    [(attempts,)] = ledger_rows(root, "SELECT attempts FROM files")
    assert attempts == 0  # never sent to a worker
    assert daemon.count("file.retry") == 0


# --- 7. links, pipes, sockets and hard links get a note; emptied folders go -----------------------


def test_odd_entries_are_moved_aside_with_a_note_never_followed_or_read(
    daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = daemon_factory(daemon__rescan_interval=1).start()
    root = daemon.root
    inbox = root / "inbox"
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(small_photo())
    (inbox / "link.jpg").symlink_to("/etc/shadow")
    os.mkfifo(inbox / "pipe.jpg")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(inbox / "sock.jpg"))
    os.link(outside, inbox / "hard.jpg")
    album = staged_folder(root, "album", {"real.jpg": small_photo()})
    (album / "inner.jpg").symlink_to(outside)
    place(album, inbox)
    try:
        wait_for(lambda: not list(inbox.iterdir()), what="the inbox emptied")
    finally:
        listener.close()
    failed = root / "failed"
    assert os.readlink(failed / "link.jpg") == "/etc/shadow"
    assert stat.S_ISFIFO((failed / "pipe.jpg").lstat().st_mode)
    assert stat.S_ISSOCK((failed / "sock.jpg").lstat().st_mode)
    assert os.readlink(failed / "album" / "inner.jpg") == str(outside)
    assert (failed / "hard.jpg").stat().st_ino == outside.stat().st_ino  # the entry, not a copy
    for name, words in (
        ("link.jpg", "symbolic link"),
        ("pipe.jpg", "pipe"),
        ("sock.jpg", "socket"),
        ("hard.jpg", "hard link"),
        ("album/inner.jpg", "symbolic link"),
    ):
        note = note_of(failed / name)
        assert words in note and "not processed" in note, (name, note)
    wait_for(lambda: outputs(root) == ["album/real.png"], what="the real file processed")
    assert len(daemon.events("intake.set_aside")) == 5


def test_recovery_removes_a_folder_emptied_by_a_crash(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """The state a kill -9 leaves between moving a folder's files and removing the folder:
    made with the real ledger and real files, then the real daemon starts on it."""
    daemon = daemon_factory()
    root = daemon.root
    (root / "state" / "spool").mkdir(parents=True)
    folder = root / "inbox" / "album"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.jpg").write_bytes(small_photo())
    ledger = Ledger.open(root / "state" / "ledger.sqlite3")
    options = JobOptions(model="u2netp", after="archive", max_file_bytes=1 << 30)
    new = NewFile(
        rel="sub/a.jpg",
        source=folder / "sub" / "a.jpg",
        output=root / "outbox" / "album" / "sub" / "a.png",
        archive=root / "archive" / "album" / "sub" / "a.jpg",
        failed=root / "failed" / "album" / "sub" / "a.jpg",
        size=1,
        mtime_ns=1,
    )
    _job, [file_id] = ledger.create_job(NewJob("photos", "album", "folder", options, [new]))
    os.rename(folder / "sub" / "a.jpg", root / "state" / "spool" / str(file_id))
    ledger.mark_queued([file_id])
    ledger.close()  # killed here: the folder is empty but still in the inbox
    daemon.start()
    wait_for(lambda: outputs(root) == ["album/sub/a.png"], what="the output")
    wait_for(lambda: not folder.exists(), what="the emptied folder removed")
    assert daemon.events("recovery.folder_removed")


# --- 8. an image that cannot fit in memory -------------------------------------------------------


def png_bytes(width: int, height: int) -> bytes:
    raw = b"".join(b"\0" + bytes(width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def test_an_image_too_large_for_memory_fails_once_with_a_reason_in_words(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    drop(png_bytes(80_000_000, 1), root / "inbox", "line.png")
    wait_for(lambda: files_by_state(root) == {"failed": 1}, timeout=300, what="failed")
    [(attempts, error)] = ledger_rows(root, "SELECT attempts, error FROM files")
    assert attempts == 1
    assert "80000000 x 1" in error and "memory" in error
    assert "80000000 x 1" in note_of(root / "failed" / "line.png")
    assert daemon.count("file.retry") == 0
