"""The exception tree of watchd.

Callers catch what they mean: a bad config is reported to the operator and the
daemon does not start; a rejected input costs one file and is written next to
the original as ``<name>.error.txt``; a ledger error stops the daemon because
its memory can no longer be trusted.
"""


class WatchdError(Exception):
    """Base class for every error watchd raises on purpose."""


class ConfigError(WatchdError):
    """The configuration is invalid; the message names the file and the key."""


class ModelError(WatchdError):
    """A model is missing, corrupt or cannot be fetched."""


class LedgerError(WatchdError):
    """The ledger cannot be opened, migrated or used."""


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
