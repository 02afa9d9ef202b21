"""Multipart uploads streamed straight into the spool, and ``.zip`` folders unpacked safely.

An upload is written, chunk by chunk as it arrives, into its own staging folder
under ``<spool>/http/`` (:func:`staging_root`); it is never held whole in memory.
Nothing is recorded until the whole body has arrived and checked out: then the
staging folder is handed to the ``submit`` command, which takes the files into the
spool like any submitted folder. A body that is too large, malformed or cut off by
the client leaves nothing behind (:meth:`Staged.discard`), and what a ``kill -9``
leaves is removed when the HTTP door opens again (:func:`clear_staging`).

Zip entries are unpacked only when their names stay inside the job's folder (no
absolute names, no ``..``), they are regular files (no symbolic links), and the
unpacked bytes, counted as they are written rather than believed from the zip's
headers, stay within the upload limit (a zip bomb stops there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import stat
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Final, cast

import structlog
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from watchd.errors import UploadError
from watchd.files import fsync_file
from watchd.watcher import is_ignored

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = structlog.get_logger()

CHUNK: Final = 256 * 1024
#: A form field that is not a file is an option: a few bytes, never more than this.
MAX_FIELD_BYTES: Final = 4096
#: Longest file name kept from an upload (bytes of UTF-8); longer ones are shortened.
MAX_NAME_BYTES: Final = 200


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # the whole body, and the unpacked contents of its zips
    max_files: int


def staging_root(spool: Path) -> Path:
    return spool / "http"


def clear_staging(spool: Path) -> int:
    """Remove uploads a crash interrupted; called when no upload can be in progress.

    Runs after recovery, which has already taken into the spool every file of a job
    recorded before the crash; what is left here was never recorded.
    """
    root = staging_root(spool)
    root.mkdir(mode=0o700, exist_ok=True)
    removed = 0
    for entry in os.scandir(root):
        _remove_tree(Path(entry.path))
        removed += 1
    if removed:
        log.info("http.staging_cleared", uploads=removed)
    return removed


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@dataclass
class Staged:
    """One upload on disk: ``folder`` holds the job's files (relative names in ``files``)."""

    root: Path  # <spool>/http/<random>: everything of this upload
    folder: Path  # root/<job folder name>
    files: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    bytes: int = 0

    def discard(self) -> None:
        _remove_tree(self.root)


def safe_name(filename: str, index: int) -> str:
    """A file name from a client, made safe to use as one path component.

    Only the last component counts (browsers may send a path); control characters go;
    leading dots go (the watcher ignores hidden names); an empty result gets a name.
    """
    name = PurePosixPath(filename.replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).lstrip(". ")
    if not name:
        return f"upload-{index}"
    if len(name.encode()) > MAX_NAME_BYTES:
        stem, suffix = os.path.splitext(name)
        stem = stem.encode()[: MAX_NAME_BYTES - len(suffix.encode()[:20])].decode("utf-8", "ignore")
        name = stem + suffix[:20]
    return name


class _FormReader:
    """python-multipart callbacks that write file parts to disk as they arrive."""

    def __init__(
        self, staged: Staged, file_field: str, text_fields: frozenset[str], limits: Limits
    ):
        self.staged = staged
        self.file_field = file_field
        self.text_fields = text_fields
        self.limits = limits
        self.zips: list[tuple[Path, str]] = []
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._text: bytearray | None = None
        self._fd: int | None = None
        self._count = 0
        self.error: UploadError | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._text = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in params:
            raise UploadError(400, "malformed multipart body: a part has no form-data name")
        name = params[b"name"].decode("utf-8", "replace")
        self._name = name
        filename = params.get(b"filename")
        if name == self.file_field:
            if filename is None:
                raise UploadError(422, f"field {name!r} must be a file upload")
            self._open_file(filename.decode("utf-8", "replace"))
        elif name in self.text_fields:
            if name in self.staged.fields:
                raise UploadError(422, f"field {name!r} is given twice")
            self._text = bytearray()
        else:
            known = ", ".join(sorted({self.file_field, *self.text_fields}))
            raise UploadError(422, f"unknown field {name!r} (fields: {known})")

    def _open_file(self, filename: str) -> None:
        self._count += 1
        if self._count > self.limits.max_files:
            raise UploadError(413, f"more than {self.limits.max_files} files in one job")
        name = safe_name(filename, self._count)
        if name.lower().endswith(".zip"):
            path = self.staged.root / f"zip-{self._count}"
            self.zips.append((path, name))
        else:
            name = _unique(name, self.staged.files)
            self.staged.files.append(name)
            path = self.staged.folder / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o600)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if self._text is not None:
            if len(self._text) + size > MAX_FIELD_BYTES:
                raise UploadError(
                    422, f"field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes"
                )
            self._text += data[start:end]
            return
        if self._fd is None:
            return
        self.staged.bytes += size
        if self.staged.bytes > self.limits.max_bytes:
            raise UploadError(413, f"the upload is larger than {self.limits.max_bytes} bytes")
        view = memoryview(data)[start:end]
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _part_end(self) -> None:
        if self._text is not None:
            try:
                self.staged.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadError(422, f"field {self._name!r} is not UTF-8 text") from None
            self._text = None
        self.close_file()

    def close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _unique(name: str, taken: list[str]) -> str:
    if name not in taken:
        return name
    stem, suffix = os.path.splitext(name)
    number = 2
    while f"{stem}-{number}{suffix}" in taken:
        number += 1
    return f"{stem}-{number}{suffix}"


def new_staging(spool: Path, folder_name: str) -> Staged:
    root = staging_root(spool) / uuid.uuid4().hex
    root.mkdir(mode=0o700, parents=True)
    folder = root / folder_name
    folder.mkdir(mode=0o700)
    return Staged(root=root, folder=folder)


async def receive(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    staged: Staged,
    *,
    file_field: str,
    text_fields: frozenset[str],
    limits: Limits,
) -> None:
    """Parse a multipart body from ``chunks`` into ``staged`` (files on disk, text fields).

    Raises :class:`UploadError`; the caller discards ``staged`` on any exception (also
    the client's disconnect).
    """
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(
            415 if kind != b"multipart/form-data" else 400,
            "the body must be multipart/form-data with a boundary",
        )
    reader = _FormReader(staged, file_field, text_fields, limits)
    parser = MultipartParser(boundary, cast("MultipartCallbacks", reader.callbacks()))
    try:
        async for chunk in chunks:
            if chunk:
                parser.write(chunk)
        parser.finalize()
        if parser.state.name != "END":
            raise UploadError(400, "malformed multipart body: it ends before its closing boundary")
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    finally:
        reader.close_file()
    for path, name in reader.zips:
        await asyncio.to_thread(unpack_zip, path, name, staged, limits)
        path.unlink()
    await asyncio.to_thread(sync_files, staged)


def sync_files(staged: Staged) -> None:
    """Flush every uploaded file to disk: the job is recorded only after this (in a thread,
    so the server's loop goes on answering meanwhile)."""
    for rel in staged.files:
        fsync_file(staged.folder / rel)


def unpack_zip(path: Path, label: str, staged: Staged, limits: Limits) -> None:
    """Unpack one uploaded zip into the job's folder, refusing anything unsafe (422/413)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise UploadError(422, f"{label}: not a valid zip file") from None
    with archive:
        for info in archive.infolist():
            rel = _entry_name(info, label)
            if rel is None:
                continue
            if len(staged.files) >= limits.max_files:
                raise UploadError(413, f"{label}: more than {limits.max_files} files in one job")
            if rel in staged.files:
                raise UploadError(422, f"{label}: {rel!r} is in the job twice")
            _extract(archive, info, staged.folder / rel, staged, limits, label)
            staged.files.append(rel)


def _entry_name(info: zipfile.ZipInfo, label: str) -> str | None:
    """The entry's relative path, None to skip it (folders, hidden and OS litter), or 422."""
    raw = info.filename.replace("\\", "/")
    if "\0" in raw:
        raise UploadError(422, f"{label}: entry {raw!r} has a NUL character in its name")
    if raw.startswith("/") or re.match(r"[A-Za-z]:", raw):
        raise UploadError(422, f"{label}: entry {raw!r} has an absolute name")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UploadError(422, f"{label}: entry {raw!r} points outside the folder ('..')")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UploadError(422, f"{label}: entry {raw!r} is a symbolic link")
    if info.is_dir() or not parts or any(is_ignored(p) for p in parts):
        return None
    if mode and not stat.S_ISREG(mode):
        raise UploadError(422, f"{label}: entry {raw!r} is not a regular file")
    return "/".join(parts)


def _extract(  # noqa: PLR0917
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    staged: Staged,
    limits: Limits,
    label: str,
) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file of that name is a folder here
        raise UploadError(422, f"{label}: {info.filename!r} is both a file and a folder") from None
    try:
        with archive.open(info) as source, open(os.open(target, flags, 0o600), "wb") as sink:
            while chunk := source.read(CHUNK):
                staged.bytes += len(chunk)
                if staged.bytes > limits.max_bytes:
                    raise UploadError(
                        413,
                        f"{label}: unpacks to more than {limits.max_bytes} bytes (a zip bomb?)",
                    )
                sink.write(chunk)
            sink.flush()
    except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError) as exc:
        # RuntimeError: encrypted; NotImplementedError: an unknown compression method
        raise UploadError(422, f"{label}: entry {info.filename!r} cannot be read: {exc}") from None
    except FileExistsError:
        raise UploadError(422, f"{label}: {info.filename!r} is in the job twice") from None
    except (NotADirectoryError, IsADirectoryError):
        raise UploadError(422, f"{label}: {info.filename!r} is both a file and a folder") from None
