"""The exception tree of watchd: every exception it defines, in one place.

Callers catch what they mean: a bad config is reported to the operator and the
daemon does not start; a rejected input costs one file and is written next to
the original as ``<name>.error.txt``; a ledger error stops the daemon because
its memory can no longer be trusted; a refused request is answered with a code
(control socket) or a status (HTTP) and a message that says what to fix.

::

    WatchdError
    ├── ConfigError
    ├── BadValue                 a value given to watchd is not what it must be
    ├── ModelError
    │   ├── ModelSourceFailed    one way of fetching a model did not work
    │   └── ChecksumMismatch     the bytes are not the model they claim to be
    ├── LedgerError
    │   ├── NotFound             no job or file with that id
    │   └── Conflict             the request does not fit the job's state
    ├── AccessDenied             a caller may not read or move a submitted path
    ├── ProtocolError            a control request failed (with an error code)
    ├── DaemonUnreachable        the client cannot talk to the daemon
    ├── ControlSocketError       the daemon cannot listen on its socket
    ├── UploadError              an HTTP upload is refused (with a status)
    ├── OutputMissing            a job's output is not where the ledger put it
    ├── ThumbnailError           a file cannot be pictured for the page (not an image)
    ├── InputRejected            one input file cannot be processed
    │   └── UnsafePath
    └── AttemptFailed            an attempt was lost: the file may be retried
        └── PoolBroken           the pool failed it without running it: not the file's fault
"""


class WatchdError(Exception):
    """Base class for every error watchd raises on purpose."""


class ConfigError(WatchdError):
    """The configuration is invalid; the message names the file and the key."""


class BadValue(WatchdError):
    """A value is not what it must be; the message says what was expected (watchd/validate.py).

    Raised without saying where the value came from: the door it came through (a config
    key, a control argument) adds that, in its own words.
    """


class ModelError(WatchdError):
    """A model is missing, corrupt or cannot be fetched."""


class ModelSourceFailed(ModelError):
    """One way of fetching a model did not work; ``ModelStore.pull`` tries the next one."""


class ChecksumMismatch(ModelError):
    """The bytes are not the model they claim to be (their md5 is not the known one)."""

    def __init__(self, actual: str, expected: str) -> None:
        super().__init__(f"md5 is {actual}, expected {expected}")


class LedgerError(WatchdError):
    """The ledger cannot be opened, migrated or used."""


class NotFound(LedgerError):
    """No job (or file) with that id: a mistyped id from an operator, not a broken ledger."""


class Conflict(LedgerError):
    """The request does not fit the current state (cancel a finished job, retry nothing)."""


class AccessDenied(WatchdError):
    """The caller could not do this themselves; the message says which path and why."""


class ProtocolError(WatchdError):
    """A control request failed with one of ``watchd.control.ERROR_CODES``.

    Raised by the server's checks, by the daemon's handler (through its future:
    ``not_found``, ``conflict``, ``unavailable``) and by ``ControlClient.call``
    when the daemon answers ``ok: false``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class DaemonUnreachable(WatchdError):
    """The client cannot talk to the daemon; the message names the socket path and the reason."""


class ControlSocketError(WatchdError):
    """The server cannot listen on its socket (in use, not a socket, unknown group, ...)."""


class UploadError(WatchdError):
    """An HTTP upload is refused; ``status`` is the HTTP answer, ``message`` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class OutputMissing(WatchdError):
    """The cutout is not (or no longer) where the ledger put it, or it is not a plain file."""


class ThumbnailError(WatchdError):
    """A file cannot be read as an image for its thumbnail (the page's route answers 415)."""


# --- the errors of one input file, then the pool's ---------------------------------------------


class InputRejected(WatchdError):
    """One input file cannot be processed; the message is shown to the person who dropped it."""


class UnsafePath(InputRejected):
    """An entry in the inbox is not a plain file that the daemon may read (symlink, device, ...)."""


class AttemptFailed(WatchdError):
    """This attempt was lost (worker crash, time limit, unexpected error): the file may be retried.

    Retries are bounded by ``max_attempts``, so an input that kills its worker
    every time still ends in the failed folder with this reason.
    """


class PoolBroken(AttemptFailed):
    """The pool failed this file without a worker running it to the end.

    Not the file's fault (a worker died while idle or starting, or a retired pool can no
    longer reach its cluster): the dispatcher gives the attempt back and queues the file
    again. Every backend raises this one, so the dispatcher never asks which backend it
    has; it is an :class:`AttemptFailed`, so code that only knows that still retries.
    """
