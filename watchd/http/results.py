"""``results.zip``: a job's cutouts streamed as one zip, never built whole in memory or on disk.

:mod:`zipfile` writes to a sink that cannot seek (it then uses data descriptors), and
every chunk it writes is handed to the client at once. Entries are stored, not
compressed again: PNG, WebP and JPEG are compressed already.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import structlog

from watchd.errors import OutputMissing
from watchd.http.views import open_output, read_chunks

log = structlog.get_logger()


class _Sink(io.RawIOBase):
    """Collects what zipfile writes until the generator hands it on."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def stream_zip(entries: list[tuple[str, Path]], outbox: Path) -> Iterator[bytes]:
    """Zip ``(name in the zip, output path)`` pairs; a missing output is skipped and logged."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, path in entries:
            try:
                fd = open_output(path, outbox)
            except OutputMissing as exc:
                log.warning("http.result_missing", path=str(path), reason=str(exc))
                continue
            with archive.open(name, "w", force_zip64=True) as member:
                for chunk in read_chunks(fd):
                    member.write(chunk)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()
