"""The routes: the queue service's paths and fields, over the daemon's command layer.

Scopes: ``read`` for every GET under ``/queue`` and ``/metrics``; ``submit`` to add,
cancel or retry jobs and for ``/api/remove``; ``admin`` to pause and resume. ``/health``
and ``/ready`` need no token (load balancers and orchestrators probe them).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from starlette.requests import ClientDisconnect

from watchd import __version__
from watchd.config import HttpConfig, WatchConfig
from watchd.errors import OutputMissing, UploadError
from watchd.http.bridge import Bridge
from watchd.http.options import (
    REMOVE_FIELDS,
    REMOVE_PRIORITY,
    SUBMIT_FIELDS,
    RemoveOptions,
    SubmitOptions,
    merged,
    remove_sidecar,
    sidecar_text,
    submit_sidecar,
)
from watchd.http.results import stream_zip
from watchd.http.tokens import ANONYMOUS, Token, Tokens
from watchd.http.uploads import Limits, Staged, new_staging, receive
from watchd.http.views import (
    MEDIA_TYPES,
    STATUS_STATES,
    JobsPage,
    JobView,
    Submitted,
    job_view,
    open_output,
    read_chunks,
)
from watchd.watcher import is_sidecar_name

log = structlog.get_logger()

SIDECAR = "watchd.toml"
#: How often a waiting ``/api/remove`` or event stream looks at its job when no end is heard.
POLL_SECONDS = 1.0

#: A job or file id in a path: SQLite's integers are signed 64-bit.
JobIdPath = PathParam(ge=1, le=2**63 - 1)

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no token, or an unknown one"},
    403: {"description": "the token's scope does not allow this"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such job or file"}}
_UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed multipart body"},
    413: {"description": "more bytes or files than the limits allow"},
    415: {"description": "not multipart/form-data"},
    422: {"description": "an unknown field, option or value (named in the answer)"},
    429: {"description": "the queue is full: try again after Retry-After seconds"},
}


def _multipart(file_field: str, many: bool, fields: frozenset[str]) -> dict[str, Any]:
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    properties: dict[str, Any] = {
        file_field: {"type": "array", "items": file_schema} if many else file_schema
    }
    properties.update({name: {"type": "string"} for name in sorted(fields)})
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties, "required": [file_field]}
                }
            },
        }
    }


@dataclass
class Door:
    """What the routes share: the bridge, the limits, the spool and the tokens."""

    bridge: Bridge
    config: HttpConfig
    spool: Path
    watches: Callable[[], tuple[WatchConfig, ...]]
    tokens: Tokens | None
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        self.limits = Limits(self.config.max_upload_bytes, self.config.max_files_per_job)

    def watch(self, name: str | None) -> WatchConfig:
        wanted = name or self.config.watch
        for watch in self.watches():
            if watch.name == wanted:
                return watch
        known = ", ".join(w.name for w in self.watches())
        raise HTTPException(422, f"watch: no watch named {wanted!r} (configured: {known})")

    async def room_for(self, files: int) -> None:
        """Back-pressure: 429 with Retry-After while the queue holds max_queued_files."""
        snapshot = await self.bridge.call("status", "-")
        counts = snapshot.get("files", {})
        waiting = int(counts.get("pending", 0)) + int(counts.get("queued", 0))
        limit = self.config.max_queued_files
        if waiting + files <= limit:
            return
        rate = float(snapshot.get("throughput", {}).get("files_per_second_1m") or 0.0)
        excess = waiting + files - limit
        retry = min(300, max(1, math.ceil(excess / rate))) if rate > 0 else 30
        raise HTTPException(
            429,
            f"the queue is full ({waiting} files waiting, at most {limit}); try again later",
            headers={"Retry-After": str(retry)},
        )

    async def stage(self, request: Request, file_field: str, fields: frozenset[str]) -> Staged:
        """The body on disk in the spool, or an error answer with nothing left behind."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.limits.max_bytes + 1024 * 1024:
            raise HTTPException(413, f"the upload is larger than {self.limits.max_bytes} bytes")
        staged = new_staging(self.spool, "job")
        try:
            await receive(
                request.stream(),
                request.headers.get("content-type"),
                staged,
                file_field=file_field,
                text_fields=fields,
                limits=self.limits,
            )
        except UploadError as exc:
            staged.discard()
            log.info("http.upload_refused", status=exc.status, reason=exc.message)
            raise HTTPException(exc.status, exc.message) from None
        except ClientDisconnect:
            staged.discard()
            log.info("http.upload_abandoned", bytes=staged.bytes)
            raise
        except BaseException:
            staged.discard()
            raise
        if not staged.files:
            staged.discard()
            raise HTTPException(422, f"field {file_field!r}: no files in the upload")
        return staged

    async def record(  # noqa: PLR0917
        self,
        staged: Staged,
        who: Token,
        watch: WatchConfig,
        sidecar: dict[str, Any],
        name: str | None,
        priority: int | None,
    ) -> dict[str, Any]:
        """Hand the staged folder to ``submit`` (move): one job, as a dropped folder is."""
        try:
            if sidecar:
                if any(is_sidecar_name(f) for f in staged.files):
                    raise HTTPException(422, f"options are given and the upload holds a {SIDECAR}")
                (staged.folder / SIDECAR).write_bytes(sidecar_text(sidecar, watch))
            folder = staged.folder.rename(staged.root / (name or f"http-{uuid.uuid4().hex[:8]}"))
            args: dict[str, Any] = {"paths": [str(folder)], "watch": watch.name, "move": True}
            if name is not None:
                args["name"] = name
            if priority is not None:
                args["priority"] = priority
            return await self.bridge.call("submit", who.name, changes=True, **args)
        finally:
            staged.discard()  # what submit took is in the spool now; the rest goes


_bearer = HTTPBearer(auto_error=False)


def _need(scope: str) -> Callable[..., Awaitable[Token]]:
    """A dependency: the request's token, which must allow ``scope`` (401/403 otherwise)."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Token:
        tokens: Tokens | None = request.app.state.door.tokens
        if tokens is None:
            return ANONYMOUS
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise HTTPException(401, "a bearer token is needed", headers=challenge)
        token = tokens.check(credentials.credentials)
        if token is None:
            raise HTTPException(401, "unknown token", headers=challenge)
        if not token.allows(scope):
            raise HTTPException(
                403, f"token {token.name!r} has scope {token.scope!r}; this needs {scope!r}"
            )
        return token

    return check


Reader = Annotated[Token, Depends(_need("read"))]
Submitter = Annotated[Token, Depends(_need("submit"))]
Admin = Annotated[Token, Depends(_need("admin"))]
JobId = Annotated[int, Query(ge=1, le=2**63 - 1)]


def create_app(door: Door) -> FastAPI:
    app = FastAPIOffline(
        title="watchd",
        version=__version__,
        description="Background removal: the queue service's API, served by the watchd daemon.",
    )
    if door.config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(door.config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Location", "Retry-After"],
        )
    app.state.door = door
    _probe_routes(app, door)
    _queue_routes(app, door)
    _result_routes(app, door)
    _remove_route(app, door)
    from watchd.http.page import page_routes  # it builds on this module's dependencies

    page_routes(app, door)
    return app


def _probe_routes(app: FastAPI, door: Door) -> None:

    @app.get("/health", tags=["probes"])
    async def health() -> dict[str, Any]:
        """Alive: the daemon's main loop answers."""
        pong = await door.bridge.call("ping", "-")
        return {"status": "ok", "version": pong["version"], "pid": pong["pid"]}

    @app.get("/ready", tags=["probes"], responses={503: {"description": "not ready"}})
    async def ready() -> JSONResponse:
        """Ready: ledger open, recovery done, a model loaded, every watch live."""
        checks = await door.bridge.call("http_ready", "-")
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["probes"], response_class=Response, responses=_ERRORS)
    async def metrics(_who: Reader) -> Response:
        """Prometheus exposition: the same families as the metrics textfile."""
        answer = await door.bridge.call("http_metrics", "-")
        return Response(answer["text"], media_type="text/plain; version=0.0.4; charset=utf-8")


def _queue_routes(app: FastAPI, door: Door) -> None:  # noqa: C901 - a few lines per route

    @app.post(
        "/queue/submit",
        tags=["queue"],
        status_code=202,
        response_model=Submitted,
        responses={**_ERRORS, **_UPLOAD_ERRORS},
        openapi_extra=_multipart("images", True, SUBMIT_FIELDS),
    )
    async def submit(
        request: Request, who: Submitter, query: Annotated[SubmitOptions, Query()]
    ) -> JSONResponse:
        """Upload one or more images (or folders as .zip) as one job."""
        await door.room_for(1)
        staged = await door.stage(request, "images", SUBMIT_FIELDS)
        try:
            options = merged(SubmitOptions, query, staged.fields)
            watch = door.watch(options.watch)
            await door.room_for(len(staged.files))
        except BaseException:
            staged.discard()
            raise
        result = await door.record(
            staged, who, watch, submit_sidecar(options), options.name, options.priority
        )
        job_id = int(result["id"])
        body = Submitted(job_id=job_id, status="queued", files_count=int(result["files"]))
        return JSONResponse(
            body.model_dump(), status_code=202, headers={"Location": f"/queue/job/{job_id}"}
        )

    @app.get(
        "/queue/job/{job_id}",
        tags=["queue"],
        response_model=JobView,
        responses={**_ERRORS, **_NOT_FOUND},
    )
    async def job(job_id: Annotated[int, JobIdPath], _who: Reader) -> JobView:
        """The job, its progress and every file with its state, error and output link."""
        detail = await door.bridge.call("job", "-", id=job_id)
        return job_view(detail, with_files=True)

    @app.get("/queue/jobs", tags=["queue"], response_model=JobsPage, responses=_ERRORS)
    async def jobs(
        _who: Reader,
        status: Literal["queued", "processing", "completed", "failed", "cancelled"] | None = None,
        watch: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        before: JobId | None = None,
    ) -> JobsPage:
        """Jobs newest first; page on with ``before`` = the previous page's ``next_before``."""
        args: dict[str, Any] = {"limit": limit}
        if status is not None:
            args["state"] = STATUS_STATES[status]
        if watch is not None:
            args["watch"] = watch.replace("\0", "")
        if before is not None:
            args["before"] = before
        page = await door.bridge.call("jobs", "-", **args)
        views = [job_view(j) for j in page["jobs"]]
        if status is not None:
            views = [v for v in views if v.status == status]
        return JobsPage(jobs=views, next_before=page["next_before"])

    @app.get("/queue/stats", tags=["queue"], responses=_ERRORS)
    async def stats(_who: Reader) -> dict[str, Any]:
        """The same figures as the stats file (docs/stats.md)."""
        return await door.bridge.call("status", "-")

    for command, (conflict, does) in _JOB_COMMANDS.items():
        _job_command_route(app, door, command, conflict, does)

    @app.post("/queue/pause", tags=["queue"], responses=_ERRORS)
    async def pause(who: Admin) -> dict[str, Any]:
        return await door.bridge.call("pause", who.name, changes=True)

    @app.post("/queue/resume", tags=["queue"], responses=_ERRORS)
    async def resume(who: Admin) -> dict[str, Any]:
        return await door.bridge.call("resume", who.name, changes=True)

    @app.get("/queue/job/{job_id}/events", **job_resource("text/event-stream"))
    async def events(job_id: Annotated[int, JobIdPath], _who: Reader) -> StreamingResponse:
        """Server-Sent Events: ``progress`` whenever the job changes, ``end`` when it ends."""
        first = job_view(await door.bridge.call("job", "-", id=job_id))

        async def stream() -> AsyncIterator[bytes]:
            view, last = first, ""
            while True:
                data = view.model_dump_json()
                if data != last:
                    yield f"event: progress\ndata: {data}\n\n".encode()
                    last = data
                if view.finished_at is not None:
                    yield f"event: end\ndata: {data}\n\n".encode()
                    return
                await door.bridge.wait_job(job_id, POLL_SECONDS)
                view = job_view(await door.bridge.call("job", "-", id=job_id))

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )


#: The control commands on one job that the API forwards as they are (``POST
#: /queue/job/{id}/<command>``): what their 409 means, and what they do.
_JOB_COMMANDS = {
    "cancel": (
        "the job has ended",
        'As ``watchd cancel``: files not yet started fail with the reason "cancelled".',
    ),
    "retry": ("nothing to retry", "As ``watchd retry``: the job's failed files run again."),
}


def _job_command_route(app: FastAPI, door: Door, command: str, conflict: str, does: str) -> None:
    async def forward(job_id: Annotated[int, JobIdPath], who: Submitter) -> dict[str, Any]:
        return await door.bridge.call(command, who.name, changes=True, id=job_id)

    app.post(
        f"/queue/job/{{job_id}}/{command}",
        tags=["queue"],
        name=command,
        description=does,
        responses={**_ERRORS, **_NOT_FOUND, 409: {"description": conflict}},
    )(forward)


def job_resource(
    media: str,
    response_class: type[Response] = StreamingResponse,
    refusals: dict[int | str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The settings of a route that answers with a resource of a job (a cutout, a zip, an
    event stream, a thumbnail) of type ``media``: its OpenAPI answers are that body, the
    common refusals, 404, and ``refusals`` of its own."""
    responses = {**_ERRORS, **_NOT_FOUND, 200: {"content": {media: {}}}, **(refusals or {})}
    return {"tags": ["queue"], "response_class": response_class, "responses": responses}


def _result_routes(app: FastAPI, door: Door) -> None:
    @app.get("/queue/job/{job_id}/files/{file_id}", **job_resource("image/png"))
    async def file(
        job_id: Annotated[int, JobIdPath],
        file_id: Annotated[int, JobIdPath],
        _who: Reader,
    ) -> StreamingResponse:
        """One cutout of the job (a file id from the job's ``files``)."""
        fd, media = await _output_of(door, job_id, file_id)
        return StreamingResponse(read_chunks(fd), media_type=media)

    @app.get("/queue/job/{job_id}/results.zip", **job_resource("application/zip"))
    async def results(job_id: Annotated[int, JobIdPath], _who: Reader) -> StreamingResponse:
        """Every cutout of the job written so far, streamed as one zip."""
        detail = await door.bridge.call("job", "-", id=job_id)
        outbox = _outbox(door, detail["watch"])
        entries = []
        for f in detail.get("files", []):
            if f.get("state") == "done":
                output = Path(f["output"])
                name = str(PurePosixPath(f["rel"]).with_suffix(output.suffix))
                entries.append((name, output))
        return StreamingResponse(
            stream_zip(entries, outbox),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="job-{job_id}.zip"'},
        )


def _remove_route(app: FastAPI, door: Door) -> None:

    @app.post(
        "/api/remove",
        tags=["rembg"],
        response_class=Response,
        responses={
            **_ERRORS,
            **_UPLOAD_ERRORS,
            200: {"content": {"image/png": {}}},
            504: {"description": "no cutout within remove_timeout"},
        },
        openapi_extra=_multipart("file", False, REMOVE_FIELDS),
    )
    async def remove(
        request: Request, who: Submitter, query: Annotated[RemoveOptions, Query()]
    ) -> Response:
        """As ``rembg s``: one image in, its cutout out; recorded as a job, ahead of folder work."""
        deadline = time.monotonic() + door.config.remove_timeout
        await door.room_for(1)
        staged = await door.stage(request, "file", REMOVE_FIELDS)
        try:
            if len(staged.files) != 1:
                raise HTTPException(422, "field 'file': exactly one image, please")
            options = merged(RemoveOptions, query, staged.fields)
            watch = door.watch(None)
            sidecar = remove_sidecar(options)
        except BaseException:
            staged.discard()
            raise
        result = await door.record(
            staged, who, watch, sidecar, f"remove-{uuid.uuid4().hex[:12]}", REMOVE_PRIORITY
        )
        job_id = int(result["id"])
        while True:
            detail = await door.bridge.call("job", "-", id=job_id)
            if detail.get("finished_at") is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise HTTPException(
                    504, f"no cutout within {door.config.remove_timeout:g} s (job {job_id} goes on)"
                )
            await door.bridge.wait_job(job_id, min(left, POLL_SECONDS))
        (f,) = detail["files"]
        if f["state"] != "done":
            raise HTTPException(422, f"{f['rel']}: {f.get('error') or f['state']}")
        fd, media = await _output_of(door, job_id, int(f["id"]))
        data = await asyncio.to_thread(lambda: b"".join(read_chunks(fd)))
        return Response(data, media_type=media, headers={"X-Watchd-Job": str(job_id)})


async def _output_of(door: Door, job_id: int, file_id: int) -> tuple[int, str]:
    detail = await door.bridge.call("job", "-", id=job_id)
    for file in detail.get("files", []):
        if int(file["id"]) == file_id:
            break
    else:
        raise HTTPException(404, f"job {job_id} has no file {file_id}")
    if file.get("state") != "done":
        raise HTTPException(
            404, f"file {file_id} of job {job_id} has no cutout ({file.get('state')})"
        )
    path = Path(file["output"])
    try:
        fd = open_output(path, _outbox(door, detail["watch"]))
    except OutputMissing as exc:
        raise HTTPException(404, f"the cutout is gone: {exc}") from None
    return fd, MEDIA_TYPES.get(path.suffix, "application/octet-stream")


def _outbox(door: Door, name: str) -> Path:
    for watch in door.watches():
        if watch.name == name:
            return watch.outbox
    raise HTTPException(404, f"watch {name!r} is no longer configured")
