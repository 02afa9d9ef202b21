"""Thumbnails (watchd/http/thumbs.py) and the page's static files, without a daemon.

The thumbnail cache: bounded size, WebP with the alpha kept, one entry per source
version, least recently used entries pruned first, unreadable sources a clear error.
The page files: no inline script, no inline style, no external URL (the CSP forbids
them, so one would be a broken page, and the page must work with no internet).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from watchd.errors import ThumbnailError
from watchd.http.page import ASSETS, CSP
from watchd.http.thumbs import Thumbnails

PAGE = Path(__file__).resolve().parent.parent / "watchd" / "http" / "page"


def _image(path: Path, size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> Path:
    colour = (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)
    Image.new(mode, size, colour[: len(mode)]).save(path, fmt)
    return path


def _fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY)


def test_thumbnail_is_bounded_webp_and_keeps_alpha(tmp_path: Path) -> None:
    thumbs = Thumbnails(tmp_path / "cache")
    wide = _image(tmp_path / "wide.png", (1000, 400), "RGBA")
    data, hit = thumbs.get(_fd(wide), "1/1/after")
    assert hit is False
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "WEBP"
        assert picture.size == (320, 128)
        assert picture.mode == "RGBA"
    tall = _image(tmp_path / "tall.jpg", (300, 900), fmt="JPEG")
    data, _ = thumbs.get(_fd(tall), "1/2/before")
    with Image.open(io.BytesIO(data)) as picture:
        assert max(picture.size) == 320 and picture.mode == "RGB"
    small = _image(tmp_path / "small.png", (40, 20))
    data, _ = thumbs.get(_fd(small), "1/3/before")
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.size == (40, 20)  # never enlarged


def test_cache_answers_again_until_the_source_changes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    thumbs = Thumbnails(cache)
    source = _image(tmp_path / "a.png", (600, 600))
    first, hit = thumbs.get(_fd(source), "7/9/after")
    assert hit is False
    assert len(list(cache.iterdir())) == 1
    again, hit = thumbs.get(_fd(source), "7/9/after")
    assert hit is True and again == first
    _image(source, (600, 300))  # the same path, new content (new size and mtime)
    os.utime(source, ns=(1, 1))
    changed, hit = thumbs.get(_fd(source), "7/9/after")
    assert hit is False and changed != first
    _, hit = thumbs.get(_fd(source), "7/9/before")  # another side: its own entry
    assert hit is False
    assert len(list(cache.iterdir())) == 3
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp left


def test_cache_is_bounded_and_prunes_the_least_recently_used(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    thumbs = Thumbnails(cache, max_entries=4, max_bytes=10**9)
    sources = [_image(tmp_path / f"{i}.png", (100 + i, 100)) for i in range(10)]
    thumbs.get(_fd(sources[0]), "k0")
    for i, source in enumerate(sources[1:], start=1):
        os.utime(cache, None)
        thumbs.get(_fd(source), f"k{i}")
        thumbs.get(_fd(sources[0]), "k0")  # used again each time: never the oldest
        assert len(list(cache.iterdir())) <= 4
    _, hit = thumbs.get(_fd(sources[0]), "k0")
    assert hit is True
    _, hit = thumbs.get(_fd(sources[1]), "k1")
    assert hit is False  # pruned long ago

    by_bytes = Thumbnails(tmp_path / "bytes", max_entries=1000, max_bytes=1)
    by_bytes.get(_fd(sources[2]), "x")
    by_bytes.get(_fd(sources[3]), "y")
    assert len(list((tmp_path / "bytes").iterdir())) <= 1


def test_unreadable_source_is_a_clear_error_and_closes_the_descriptor(tmp_path: Path) -> None:
    thumbs = Thumbnails(tmp_path / "cache")
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    fd = _fd(text)
    with pytest.raises(ThumbnailError, match="cannot make a thumbnail"):
        thumbs.get(fd, "1/1/before")
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    assert list((tmp_path / "cache").iterdir()) == []


def test_page_files_have_no_inline_script_style_or_external_url() -> None:
    for name, _media in ASSETS.values():
        assert (PAGE / name).is_file(), name
    html = (PAGE / "index.html").read_text(encoding="utf-8")
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, f"inline script: {tag}"
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None
    assert re.search(r"\son[a-z]+\s*=", html) is None, "inline event handler"
    assert re.search(r"\sstyle\s*=", html) is None, "inline style"
    for name in ("index.html", "app.js", "style.css"):
        text = (PAGE / name).read_text(encoding="utf-8")
        assert re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text) is None, name
    script = (PAGE / "app.js").read_text(encoding="utf-8")
    assert "innerHTML" not in script.replace("never innerHTML", "")
    assert "eval(" not in script


def test_csp_allows_only_this_origin() -> None:
    rules = dict(part.strip().split(" ", 1) for part in CSP.split(";"))
    assert rules["default-src"] == "'none'"
    assert rules["script-src"] == "'self'"
    assert rules["img-src"] == "'self' blob:"
    assert rules["connect-src"] == "'self'"
    assert rules["frame-ancestors"] == "'none'"
    assert "unsafe" not in CSP
