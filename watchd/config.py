"""Configuration: one validated, frozen object built once at start-up.

Nothing else in watchd reads the TOML file or the environment for settings.
Every error names the file and the key, because the person reading it is an
operator looking at ``journalctl`` who needs to know exactly what to fix.

Relative paths in a config file are resolved against the file's folder, so a
config keeps its meaning whatever the daemon's working directory is; the
embedded default (no file) resolves them against the working directory, which
is what ``make run`` in a fresh clone wants.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from watchd import locate, validate
from watchd.errors import BadValue, ConfigError
from watchd.tomlfile import parse_toml, read_toml

AfterAction = Literal["archive", "delete", "keep"]
WatchMethod = Literal["auto", "inotify", "poll"]
LogFormat = Literal["auto", "console", "json"]
OutputFormat = Literal["png", "webp", "jpeg", "mask"]
Duplicates = Literal["reprocess", "reuse", "skip"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class DaemonConfig:
    """Process-wide settings (``[daemon]``)."""

    state_dir: Path
    models_dir: Path | None
    log_format: LogFormat
    log_level: str
    drain_seconds: float
    rescan_interval: float
    socket: Path
    socket_mode: int
    socket_group: str | None
    stats_file: Path
    stats_interval: float
    metrics_file: Path | None
    keep_days: float
    priority_aging: float = 60.0  # seconds of waiting worth one priority step
    #: the content cache's copies of outputs (docs/outputs.md, "Duplicates"), at most this
    cache_max_bytes: int = 2 << 30


@dataclass(frozen=True)
class PoolConfig:
    """The worker pool (``[pool]``)."""

    workers: int
    threads_per_worker: int
    max_attempts: int
    file_timeout: float
    providers: tuple[str, ...]
    require_accelerator: bool
    backend: str = "local"  # "local" | "dask"
    scheduler: str | None = None  # dask: tcp://HOST:PORT or tls://HOST:PORT
    dispatch_window: int | None = None  # dask: None = 2 x the cluster's worker threads
    tls_ca_file: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None
    model_cache: int = 2  # models each worker keeps loaded (least recently used one goes)
    memory_arena: bool = True  # onnxruntime's CPU arena: faster, more memory per model
    lone_file_uses_all_cores: bool = True  # a file alone in the pool: all its threads
    max_files_per_worker: int | None = None  # local pool: replace a worker after N files


@dataclass(frozen=True)
class OutputConfig:
    """How a watch's cutouts are made and encoded; a job's sidecar may override each key.

    ``background`` composites the cutout onto a colour (required for JPEG, which has
    no alpha); ``only_mask`` writes the greyscale mask instead of a cutout in the
    chosen format, and ``format = "mask"`` is shorthand for a PNG mask.
    """

    format: OutputFormat = "png"
    png_compress_level: int = 1
    jpeg_quality: int = 90
    background: str | None = None  # "#rrggbb"
    alpha_matting: bool = False
    alpha_matting_foreground_threshold: int = 240
    alpha_matting_background_threshold: int = 10
    alpha_matting_erode_size: int = 10
    post_process_mask: bool = False
    only_mask: bool = False
    # --- product shots (issue 18; docs/outputs.md, "Product shots"; watchd/imaging/product.py) ---
    crop: str = "none"  # "none" | "subject": crop to the subject's box plus margin
    margin: int | str = 0  # pixels, or "N%" of the subject box's longer side
    canvas: str | None = None  # "WxH": the subject scaled and placed on a canvas this size
    fill: float = 0.85  # the share of the canvas the subject takes (its longer side)
    align: str = "center"  # "center" | "bottom"
    background_image: str | None = None  # absolute path; the daemon reads it, workers get bytes


@dataclass(frozen=True)
class HooksConfig:
    """What tells downstream tools that a job is complete."""

    manifest: bool = True
    on_complete: tuple[str, ...] | None = None  # argv, run without a shell
    on_complete_timeout: float = 60.0
    webhook_url: str | None = None
    #: left out of repr: a config or a hook that is printed must not show the secret
    webhook_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class WatchConfig:
    """One route from an inbox to an outbox (``[[watch]]``)."""

    name: str
    inbox: Path
    outbox: Path
    archive: Path
    failed: Path
    model: str
    settle_seconds: float
    after: AfterAction
    method: WatchMethod
    poll_interval: float
    max_file_bytes: int
    output: OutputConfig = field(default_factory=OutputConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    priority: int = 0
    #: glob patterns of names intake leaves alone, added to watcher.DEFAULT_IGNORE
    ignore: tuple[str, ...] = ()
    #: False (default): names differing only in letter case clash, as on SMB/macOS shares
    case_sensitive_names: bool = False
    #: seconds a name may keep changing before it is reported as stuck (watchd/stuck.py)
    stuck_after: float = 600.0
    #: seconds of changing after which a note appears beside it; 0: never
    stuck_note_after: float = 3600.0
    # --- the quality gate (issue 18; docs/outputs.md, "Quality figures"; watchd/quality.py) ---
    #: where outputs that trip a review_if condition wait for ``watchd approve``
    review: Path | None = None
    #: the conditions (watchd.quality), normalised text; empty: no review
    review_if: tuple[str, ...] = ()
    #: an input seen before with the same options (watchd/content_cache.py)
    duplicates: Duplicates = "reprocess"


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP door (``[http]``, docs/http.md); absent from a file means no HTTP server."""

    listen: tuple[tuple[str, int], ...]  # (host, port); port 0 = any free port (logged)
    tokens_file: Path | None
    max_upload_bytes: int
    max_files_per_job: int
    max_queued_files: int
    watch: str  # the watch HTTP jobs belong to unless a request names another
    cors_origins: tuple[str, ...]
    tls_cert: Path | None
    tls_key: Path | None
    remove_timeout: float  # how long POST /api/remove waits for its cutout

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def urls(self) -> list[str]:
        return [f"{self.scheme}://{_host_port(host, port)}" for host, port in self.listen]


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from (None: the embedded default)."""

    source: Path | None
    daemon: DaemonConfig
    pool: PoolConfig
    watches: tuple[WatchConfig, ...]
    http: HttpConfig | None = None

    def watch(self, name: str) -> WatchConfig:
        for watch in self.watches:
            if watch.name == name:
                return watch
        raise KeyError(name)


# --- key tables: name -> (parser, default) ------------------------------------------------------
# A key whose dataclass field declares a default takes it from there (``PoolConfig.model_cache``),
# so each default is written once.
# A parser takes the value and returns the typed value or raises BadValue with a message.
# The kinds of value every door checks alike (numbers, choices, ...) are watchd/validate.py's.


def _default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def _number(minimum: float, maximum: float | None = None) -> Callable[[Any], float]:
    return functools.partial(validate.number, minimum=minimum, maximum=maximum)


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    return functools.partial(validate.integer, minimum=minimum, maximum=maximum)


def _choice(*options: str) -> Callable[[Any], str]:
    return functools.partial(validate.choice, options=options)


_string = validate.string
_boolean = validate.boolean
_describe = validate.described


def _model_name(value: Any) -> str:
    name = _string(value)
    if not validate.is_model_name(name):
        raise BadValue(
            f"{name!r} is not a model name: use letters, digits, '.', '_', '+' or '-', "
            "without a path and without the .onnx suffix (see: watchd models list)"
        )
    return name


def _watch_name(value: Any) -> str:
    name = _string(value)
    if not _NAME_RE.fullmatch(name):  # match() with "$" would accept a trailing newline
        raise BadValue(
            f"{name!r} is not a usable name: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, at most 64 characters"
        )
    return name


_COLOR_RE = re.compile(validate.COLOR_PATTERN)


def _color(value: Any) -> str:
    """A colour as "#rrggbb" (lower-cased)."""
    if not isinstance(value, str) or not _COLOR_RE.fullmatch(value):
        raise BadValue(f'expected a colour like "#ffffff", got {_describe(value)}')
    return value.lower()


def _argv(value: Any) -> tuple[str, ...]:
    """A command as an argument list (run without a shell), e.g. ["/usr/local/bin/x", "--y"]."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v and "\0" not in v for v in value)
    ):
        raise BadValue(
            'expected a non-empty list of arguments such as ["/usr/local/bin/publish", '
            f'"--quiet"] (no shell is used), got {_describe(value)}'
        )
    if not os.path.isabs(value[0]):
        raise BadValue(f"the program must be an absolute path, got {value[0]!r}")
    return tuple(value)


def _url(value: Any) -> str:
    """An http:// or https:// URL."""
    url = _string(value)
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", url):
        raise BadValue(f"expected an http:// or https:// URL, got {url!r}")
    return url


#: onnxruntime's providers when ``[pool] providers`` is not set: the CPU, which is everywhere.
DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)


def _providers(value: Any) -> tuple[str, ...]:
    """onnxruntime execution providers in order of preference, e.g. CUDA then CPU."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v.endswith("ExecutionProvider") for v in value)
    ):
        raise BadValue(
            'expected a non-empty list of provider names such as ["CUDAExecutionProvider", '
            f'"CPUExecutionProvider"], got {_describe(value)}'
        )
    return tuple(value)


def _octal_mode(value: Any) -> int:
    """A file mode written as an octal string ("0660"), as in chmod; 0..0777."""
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
        raise BadValue(f'expected an octal mode like "0660", got {_describe(value)}')
    return int(value, 8)


def _path(value: Any) -> str:
    return _string(value)


def _ignore_patterns(value: Any) -> tuple[str, ...]:
    """Glob patterns (``*``, ``?``, ``[abc]``) each matched against one name, a file's or a
    folder's, case-insensitively; a trailing ``/`` is allowed and dropped (``"Proofs/"``)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadValue(
            f'expected a list of patterns such as ["*.bak", "Drafts/"], got {_describe(value)}'
        )
    patterns: list[str] = []
    for raw in value:
        pattern = raw[:-1] if raw.endswith("/") else raw
        if not pattern or "\0" in pattern:
            raise BadValue(f"{raw!r} is not a pattern: it must name something")
        if "/" in pattern:
            raise BadValue(
                f"{raw!r}: a pattern matches one name (a file or a folder), not a path; "
                f"use {pattern.rsplit('/', 1)[-1]!r} to ignore that name at any depth"
            )
        if pattern.strip("*") == "":
            raise BadValue(f"{raw!r} would ignore every file, so nothing would ever be taken")
        patterns.append(pattern)
    return tuple(patterns)


_SCHEDULER_RE = re.compile(r"(tcp|tls)://([^\s/:\[\]]+|\[[0-9a-fA-F:]+\]):[0-9]{1,5}")


def _scheduler_address(value: Any) -> str:
    """A Dask scheduler address: tcp://HOST:PORT or tls://HOST:PORT."""
    address = _string(value)
    if not _SCHEDULER_RE.fullmatch(address):
        raise BadValue(f'expected an address like "tcp://scheduler-host:8786", got {address!r}')
    return address


# --- product shots and the quality gate (issue 18) --------------------------------------------


_CANVAS_RE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")

#: The largest canvas side (pixels): 20,000 x 20,000 RGBA is 1.6 GB, the most a worker takes.
MAX_CANVAS_SIDE = 20_000


def parse_canvas(text: str) -> tuple[int, int]:
    """``"2000x2000"`` -> (2000, 2000); ValueError with what was expected otherwise."""
    match = _CANVAS_RE.fullmatch(text)
    if match is None:
        raise ValueError(f'expected a size like "2000x2000" (width x height), got {text!r}')
    size = int(match[1]), int(match[2])
    if max(size) > MAX_CANVAS_SIDE:
        raise ValueError(f"each side must be at most {MAX_CANVAS_SIDE} pixels, got {text!r}")
    return size


def parse_margin(value: int | str) -> tuple[float, bool]:
    """``24`` (pixels) or ``"5%"`` (of the subject's box) -> (amount, is_percent)."""
    if isinstance(value, str):
        if not value.endswith("%"):
            raise ValueError(f'expected pixels (24) or a percentage ("5%"), got {value!r}')
        try:
            share = float(value[:-1])
        except ValueError:
            raise ValueError(f'expected a percentage such as "5%", got {value!r}') from None
        if not 0 <= share <= 1000:
            raise ValueError(f"a percentage from 0% to 1000%, got {value!r}")
        return share, True
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100_000:
        raise ValueError(f"expected pixels from 0 to 100000, got {value!r}")
    return float(value), False


def _checked_by(check: Callable[[Any], object], value: Any) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise BadValue(str(exc)) from None


def _canvas(value: Any) -> str:
    """A canvas size "WxH" (pixels), e.g. "2000x2000" (watchd/imaging/product.py)."""
    if not isinstance(value, str):
        raise BadValue(f'expected a size like "2000x2000", got {_describe(value)}')
    _checked_by(parse_canvas, value)
    return value


def _margin(value: Any) -> int | str:
    """Pixels (24) or a percentage of the subject's box ("5%") (watchd/imaging/product.py)."""
    if not isinstance(value, int | str) or isinstance(value, bool):
        raise BadValue(f'expected pixels (24) or a percentage ("5%"), got {_describe(value)}')
    _checked_by(parse_margin, value)
    return value


def _review_if(value: Any) -> tuple[str, ...]:
    """ "default" (the calibrated set) or a list of conditions such as ["coverage < 0.02"]."""
    from watchd.quality import DEFAULT_REVIEW_IF, parse_conditions

    if value == "default":
        return DEFAULT_REVIEW_IF
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadValue(
            '"default" or a list of conditions such as ["coverage < 0.02", "uncertain > 0.08", '
            f'"clipped left right"], got {_describe(value)}'
        )
    _checked_by(parse_conditions, value)
    return tuple(condition.text for condition in parse_conditions(value))


#: Product-shot keys a sidecar may set too (they join OUTPUT_KEYS).
PRODUCT_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "crop": (_choice(*validate.CROPS), "none"),
    "margin": (_margin, 0),
    "canvas": (_canvas, None),
    "fill": (_number(0.05, 1.0), 0.85),
    "align": (_choice(*validate.ALIGNS), "center"),
}

#: Keys only the operator sets (a sidecar may not: a file outside the watch's folders, the gate).
QUALITY_WATCH_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "background_image": (_path, None),
    "review": (_path, None),
    "review_if": (_review_if, ()),
}


_DAEMON_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "state_dir": (_path, locate.DEFAULT_STATE_DIR),
    "models_dir": (_path, None),
    "log_format": (_choice("auto", "console", "json"), "auto"),
    "log_level": (_choice("debug", "info", "warning", "error"), "info"),
    "drain_seconds": (_number(0), 30.0),
    "rescan_interval": (_number(1), 60.0),
    "socket": (_path, None),
    "socket_mode": (_octal_mode, 0o660),
    "socket_group": (_string, None),
    "stats_file": (_path, None),
    "stats_interval": (_number(1, 86400), 10.0),
    "metrics_file": (_path, None),
    "keep_days": (_number(0), 90.0),
    "priority_aging": (_number(1, 86400 * 365), DaemonConfig.priority_aging),
    "cache_max_bytes": (_integer(0), DaemonConfig.cache_max_bytes),
}

_POOL_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "workers": (_integer(1, 256), None),
    "threads_per_worker": (_integer(1, 256), 1),
    "max_attempts": (_integer(1, 100), 3),
    "file_timeout": (_number(1), 300.0),
    "providers": (_providers, DEFAULT_PROVIDERS),
    "require_accelerator": (_boolean, False),
    "backend": (_choice("local", "dask"), PoolConfig.backend),
    "scheduler": (_scheduler_address, None),
    "dispatch_window": (_integer(1, 1_000_000), None),
    "tls_ca_file": (_path, None),
    "tls_client_cert": (_path, None),
    "tls_client_key": (_path, None),
    "model_cache": (_integer(1, 64), PoolConfig.model_cache),
    "memory_arena": (_boolean, PoolConfig.memory_arena),
    "lone_file_uses_all_cores": (_boolean, PoolConfig.lone_file_uses_all_cores),
    "max_files_per_worker": (_integer(1, 1_000_000_000), None),
}

#: Keys a job's sidecar ``watchd.toml`` may set (the model and how outputs look), with
#: the defaults of a watch. Everything else (folders, hooks) belongs to the operator.
OUTPUT_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "model": (_model_name, "u2netp"),
    "format": (_choice(*validate.FORMATS), OutputConfig.format),
    "png_compress_level": (_integer(0, 9), OutputConfig.png_compress_level),
    "jpeg_quality": (_integer(1, 100), OutputConfig.jpeg_quality),
    "background": (_color, None),
    "alpha_matting": (_boolean, OutputConfig.alpha_matting),
    "alpha_matting_foreground_threshold": (
        _integer(0, 255),
        OutputConfig.alpha_matting_foreground_threshold,
    ),
    "alpha_matting_background_threshold": (
        _integer(0, 255),
        OutputConfig.alpha_matting_background_threshold,
    ),
    "alpha_matting_erode_size": (_integer(0, 255), OutputConfig.alpha_matting_erode_size),
    "post_process_mask": (_boolean, OutputConfig.post_process_mask),
    "only_mask": (_boolean, OutputConfig.only_mask),
    "priority": (_integer(validate.MIN_PRIORITY, validate.MAX_PRIORITY), WatchConfig.priority),
    **PRODUCT_KEYS,
    # issue 18, part B: what to do with an input seen before (watchd/content_cache.py)
    "duplicates": (_choice("reprocess", "reuse", "skip"), WatchConfig.duplicates),
}

#: Sidecar keys that say how a job is routed, not how its outputs look: every other key of
#: :data:`OUTPUT_KEYS` is a field of :class:`OutputConfig` (and so part of the cache key).
JOB_ONLY_KEYS = ("model", "priority", "duplicates")

_WATCH_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "name": (_watch_name, None),
    "inbox": (_path, None),
    "outbox": (_path, None),
    "archive": (_path, None),
    "failed": (_path, None),
    **OUTPUT_KEYS,
    "settle_seconds": (_number(0, 3600), 2.0),
    "after": (_choice("archive", "delete", "keep"), "archive"),
    "method": (_choice("auto", "inotify", "poll"), "auto"),
    "poll_interval": (_number(0.1, 3600), 5.0),
    "max_file_bytes": (_integer(1), 200 * 1024 * 1024),
    "manifest": (_boolean, HooksConfig.manifest),
    "on_complete": (_argv, None),
    "on_complete_timeout": (_number(1, 86400), HooksConfig.on_complete_timeout),
    "webhook_url": (_url, None),
    "webhook_secret": (_string, None),
    "ignore": (_ignore_patterns, WatchConfig.ignore),
    "case_sensitive_names": (_boolean, WatchConfig.case_sensitive_names),
    "stuck_after": (_number(1, 86400 * 365), WatchConfig.stuck_after),
    "stuck_note_after": (_number(0, 86400 * 365), WatchConfig.stuck_note_after),
    **QUALITY_WATCH_KEYS,
}


def _listen(value: Any) -> tuple[tuple[str, int], ...]:
    """One "host:port" or a list of them; IPv6 hosts in brackets ("[::1]:8765")."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise BadValue(f'expected "host:port" or a list of them, got {_describe(value)}')
    result = []
    for item in items:
        match = _LISTEN_RE.fullmatch(item) if isinstance(item, str) else None
        if match is None or int(match["port"]) > 65535:
            raise BadValue(f'expected "host:port" such as "127.0.0.1:8765", got {_describe(item)}')
        host = match["host"].strip("[]")
        result.append((host, int(match["port"])))
    return tuple(result)


_LISTEN_RE = re.compile(r"(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


def _origins(value: Any) -> tuple[str, ...]:
    """Browser origins allowed to call the API ("https://shop.example"), or ["*"]."""
    if not isinstance(value, list) or not all(
        isinstance(v, str) and (v == "*" or re.fullmatch(r"https?://[^\s/]+", v)) for v in value
    ):
        raise BadValue(
            'expected a list of origins such as ["https://shop.example"] (scheme and host, '
            f"no path), got {_describe(value)}"
        )
    return tuple(value)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or "localhost": only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: The [http] keys; ``listen`` has no default in a file: a file without [http] has no HTTP door.
_HTTP_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "listen": (_listen, None),
    "tokens_file": (_path, None),
    "max_upload_bytes": (_integer(1), 512 * 1024 * 1024),
    "max_files_per_job": (_integer(1, 1_000_000), 1000),
    "max_queued_files": (_integer(1), 10_000),
    "watch": (_watch_name, None),
    "cors_origins": (_origins, ()),
    "tls_cert": (_path, None),
    "tls_key": (_path, None),
    "remove_timeout": (_number(1, 86400), 300.0),
}

#: The built-in configuration (``make run``) listens here, so a new user can try it at once.
DEFAULT_HTTP: Mapping[str, Any] = {"listen": "127.0.0.1:8765"}

_TOP_KEYS = ("daemon", "pool", "watch", "http")

DEFAULT_WATCH: Mapping[str, Any] = {
    "name": "default",
    "inbox": "inbox",
    "outbox": "outbox",
    "archive": "archive",
    "failed": "failed",
}


class _Reader:
    """Validates one table against a key table, collecting the file name for messages."""

    def __init__(self, source: Path | None) -> None:
        self.where = str(source) if source else "the built-in default configuration"

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key}: {message}")

    def table(
        self,
        prefix: str,
        raw: Any,
        keys: Mapping[str, tuple[Callable[[Any], Any], Any]],
        defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.error(prefix, f"expected a table, got {_describe(raw)}")
        for key in raw:
            if key not in keys:
                raise self.error(f"{prefix}.{key}", "unknown key" + _did_you_mean(key, keys))
        values: dict[str, Any] = {}
        for key, (parse, default) in keys.items():
            if key in raw:
                try:
                    values[key] = parse(raw[key])
                except BadValue as exc:
                    raise self.error(f"{prefix}.{key}" if prefix else key, str(exc)) from None
            else:
                values[key] = defaults[key] if defaults and key in defaults else default
        return values


def _did_you_mean(key: str, options: Mapping[str, Any] | tuple[str, ...]) -> str:
    import difflib  # only for a mistake: not on every CLI call's path

    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_pool(reader: _Reader, pool: PoolConfig) -> None:
    if pool.backend == "dask" and pool.scheduler is None:
        raise reader.error("pool.scheduler", 'backend = "dask" needs the scheduler\'s address')
    tls = [pool.tls_ca_file, pool.tls_client_cert, pool.tls_client_key]
    if any(tls) and not all(tls):
        raise reader.error(
            "pool.tls_ca_file", "set tls_ca_file, tls_client_cert and tls_client_key together"
        )
    if any(tls) and not (pool.scheduler or "").startswith("tls://"):
        raise reader.error("pool.scheduler", "the tls_* keys need a tls:// scheduler address")
    if pool.backend == "dask" and pool.max_files_per_worker is not None:
        raise reader.error(
            "pool.max_files_per_worker",
            'applies to the local pool only; with backend = "dask" recycle workers on their '
            "hosts (dask worker --lifetime, docs/scale-out.md)",
        )


def load_config(path: Path | None) -> Config:
    """Read and validate a config file; ``None`` gives the embedded default rooted at the cwd."""
    if path is None:
        return build_config({}, source=None, base=Path.cwd())
    raw = read_toml(path)
    absolute = path.resolve()
    return build_config(raw, source=absolute, base=absolute.parent)


def build_config(raw: Mapping[str, Any], *, source: Path | None, base: Path) -> Config:
    """Validate a parsed TOML document; relative paths are resolved against ``base``."""
    reader = _Reader(source)
    for key in raw:
        if key not in _TOP_KEYS:
            raise reader.error(key, "unknown section" + _did_you_mean(key, _TOP_KEYS))

    def resolve(value: str) -> Path:
        return locate.resolve(base, value)

    daemon_raw = reader.table("daemon", raw.get("daemon", {}), _DAEMON_KEYS)
    where = locate.daemon_paths(
        base, daemon_raw["state_dir"], daemon_raw["socket"], daemon_raw["stats_file"]
    )
    daemon = DaemonConfig(
        state_dir=where.state_dir,
        models_dir=resolve(daemon_raw["models_dir"]) if daemon_raw["models_dir"] else None,
        log_format=daemon_raw["log_format"],
        log_level=daemon_raw["log_level"],
        drain_seconds=daemon_raw["drain_seconds"],
        rescan_interval=daemon_raw["rescan_interval"],
        socket=where.socket,
        socket_mode=daemon_raw["socket_mode"],
        socket_group=daemon_raw["socket_group"],
        stats_file=where.stats_file,
        stats_interval=daemon_raw["stats_interval"],
        metrics_file=resolve(daemon_raw["metrics_file"]) if daemon_raw["metrics_file"] else None,
        keep_days=daemon_raw["keep_days"],
        priority_aging=daemon_raw["priority_aging"],
        cache_max_bytes=daemon_raw["cache_max_bytes"],
    )
    pool_raw = reader.table("pool", raw.get("pool", {}), _POOL_KEYS)
    pool = PoolConfig(
        workers=pool_raw["workers"] or _default_workers(),
        threads_per_worker=pool_raw["threads_per_worker"],
        max_attempts=pool_raw["max_attempts"],
        file_timeout=pool_raw["file_timeout"],
        providers=pool_raw["providers"],
        require_accelerator=pool_raw["require_accelerator"],
        backend=pool_raw["backend"],
        scheduler=pool_raw["scheduler"],
        dispatch_window=pool_raw["dispatch_window"],
        tls_ca_file=resolve(pool_raw["tls_ca_file"]) if pool_raw["tls_ca_file"] else None,
        tls_client_cert=(
            resolve(pool_raw["tls_client_cert"]) if pool_raw["tls_client_cert"] else None
        ),
        tls_client_key=resolve(pool_raw["tls_client_key"]) if pool_raw["tls_client_key"] else None,
        model_cache=pool_raw["model_cache"],
        memory_arena=pool_raw["memory_arena"],
        lone_file_uses_all_cores=pool_raw["lone_file_uses_all_cores"],
        max_files_per_worker=pool_raw["max_files_per_worker"],
    )
    _check_pool(reader, pool)
    watches_raw = raw.get("watch", [DEFAULT_WATCH] if source is None else None)
    if not isinstance(watches_raw, list) or not watches_raw:
        raise reader.error("watch", "at least one [[watch]] table is needed")
    watches = tuple(
        _build_watch(reader, f"watch[{index}]", item, resolve)
        for index, item in enumerate(watches_raw)
    )
    _check_watches(reader, watches, daemon)
    http_raw = raw.get("http", DEFAULT_HTTP if source is None else None)
    http = None if http_raw is None else _build_http(reader, http_raw, watches, resolve)
    return Config(source=source, daemon=daemon, pool=pool, watches=watches, http=http)


def _build_http(
    reader: _Reader,
    raw: Any,
    watches: tuple[WatchConfig, ...],
    resolve: Callable[[str], Path],
) -> HttpConfig:
    """``[http]``: refuses a door open to the network without tokens, naming the key."""
    values = reader.table("http", raw, _HTTP_KEYS)
    if values["listen"] is None:
        raise reader.error("http.listen", 'missing: say where to listen, e.g. "127.0.0.1:8765"')
    names = [w.name for w in watches]
    watch = values["watch"] or names[0]
    if watch not in names:
        raise reader.error(
            "http.watch", f"no watch named {watch!r} (configured: {', '.join(names)})"
        )
    if values["tokens_file"] is None:
        public = [h for h, _ in values["listen"] if not is_loopback(h)]
        if public:
            raise reader.error(
                "http.tokens_file",
                f"required: http.listen includes {public[0]!r}, which is not loopback, and an "
                "HTTP door open to the network without tokens would let anyone use it",
            )
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise reader.error("http.tls_cert", "set tls_cert and tls_key together")
    return HttpConfig(
        listen=values["listen"],
        tokens_file=resolve(values["tokens_file"]) if values["tokens_file"] else None,
        max_upload_bytes=values["max_upload_bytes"],
        max_files_per_job=values["max_files_per_job"],
        max_queued_files=values["max_queued_files"],
        watch=watch,
        cors_origins=values["cors_origins"],
        tls_cert=resolve(values["tls_cert"]) if values["tls_cert"] else None,
        tls_key=resolve(values["tls_key"]) if values["tls_key"] else None,
        remove_timeout=values["remove_timeout"],
    )


def _build_watch(
    reader: _Reader, prefix: str, raw: Any, resolve: Callable[[str], Path]
) -> WatchConfig:
    values = reader.table(prefix, raw, _WATCH_KEYS)
    for required in ("name", "inbox", "outbox"):
        if values[required] is None:
            raise reader.error(f"{prefix}.{required}", "missing (required)")
    if values["stuck_after"] <= values["settle_seconds"]:
        raise reader.error(
            f"{prefix}.stuck_after",
            f"must be longer than settle_seconds ({values['settle_seconds']:g}), "
            f"got {values['stuck_after']:g}: a file being written normally would be reported",
        )
    if 0 < values["stuck_note_after"] < values["stuck_after"]:
        raise reader.error(
            f"{prefix}.stuck_note_after",
            f"must be 0 (no note) or at least stuck_after ({values['stuck_after']:g}), "
            f"got {values['stuck_note_after']:g}",
        )
    inbox = resolve(values["inbox"])
    # archive and failed default to folders beside the inbox, where the people who use the
    # inbox can find them; watches that share them still never overwrite each other's files.
    sibling = inbox.parent
    archive = resolve(values["archive"]) if values["archive"] else sibling / "archive"
    failed = resolve(values["failed"]) if values["failed"] else sibling / "failed"
    background_image = values["background_image"]
    return WatchConfig(
        name=values["name"],
        inbox=inbox,
        outbox=resolve(values["outbox"]),
        archive=archive,
        failed=failed,
        model=values["model"],
        settle_seconds=values["settle_seconds"],
        after=values["after"],
        method=values["method"],
        poll_interval=values["poll_interval"],
        max_file_bytes=values["max_file_bytes"],
        output=_output(
            reader, prefix, values, str(resolve(background_image)) if background_image else None
        ),
        hooks=HooksConfig(
            manifest=values["manifest"],
            on_complete=values["on_complete"],
            on_complete_timeout=values["on_complete_timeout"],
            webhook_url=values["webhook_url"],
            webhook_secret=values["webhook_secret"],
        ),
        priority=values["priority"],
        ignore=values["ignore"],
        case_sensitive_names=values["case_sensitive_names"],
        stuck_after=values["stuck_after"],
        stuck_note_after=values["stuck_note_after"],
        review=resolve(values["review"]) if values["review"] else sibling / "review",
        review_if=values["review_if"],
        duplicates=values["duplicates"],
    )


def _output(
    reader: _Reader, prefix: str, values: Mapping[str, Any], background_image: str | None = None
) -> OutputConfig:
    """The output options of a watch or a sidecar; JPEG needs a background colour."""
    output = OutputConfig(
        **{key: values[key] for key in OUTPUT_KEYS if key not in JOB_ONLY_KEYS},
        background_image=background_image,
    )
    if output.background is not None and output.background_image is not None:
        raise reader.error(
            f"{prefix}.background_image" if prefix else "background",
            "set background (a colour) or background_image (a picture), not both",
        )
    if (
        output.format == "jpeg"
        and output.background is None
        and output.background_image is None
        and not output.only_mask
    ):
        raise reader.error(
            f"{prefix}.background" if prefix else "background",
            'format = "jpeg" has no transparency: set background = "#rrggbb" '
            "(the colour behind the cutout)",
        )
    return output


@dataclass(frozen=True)
class JobOverrides:
    """What a job's sidecar ``watchd.toml`` changes for that job only."""

    model: str
    output: OutputConfig
    priority: int
    duplicates: Duplicates = "reprocess"


def sidecar_overrides(path: Path, raw_text: bytes, watch: WatchConfig) -> JobOverrides:
    """Validate a job's sidecar (already read, ``raw_text``) against the watch it arrived in.

    Only :data:`OUTPUT_KEYS` are allowed; every error names the sidecar file and the
    key, because it ends up in the ``.error.txt`` the person who dropped the job reads.
    """
    return job_overrides(path, parse_toml(path, raw_text), watch)


def job_overrides(where: Path, raw: Mapping[str, Any], watch: WatchConfig) -> JobOverrides:
    """The overrides that ``raw`` (a sidecar's keys, or the options ``watchd submit`` gives)
    make of ``watch``'s options: one set of rules for every door that takes them. Errors
    name ``where`` (the sidecar file, or the request) and the key."""
    reader = _Reader(where)
    for key in raw:
        if key not in OUTPUT_KEYS:
            allowed = ", ".join(OUTPUT_KEYS)
            raise reader.error(
                key,
                "not allowed in a job's watchd.toml"
                + _did_you_mean(key, OUTPUT_KEYS)
                + f"; allowed keys: {allowed}",
            )
    base: dict[str, Any] = {
        key: getattr(watch.output, key) for key in OUTPUT_KEYS if key not in JOB_ONLY_KEYS
    }
    base["model"], base["priority"] = watch.model, watch.priority
    base["duplicates"] = watch.duplicates
    values = {**base, **reader.table("", dict(raw), OUTPUT_KEYS, defaults=base)}
    return JobOverrides(
        model=values["model"],
        output=_output(reader, "", values, watch.output.background_image),
        priority=values["priority"],
        duplicates=values["duplicates"],
    )


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_watches(reader: _Reader, watches: tuple[WatchConfig, ...], daemon: DaemonConfig) -> None:
    """Reject layouts that would lose or loop files: shared inboxes, outputs inside an inbox."""
    seen_names: set[str] = set()
    inboxes: dict[Path, str] = {}
    for index, watch in enumerate(watches):
        prefix = f"watch[{index}]"
        if watch.name in seen_names:
            raise reader.error(f"{prefix}.name", f"{watch.name!r} is used by two watches")
        seen_names.add(watch.name)
        if watch.inbox in inboxes:
            raise reader.error(
                f"{prefix}.inbox",
                f"{watch.inbox} is already the inbox of watch {inboxes[watch.inbox]!r}",
            )
        for other, owner in inboxes.items():  # nested: the outer watch would take the inner inbox
            if _inside(watch.inbox, other) or _inside(other, watch.inbox):
                raise reader.error(
                    f"{prefix}.inbox",
                    f"{watch.inbox} and the inbox of watch {owner!r} ({other}) are nested; "
                    "keep inboxes apart",
                )
        inboxes[watch.inbox] = watch.name
    all_targets = [
        (f"watch[{i}].{key}", getattr(w, key))
        for i, w in enumerate(watches)
        for key in ("outbox", "archive", "failed", "review")
        if getattr(w, key) is not None
    ]
    all_targets.append(("daemon.state_dir", daemon.state_dir))
    for index, watch in enumerate(watches):
        for key, target in all_targets:
            if _inside(watch.inbox, target) or _inside(target, watch.inbox):
                raise reader.error(
                    f"watch[{index}].inbox",
                    f"{watch.inbox} and {key} ({target}) overlap: the daemon would take its "
                    "own output as new input; keep inbox and output folders apart",
                )
