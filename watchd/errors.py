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
