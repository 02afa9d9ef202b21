"""The manifest and the order of completion: manifest, hooks, reported.

A real ledger file in ``tmp_path`` and real files in a real outbox; the hooks are
a recording sink here (tests/test_hooks.py runs the real ones).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.support import Clock, DaemonProcess, Received, WebhookReceiver, is_output, wait_for
from watchd.completion import (
    MANIFEST_PAGE,
    MANIFEST_VERSION,
    Completion,
    HookCall,
    build_manifest,
    encode_manifest,
    manifest_temp_name,
)
from watchd.config import HooksConfig
from watchd.files import write_via_temp
from watchd.ledger import Ledger, NewFile, NewJob
from watchd.options import JobOptions

OPTIONS = JobOptions(model="u2netp", after="archive", max_file_bytes=1000)
T0 = 1_700_000_000.0


class RecordingHooks:
    """Records what the coordinator hands over; the test calls ``done`` when it likes."""

    def __init__(self, per_job: int = 2, full: tuple[str, ...] = ()) -> None:
        self.per_job = per_job  # (not used: a call per hook, accepted unless its queue is full)
        self.full = set(full)  # hooks whose queue is full: refused (deferred)
        self.calls: list[tuple[Mapping[str, Any], HooksConfig, Callable[[], None]]] = []
        self.deliveries: list[tuple[int, str, str | None]] = []

    def run(self, call: HookCall) -> int:
        facts, hooks, done, delivery = call.facts, call.hooks, call.done, call.delivery
        hook = "command" if hooks.on_complete else "webhook"
        assert not (hooks.on_complete and hooks.webhook_url), "one hook per call"
        if hook in self.full:
            return 0
        self.calls.append((facts, hooks, done))
        self.deliveries.append((int(facts["job"]), hook, delivery))
        return 1


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    (tmp_path / "state").mkdir()
    opened = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    yield opened
    opened.close()


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    path = tmp_path / "outbox"
    path.mkdir()
    return path


def record_job(
    ledger: Ledger, outbox: Path, rels: list[str], *, kind: str = "folder", name: str = "shoot"
) -> tuple[int, list[int]]:
    root = outbox / name if kind == "folder" else outbox
    stem = name if kind == "folder" else Path(rels[0]).stem
    files = [
        NewFile(
            rel=rel,
            source=Path("/in") / rel,
            output=root / (rel.rsplit(".", 1)[0] + ".png"),
            archive=Path("/archive") / rel,
            failed=Path("/failed") / rel,
            size=100 + i,
            mtime_ns=1,
        )
        for i, rel in enumerate(rels)
    ]
    job = NewJob(
        watch="photos",
        name=name,
        kind=kind,
        options=OPTIONS,
        files=files,
        manifest=outbox / f"{stem}.manifest.json",
    )
    job_id, ids = ledger.create_job(job)
    ledger.mark_queued(ids)
    assert len(ledger.claim(len(ids))) == len(ids)
    return job_id, ids


def finish(ledger: Ledger, ids: list[int], failed: Mapping[int, str] = {}) -> None:
    for file_id in ids:
        if file_id in failed:
            ledger.mark_failing(file_id, failed[file_id])
            ledger.mark_failed(file_id)
        else:
            ledger.mark_written(file_id, 5000 + file_id)
            ledger.mark_done(file_id)


class Settings:
    """One outbox and one set of hooks for every watch (None: the watch was removed)."""

    def __init__(self, outbox: Path | None, hooks: HooksConfig | None = None) -> None:
        self._answer = None if outbox is None else (outbox, hooks or HooksConfig())

    def hooks_of(self, _watch: str) -> tuple[Path, HooksConfig] | None:
        return self._answer


def coordinator(
    ledger: Ledger, outbox: Path, sink: RecordingHooks, hooks: HooksConfig | None = None
) -> tuple[Completion, list[str]]:
    wakes: list[str] = []
    completion = Completion(
        ledger, sink, Settings(outbox, hooks or HooksConfig()), lambda: wakes.append("w")
    )
    return completion, wakes


def read_manifest(path: Path) -> dict[str, Any]:
    """Strict: the file must be valid UTF-8 JSON (no lone surrogates, no NaN)."""
    return json.loads(path.read_bytes().decode("utf-8", "strict"))  # type: ignore[no-any-return]


# --- content --------------------------------------------------------------------------------------


def test_folder_job_manifest_lists_every_input_with_its_outputs_or_error(
    ledger: Ledger, outbox: Path, clock: Clock
) -> None:
    job_id, ids = record_job(ledger, outbox, ["sub/a.jpg", "b.webp", "c.jpg"])
    clock.now = T0 + 12.5
    finish(ledger, ids, failed={ids[2]: "cannot identify image file (not an image)"})
    sink = RecordingHooks(per_job=0)
    completion, _ = coordinator(ledger, outbox, sink)

    completion.job_finished(job_id)

    manifest = read_manifest(outbox / "shoot.manifest.json")
    assert manifest["version"] == MANIFEST_VERSION
    assert manifest["job"] == job_id
    assert (manifest["watch"], manifest["name"], manifest["kind"]) == ("photos", "shoot", "folder")
    assert manifest["state"] == "failed"
    assert manifest["cancelled"] is False
    assert manifest["created"] == {"iso": "2023-11-14T22:13:20.000Z", "epoch": T0}
    assert manifest["finished"] == {"iso": "2023-11-14T22:13:32.500Z", "epoch": T0 + 12.5}
    assert manifest["files"] == {"total": 3, "done": 2, "failed": 1}
    assert manifest["outbox"] == str(outbox)
    assert manifest["manifest"] == str(outbox / "shoot.manifest.json")
    assert (manifest["model"], manifest["format"]) == ("u2netp", "png")
    assert manifest["inputs"] == [
        {
            "id": ids[0],
            "input": "sub/a.jpg",
            "state": "done",
            "bytes_in": 100,
            "outputs": ["shoot/sub/a.png"],
            "bytes_out": 5000 + ids[0],
        },
        {
            "id": ids[1],
            "input": "b.webp",
            "state": "done",
            "bytes_in": 101,
            "outputs": ["shoot/b.png"],
            "bytes_out": 5000 + ids[1],
        },
        {
            "id": ids[2],
            "input": "c.jpg",
            "state": "failed",
            "bytes_in": 102,
            "error": "cannot identify image file (not an image)",
        },
    ]
    # every output path resolves from the manifest's own folder
    assert (outbox / manifest["inputs"][0]["outputs"][0]).parent == outbox / "shoot" / "sub"
    assert ledger.unreported_jobs() == []  # no hooks configured: reported at once


def test_loose_job_manifest_is_named_after_its_first_input(ledger: Ledger, outbox: Path) -> None:
    job_id, ids = record_job(ledger, outbox, ["IMG_0001.jpg", "IMG_0002.jpg"], kind="loose")
    finish(ledger, ids)
    completion, _ = coordinator(ledger, outbox, RecordingHooks(per_job=0))

    completion.job_finished(job_id)

    manifest = read_manifest(outbox / "IMG_0001.manifest.json")
    assert (manifest["kind"], manifest["state"]) == ("loose", "done")
    assert [i["outputs"] for i in manifest["inputs"]] == [["IMG_0001.png"], ["IMG_0002.png"]]
    assert all("error" not in i for i in manifest["inputs"])


def test_a_multi_page_input_lists_one_output_per_page(ledger: Ledger, outbox: Path) -> None:
    job_id, ids = record_job(ledger, outbox, ["scan.tif", "photo.jpg"])
    ledger.mark_written(ids[0], 9000, pages=3)
    ledger.mark_done(ids[0])
    finish(ledger, ids[1:])
    completion, _ = coordinator(ledger, outbox, RecordingHooks(per_job=0))

    completion.job_finished(job_id)

    scan, photo = read_manifest(outbox / "shoot.manifest.json")["inputs"]
    assert scan["outputs"] == ["shoot/scan-p1.png", "shoot/scan-p2.png", "shoot/scan-p3.png"]
    assert scan["bytes_out"] == 9000
    assert photo["outputs"] == ["shoot/photo.png"]


def test_non_utf8_names_become_valid_json_with_their_exact_bytes_beside(
    ledger: Ledger, outbox: Path
) -> None:
    latin1 = os.fsdecode(b"caf\xe9.jpg")  # a Windows client's name on a share
    job_id, ids = record_job(ledger, outbox, [latin1, "ok.jpg"], name=os.fsdecode(b"f\xfcr"))
    finish(ledger, ids, failed={ids[1]: "cannot read " + os.fsdecode(b"/in/x\xff")})
    completion, _ = coordinator(ledger, outbox, RecordingHooks(per_job=0))

    completion.job_finished(job_id)

    manifest = read_manifest(Path(os.fsdecode(os.fsencode(outbox) + b"/f\xfcr.manifest.json")))
    first, second = manifest["inputs"]
    assert first["input"] == "caf\ufffd.jpg"
    assert base64.b64decode(first["input_b64"]) == b"caf\xe9.jpg"
    assert first["outputs"] == ["f\ufffdr/caf\ufffd.png"]
    assert [base64.b64decode(o) for o in first["outputs_b64"]] == [b"f\xfcr/caf\xe9.png"]
    assert "input_b64" not in second
    assert second["error"] == "cannot read /in/x\ufffd"
    assert manifest["name"] == "f\ufffdr"


# --- atomic, and last -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_manifest_written_via_its_temp_never_shows_a_partial_file(tmp_path: Path) -> None:
    """A reader polling the manifest sees nothing or a whole one, never a prefix."""
    target = tmp_path / "job.manifest.json"
    big = {
        "inputs": [{"input": f"photo-{i}.jpg", "outputs": [f"photo-{i}.png"]} for i in range(5000)]
    }
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                seen.append("absent")
                continue
            json.loads(data)  # raises on a partial file
            seen.append("whole")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(30):
            big["version"] = version  # type: ignore[assignment]
            write_via_temp(target, encode_manifest(big), manifest_temp_name(7))
    finally:
        stop.set()
        thread.join()
    assert "whole" in seen
    assert json.loads(target.read_bytes())["version"] == 29
    assert os.listdir(tmp_path) == ["job.manifest.json"]  # no temp left


def test_temp_name_is_hidden_and_not_a_manifest_nor_a_file_temp() -> None:
    name = manifest_temp_name(7)
    assert name.startswith(".")
    assert not name.endswith(".manifest.json")
    assert name != ".watchd-7.tmp"  # files.temp_name(7): file 7's output in the same folder


def test_a_link_planted_at_the_temp_name_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "outbox").mkdir()
    os.symlink(victim, tmp_path / "outbox" / manifest_temp_name(3))

    write_via_temp(tmp_path / "outbox" / "x.manifest.json", b"{}\n", manifest_temp_name(3))

    assert victim.read_text() == "precious"
    assert (tmp_path / "outbox" / "x.manifest.json").read_bytes() == b"{}\n"
    assert sorted(os.listdir(tmp_path / "outbox")) == ["x.manifest.json"]


# --- the order: manifest, hooks, reported ---------------------------------------------------------


def test_reported_only_after_every_hook_called_back(ledger: Ledger, outbox: Path) -> None:
    job_id, ids = record_job(ledger, outbox, ["a.jpg"])
    finish(ledger, ids)
    sink = RecordingHooks(per_job=2)
    hooks = HooksConfig(on_complete=("/bin/true",), webhook_url="http://127.0.0.1:9/")
    completion, wakes = coordinator(ledger, outbox, sink, hooks)

    completion.job_finished(job_id)

    assert (outbox / "shoot.manifest.json").is_file()  # written before the hooks are handed over
    [(facts, command, done), (_, webhook, done_webhook)] = sink.calls  # one call per hook
    assert facts["job"] == job_id and facts["manifest"] == str(outbox / "shoot.manifest.json")
    assert command == replace(hooks, webhook_url=None)
    assert webhook == replace(hooks, on_complete=None)
    assert completion.collect() == 0
    assert ledger.unreported_jobs() == [job_id]
    done()  # the command finished (from its thread)
    assert wakes and completion.collect() == 0
    assert ledger.unreported_jobs() == [job_id]
    completion.report_unreported()  # the periodic pass does not start it twice
    assert len(sink.calls) == 2
    done_webhook()  # the webhook was delivered or given up
    assert completion.collect() == 1
    assert ledger.unreported_jobs() == []


def test_unreported_job_after_a_crash_gets_its_manifest_and_hooks(
    ledger: Ledger, outbox: Path
) -> None:
    """The job ended in the ledger, then the daemon died before the manifest."""
    job_id, ids = record_job(ledger, outbox, ["a.jpg", "b.jpg"])
    finish(ledger, ids)
    assert not (outbox / "shoot.manifest.json").exists()
    (outbox / manifest_temp_name(job_id)).write_bytes(b'{"inputs": [')  # the crash's leftover
    sink = RecordingHooks(per_job=1)
    completion, _ = coordinator(ledger, outbox, sink, HooksConfig(on_complete=("/bin/true",)))

    assert completion.report_unreported() == 1

    assert read_manifest(outbox / "shoot.manifest.json")["files"]["done"] == 2
    assert not (outbox / manifest_temp_name(job_id)).exists()
    sink.calls[0][2]()
    completion.collect()
    assert ledger.unreported_jobs() == []


def test_a_manifest_that_cannot_be_written_stays_unreported_and_is_retried(
    ledger: Ledger, outbox: Path
) -> None:
    job_id, ids = record_job(ledger, outbox, ["a.jpg"])
    finish(ledger, ids)
    (outbox / "shoot.manifest.json").mkdir()  # something is in the way
    sink = RecordingHooks(per_job=1)
    completion, _ = coordinator(ledger, outbox, sink, HooksConfig(on_complete=("/bin/true",)))

    completion.job_finished(job_id)

    assert sink.calls == []  # no hooks before the manifest
    assert completion.counters() == {"written": 0, "failed": 1}
    assert ledger.unreported_jobs() == [job_id]
    assert not [p for p in os.listdir(outbox) if p.startswith(".")]
    (outbox / "shoot.manifest.json").rmdir()
    completion.report_unreported()
    assert read_manifest(outbox / "shoot.manifest.json")["state"] == "done"
    assert completion.counters() == {"written": 1, "failed": 1}
    assert len(sink.calls) == 1


def test_no_manifest_configured_still_runs_the_hooks(ledger: Ledger, outbox: Path) -> None:
    files = [NewFile("a.jpg", Path("/in/a.jpg"), outbox / "a.png", Path("/a"), Path("/f"), 1, 1)]
    job_id, ids = ledger.create_job(NewJob("photos", "a", "loose", OPTIONS, files, manifest=None))
    ledger.mark_queued(ids)
    ledger.claim(1)
    finish(ledger, ids)
    sink = RecordingHooks(per_job=1)
    hooks = HooksConfig(manifest=False, on_complete=("/bin/true",))
    completion, _ = coordinator(ledger, outbox, sink, hooks)

    completion.job_finished(job_id)

    assert os.listdir(outbox) == []
    assert sink.calls[0][0]["manifest"] is None


def test_a_watch_removed_by_reload_still_gets_its_manifest_but_no_hooks(
    ledger: Ledger, outbox: Path
) -> None:
    job_id, ids = record_job(ledger, outbox, ["a.jpg"])
    finish(ledger, ids)
    sink = RecordingHooks()
    completion = Completion(ledger, sink, Settings(None), lambda: None)

    completion.job_finished(job_id)

    assert read_manifest(outbox / "shoot.manifest.json")["outbox"] == str(outbox)
    assert sink.calls == []
    assert ledger.unreported_jobs() == []


def test_a_job_that_ends_again_while_its_hooks_run_is_reported_again(
    ledger: Ledger, outbox: Path
) -> None:
    """A failed file retried (``watchd retry``) makes the job active; it ends a second time."""
    job_id, ids = record_job(ledger, outbox, ["a.jpg", "b.jpg"])
    finish(ledger, ids, failed={ids[1]: "broken"})
    sink = RecordingHooks(per_job=1)
    completion, _ = coordinator(ledger, outbox, sink, HooksConfig(on_complete=("/bin/true",)))
    completion.job_finished(job_id)
    assert read_manifest(outbox / "shoot.manifest.json")["state"] == "failed"

    ledger.requeue_failed(
        ids[1], Path("/in/b.jpg"), outbox / "shoot" / "b.png", Path("/a/b"), Path("/f/b")
    )
    ledger.mark_queued([ids[1]])
    ledger.claim(1)
    finish(ledger, [ids[1]])
    completion.job_finished(job_id)  # the dispatcher's callback, hooks of the first end still run
    assert len(sink.calls) == 1

    sink.calls[0][2]()
    completion.collect()
    assert read_manifest(outbox / "shoot.manifest.json")["state"] == "done"
    assert len(sink.calls) == 2
    sink.calls[1][2]()
    completion.collect()
    assert ledger.unreported_jobs() == []


# --- size -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_20000_file_job_manifest_costs_bounded_memory_and_time(
    ledger: Ledger, outbox: Path, tmp_path: Path
) -> None:
    """The manifest is written a page per pass of the loop (MANIFEST_PAGE entries), so no
    pass takes long; it appears only when complete, byte for byte what build_manifest
    gives; measured here (numbers in docs/performance.md)."""
    rels = [f"day-{i // 1000:02d}/IMG_{i:05d}.jpg" for i in range(20_000)]
    job_id, ids = record_job(ledger, outbox, rels)
    end_all_at_once(tmp_path / "state" / "ledger.sqlite3", job_id, failed_id=ids[5])
    sink = RecordingHooks()
    hooks = HooksConfig(webhook_url="http://127.0.0.1:9/")
    completion, _ = coordinator(ledger, outbox, sink, hooks)

    started = time.perf_counter()
    completion.job_finished(job_id)
    passes = [time.perf_counter() - started]
    while completion.busy:
        assert not (outbox / "shoot.manifest.json").exists()  # written last, whole
        assert sink.calls == []  # the hooks wait for it
        began = time.perf_counter()
        completion.step()
        passes.append(time.perf_counter() - began)
    seconds = sum(passes)
    assert len(passes) == 20_000 // MANIFEST_PAGE  # the first page came with job_finished
    assert len(sink.calls) == 1
    expected = encode_manifest(build_manifest(ledger.job_detail(job_id), outbox))
    assert (outbox / "shoot.manifest.json").read_bytes() == expected
    assert not [p for p in os.listdir(outbox) if p.startswith(".")]  # no temp left
    print(f"20k files: longest pass {max(passes) * 1000:.0f} ms, {len(passes)} passes")

    manifest = read_manifest(outbox / "shoot.manifest.json")
    assert len(manifest["inputs"]) == 20_000
    assert manifest["inputs"][5]["error"] == "not an image"
    size = (outbox / "shoot.manifest.json").stat().st_size
    tracemalloc.start()
    try:
        encode_manifest(build_manifest(ledger.job_detail(job_id), outbox))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"20k files: {seconds:.2f} s, peak {peak / 2**20:.1f} MiB, file {size / 2**20:.1f} MiB")
    assert peak < 150 * 2**20


def end_all_at_once(db_path: Path, job_id: int, failed_id: int) -> None:
    """20,000 transitions one by one are 40,000 fsyncs: end the job in one transaction."""
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute(
            "UPDATE files SET state = 'done', output_bytes = 5000, finished_at = ? "
            "WHERE job_id = ?",
            (T0 + 60, job_id),
        )
        db.execute(
            "UPDATE files SET state = 'failed', error = 'not an image' WHERE id = ?", (failed_id,)
        )
        db.execute(
            "UPDATE jobs SET state = 'failed', finished_at = ? WHERE id = ?", (T0 + 60, job_id)
        )


# --- end to end: the real daemon, real photos, the real model -------------------------------------

RECORDER = """\
import json, os, sys
manifest = os.environ["WATCHD_MANIFEST"]
seen = {k: v for k, v in os.environ.items() if k.startswith("WATCHD_")}
seen["argv"] = sys.argv[1:]
with open(manifest, "rb") as handle:  # written before the command runs
    listed = json.load(handle)
outbox = os.environ["WATCHD_OUTBOX"]
outputs = [out for entry in listed["inputs"] for out in entry.get("outputs", [])]
seen["outputs_exist"] = all(os.path.isfile(os.path.join(outbox, out)) for out in outputs)
with open(sys.argv[1], "a") as log:
    log.write(json.dumps(seen) + "\\n")
print("imported", listed["files"]["done"], "files")
"""


def recorder(tmp_path: Path) -> tuple[Path, Path]:
    program = tmp_path / "on-complete.py"
    program.write_text(f"#!{sys.executable}\n{RECORDER}")
    program.chmod(0o755)
    return program, tmp_path / "hook-runs.jsonl"


def runs(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def verified(request: Received, secret: str) -> bool:
    mac = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={mac}", request.headers["X-Watchd-Signature"])


def reported(root: Path) -> dict[int, int]:
    with contextlib.closing(sqlite3.connect(root / "state" / "ledger.sqlite3")) as db:
        return dict(db.execute("SELECT id, reported FROM jobs").fetchall())


@pytest.mark.e2e
def test_e2e_folder_job_gets_manifest_then_command_then_signed_webhook(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path], tmp_path: Path
) -> None:
    program, record = recorder(tmp_path)
    secret = "e2e secret"
    server = WebhookReceiver().start()
    try:
        daemon = daemon_factory(
            watch__on_complete=[str(program), str(record), "$(touch pwned); echo"],
            watch__webhook_url=server.url,
            watch__webhook_secret=secret,
            watch__on_complete_timeout=60,
            pool__workers=2,
        ).start()
        root = daemon.root
        staging = root / "staging" / "shoot"
        (staging / "sub").mkdir(parents=True)
        shutil.copyfile(photos["astronaut.jpg"], staging / "a.jpg")
        shutil.copyfile(photos["coffee.png"], staging / "sub" / "b.png")
        (staging / "broken.jpg").write_bytes(b"not a photo at all")
        os.rename(staging, root / "inbox" / "shoot")

        manifest_path = root / "outbox" / "shoot.manifest.json"
        wait_for(lambda: len(server.requests) == 1, what="the webhook")
        wait_for(lambda: runs(record), what="the command")
        wait_for(lambda: reported(root) == {1: 1}, what="the job reported")

        outputs = sorted(
            p.relative_to(root / "outbox").as_posix()
            for p in (root / "outbox").rglob("*")
            if is_output(p)
        )
        assert outputs == ["shoot/a.png", "shoot/sub/b.png"]
        manifest = read_manifest(manifest_path)
        assert (manifest["state"], manifest["files"]) == (
            "failed",
            {"total": 3, "done": 2, "failed": 1},
        )
        by_input = {i["input"]: i for i in manifest["inputs"]}
        assert by_input["a.jpg"]["outputs"] == ["shoot/a.png"]
        assert by_input["sub/b.png"]["outputs"] == ["shoot/sub/b.png"]
        assert by_input["broken.jpg"]["state"] == "failed"
        assert "image" in by_input["broken.jpg"]["error"]
        for entry in (by_input["a.jpg"], by_input["sub/b.png"]):
            assert (root / "outbox" / entry["outputs"][0]).stat().st_size == entry["bytes_out"]
        # the manifest came last: after every output and every original's disposal
        assert manifest_path.stat().st_mtime_ns >= max(
            p.stat().st_mtime_ns for p in (root / "outbox" / "shoot").rglob("*.png")
        )
        assert (root / "failed" / "shoot" / "broken.jpg.error.txt").is_file()

        [run] = runs(record)
        assert run["argv"] == [str(record), "$(touch pwned); echo"]
        assert not list(root.rglob("pwned")) and not list(tmp_path.rglob("pwned"))
        assert run["outputs_exist"] is True
        assert run["WATCHD_MANIFEST"] == str(manifest_path)
        assert (run["WATCHD_JOB_STATE"], run["WATCHD_FILES_DONE"]) == ("failed", "2")
        [done_event] = daemon.events("hook.command_done")
        assert done_event["output"] == "imported 2 files"

        [request] = server.requests
        assert verified(request, secret)
        body = request.json()
        assert body["job"] == 1 and body["manifest"] == str(manifest_path)
        assert body["files"] == manifest["files"]
        assert request.headers["X-Watchd-Event"] == "job.finished"

        assert daemon.stop() == 0
        stats = json.loads((root / "state" / "stats.json").read_text())
        assert stats["hooks"]["manifest"] == {"written": 1, "failed": 0}
        assert stats["hooks"]["command"]["ok"] == 1
        assert stats["hooks"]["webhook"]["delivered"] == 1
    finally:
        server.stop()


@pytest.mark.e2e
def hook_finished(root: Path, hook: str) -> bool:
    """Whether the ledger records that hook of job 1 as finished (it will not run again)."""
    with sqlite3.connect(root / "state" / "ledger.sqlite3") as db:
        row = db.execute(
            "SELECT finished_at FROM hook_deliveries WHERE job_id = 1 AND hook = ?", (hook,)
        ).fetchone()
    return row is not None and row[0] is not None


def test_e2e_kill9_before_the_webhook_is_delivered_delivers_it_after_restart(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path], tmp_path: Path
) -> None:
    """A receiver that answers 500: the job stays unreported; kill -9; the restarted daemon
    writes the manifest again and delivers to the healed receiver, with the same delivery
    id; the command, which had finished before the crash, does not run again."""
    program, record = recorder(tmp_path)
    server = WebhookReceiver(answer=lambda _request: 500).start()
    try:
        daemon = daemon_factory(
            watch__on_complete=[str(program), str(record)],
            watch__webhook_url=server.url,
            watch__webhook_secret="k",
        ).start()
        root = daemon.root
        shutil.copyfile(photos["cat.png"], root / "inbox" / "cat.png")
        wait_for(lambda: daemon.count("hook.webhook_retry") >= 1, what="a failed delivery")
        wait_for(lambda: runs(record), what="the command")
        wait_for(lambda: hook_finished(root, "command"), what="the command's end in the ledger")
        assert reported(root) == {1: 0}
        before = server.requests[0].headers["X-Watchd-Delivery"]
        daemon.kill()
        (root / "outbox" / "cat.manifest.json").unlink()  # as if the crash came before it

        server.answer = lambda _request: 200
        daemon.start()
        wait_for(lambda: reported(root) == {1: 1}, what="reported after the restart")
        manifest = read_manifest(root / "outbox" / "cat.manifest.json")
        assert manifest["inputs"][0]["outputs"] == ["cat.png"]
        assert len(runs(record)) == 1  # at least once per hook: it had finished, so not again
        last = server.requests[-1]  # answered 200
        assert verified(last, "k") and last.json()["job"] == 1
        assert last.headers["X-Watchd-Delivery"] == before  # receivers de-duplicate on it
        assert last.json()["delivery"] == before
        assert daemon.events("recovery.done")[-1]["reported"] == 1
        assert daemon.stop() == 0
    finally:
        server.stop()


# --- at least once per hook (issue 17) ------------------------------------------------------------


def test_after_a_crash_only_the_hooks_that_had_not_finished_run_again(
    ledger: Ledger, outbox: Path, tmp_path: Path, clock: Clock
) -> None:
    job_id, ids = record_job(ledger, outbox, ["a.jpg"])
    finish(ledger, ids)
    hooks = HooksConfig(on_complete=("/bin/true",), webhook_url="http://127.0.0.1:9/")
    sink = RecordingHooks()
    completion, _ = coordinator(ledger, outbox, sink, hooks)
    completion.job_finished(job_id)
    [(_, _, command_done), _] = sink.calls
    command_done()  # the command ran; the webhook is still retrying when the daemon dies
    completion.collect()
    first = dict((hook, delivery) for _, hook, delivery in sink.deliveries)
    ledger.close()

    again = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)  # kill -9, restart
    try:
        sink2 = RecordingHooks()
        completion2, _ = coordinator(again, outbox, sink2, hooks)
        assert completion2.report_unreported() == 1
        assert [(hook, delivery) for _, hook, delivery in sink2.deliveries] == [
            ("webhook", first["webhook"])  # the same delivery id: the receiver de-duplicates
        ]
        sink2.calls[0][2]()
        completion2.collect()
        assert again.unreported_jobs() == []
    finally:
        again.close()


def test_a_hook_whose_queue_is_full_is_deferred_not_dropped(ledger: Ledger, outbox: Path) -> None:
    job_id, ids = record_job(ledger, outbox, ["a.jpg"])
    finish(ledger, ids)
    hooks = HooksConfig(on_complete=("/bin/true",), webhook_url="http://127.0.0.1:9/")
    sink = RecordingHooks(full=("webhook",))
    completion, _ = coordinator(ledger, outbox, sink, hooks)
    completion.job_finished(job_id)
    assert [hook for _, hook, _ in sink.deliveries] == ["command"]
    sink.calls[0][2]()
    completion.collect()
    assert ledger.unreported_jobs() == [job_id]  # waits in the ledger for the webhook
    completion.report_unreported()  # the queue is still full
    assert [hook for _, hook, _ in sink.deliveries] == ["command"]  # the command not again
    sink.full.clear()  # room again
    completion.report_unreported()
    assert [hook for _, hook, _ in sink.deliveries] == ["command", "webhook"]
    sink.calls[1][2]()
    completion.collect()
    assert ledger.unreported_jobs() == []


# --- big jobs off the main loop (issue 17) --------------------------------------------------------


@pytest.mark.slow
def test_a_big_job_without_a_manifest_reads_none_of_its_files(
    ledger: Ledger, outbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hooks get the job's counts, not its files: with manifest = false a 20,000-file job's
    end reads its head and counts only (it read every file row before: 0.7 s)."""
    rels = [f"IMG_{i:05d}.jpg" for i in range(20_000)]
    files = [
        NewFile(
            r, Path("/in") / r, outbox / (r[:-4] + ".png"), Path("/a") / r, Path("/f") / r, 1, 1
        )
        for r in rels
    ]
    job_id, ids = ledger.create_job(NewJob("photos", "big", "loose", OPTIONS, files, manifest=None))
    end_all_at_once(tmp_path / "state" / "ledger.sqlite3", job_id, failed_id=ids[5])
    limits: list[int | None] = []
    real = ledger.job_detail

    def spy(job: int, *, file_limit: int | None = None) -> Any:
        limits.append(file_limit)
        return real(job, file_limit=file_limit)

    monkeypatch.setattr(ledger, "job_detail", spy)
    sink = RecordingHooks()
    hooks = HooksConfig(manifest=False, webhook_url="http://127.0.0.1:9/")
    completion, _ = coordinator(ledger, outbox, sink, hooks)
    started = time.perf_counter()
    completion.job_finished(job_id)
    seconds = time.perf_counter() - started
    assert limits == [0]  # no file rows
    [(facts, _, _)] = sink.calls
    assert facts["files"] == {"total": 20_000, "done": 19_999, "failed": 1}
    print(f"20k-file job without manifest: job_finished {seconds * 1000:.0f} ms")
