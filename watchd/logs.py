"""Logging setup: structlog, readable on a terminal, JSON lines for journald and log shippers.

One event per job and per file, with ids and durations, so an operator can
follow a single photo through ``journalctl -u watchd -o cat | jq``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once for the process (``fmt``: auto, console or json)."""
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


#: What a library's log record becomes: the event name and the record's fields.
_bridge_log = structlog.get_logger()


class StdlibBridge(logging.Handler):
    """A library's stdlib ``logging`` records (warnings and up), re-emitted as structlog events.

    Libraries (watchdog, distributed) log through the stdlib ``logging`` module, which
    the daemon does not format: their records would be plain-text lines in a JSON log,
    breaking ``journalctl -o cat | jq``. Each record becomes one ``event`` with the
    logger's name, the message and, when it carries one, the error (``Type: message``)
    and, with ``tracebacks``, the formatted traceback as ``exception``.

    ``intercept(record, message)`` sees each record first; when it returns True the
    record was a signal for the caller (watchdog's "queue overflowed") and is not logged.
    """

    def __init__(
        self,
        event: str,
        *,
        tracebacks: bool = False,
        intercept: Callable[[logging.LogRecord, str], bool] | None = None,
    ) -> None:
        super().__init__(logging.WARNING)
        self.event = event
        self._tracebacks = tracebacks
        self._intercept = intercept

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in a library must not break its thread
            message = str(record.msg)
        if self._intercept is not None and self._intercept(record, message):
            return
        fields: dict[str, str] = {"logger": record.name, "message": message}
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            fields["error"] = f"{type(error).__name__}: {error}"
        if self._tracebacks and record.exc_info:
            fields["exception"] = logging.Formatter().formatException(record.exc_info)
        _bridge_log.log(record.levelno, self.event, **fields)


def bridge_stdlib_logs(names: Iterable[str], bridge: StdlibBridge) -> None:
    """Route the stdlib loggers ``names`` (warnings and up) through ``bridge`` only.

    Idempotent: a logger that already has a bridge for the same event keeps it. The
    loggers' own handlers (distributed gives itself a stderr one) are removed and they
    stop propagating, so each record is logged once, as a structlog event.
    """
    for name in names:
        logger = logging.getLogger(name)
        if any(isinstance(h, StdlibBridge) and h.event == bridge.event for h in logger.handlers):
            continue
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.addHandler(bridge)
        logger.setLevel(max(logger.level, logging.WARNING))
        logger.propagate = False
