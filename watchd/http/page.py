"""The page people look at (docs/page.md): its files, who-am-I, and thumbnails.

The page is three static files shipped in the package (``watchd/http/page/``): plain
HTML, CSS and a little vanilla JavaScript, no build step, nothing fetched from
elsewhere. They are read once when the server starts and served from memory with a
strict Content-Security-Policy: scripts only from this origin and never inline,
nothing else loaded from anywhere, images only from here or the page's own blobs.
Everything the page shows comes from the JSON API with the token the person typed in,
so the page itself needs no token and holds no data.

Two routes exist for the page: ``GET /auth/whoami`` (which token is this, what may it
do: the page shows cancel and retry only to a token that may use them) and
``GET /queue/job/{id}/files/{file}/thumbnail`` (a small before/after picture, made and
cached by :mod:`watchd.http.thumbs`, read only from the places the ledger names for
that file of that job).
"""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel

from watchd.errors import OutputMissing, ThumbnailError
from watchd.http.app import _ERRORS, Door, JobIdPath, Reader, job_resource
from watchd.http.thumbs import Thumbnails
from watchd.http.views import open_inside

#: The page's files: the URL path, the file in ``watchd/http/page/`` and its media type.
ASSETS: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/page/style.css": ("style.css", "text/css; charset=utf-8"),
    "/page/icon.svg": ("icon.svg", "image/svg+xml"),
}

#: Only this origin's script and style files run; no inline script, no eval, no plugins,
#: no frames; images from here or from the blobs the script makes of thumbnails.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
#: Thumbnails made at the same time at most (each decodes one image in a thread).
THUMBNAIL_THREADS: Final = 2


class Whoami(BaseModel):
    name: str
    scope: str
    tokens_required: bool


def page_routes(app: FastAPI, door: Door) -> None:
    """Add the page's files, ``/auth/whoami`` and the thumbnail route to ``app``."""
    folder = resources.files("watchd.http") / "page"
    for route, (name, media) in ASSETS.items():
        _asset_route(app, route, (folder / name).read_bytes(), media)

    @app.get("/auth/whoami", tags=["auth"], response_model=Whoami, responses=_ERRORS)
    async def whoami(who: Reader) -> Whoami:
        """The token's name and scope (``read`` < ``submit`` < ``admin``)."""
        return Whoami(name=who.name, scope=who.scope, tokens_required=door.tokens is not None)

    thumbnails = Thumbnails(door.spool.parent / "cache" / "thumbs")
    slots = asyncio.Semaphore(THUMBNAIL_THREADS)

    @app.get(
        "/queue/job/{job_id}/files/{file_id}/thumbnail",
        **job_resource(
            "image/webp",
            Response,
            {415: {"description": "the file cannot be read as an image"}},
        ),
    )
    async def thumbnail(
        job_id: Annotated[int, JobIdPath],
        file_id: Annotated[int, JobIdPath],
        _who: Reader,
        side: Annotated[Literal["before", "after"], Query()] = "after",
    ) -> Response:
        """A WebP of at most 320 px: the cutout (``after``) or the original (``before``)."""
        place = await door.bridge.call("http_file", "-", id=job_id, file_id=file_id)
        fd = _open_side(door, place, side)
        async with slots:
            try:
                data, hit = await asyncio.to_thread(
                    thumbnails.get, fd, f"{job_id}/{file_id}/{side}"
                )
            except ThumbnailError as exc:
                raise HTTPException(415, str(exc)) from None
        return Response(
            data,
            media_type="image/webp",
            headers={
                "Cache-Control": "private, max-age=300",
                "X-Thumbnail": "hit" if hit else "made",
            },
        )


def _asset_route(app: FastAPI, route: str, data: bytes, media: str) -> None:
    async def asset() -> Response:
        return Response(data, media_type=media, headers=PAGE_HEADERS)

    app.add_api_route(route, asset, methods=["GET"], include_in_schema=False)


def _open_side(door: Door, place: dict[str, Any], side: str) -> int:
    """The descriptor of the file to picture: only the paths the ledger gave, each inside
    its own folder of the job's watch (the original may also still be in the spool)."""
    watch = next((w for w in door.watches() if w.name == place["watch"]), None)
    if watch is None:
        raise HTTPException(404, f"watch {place['watch']!r} is no longer configured")
    if side == "after":
        if place["state"] != "done":
            raise HTTPException(404, f"{place['rel']} has no cutout ({place['state']})")
        candidates = [(place["output"], watch.outbox, "the outbox")]
    else:
        candidates = [
            (place["archive"], watch.archive, "the archive"),
            (place["failed"], watch.failed, "the failed folder"),
            (place["source"], door.spool, "the spool"),
            (place["source"], watch.inbox, "the inbox"),
        ]
    reasons = []
    for path, root, name in candidates:
        try:
            return open_inside(Path(path), root, name)
        except OutputMissing as exc:
            reasons.append(str(exc))
    raise HTTPException(404, f"the {side} picture is gone: {'; '.join(dict.fromkeys(reasons))}")
