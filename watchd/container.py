"""The container's entrypoint: check the settings, prepare the volumes, drop root, run.

Started as root (the image's default), it reads ``PUID``/``PGID``/``UMASK`` (the
linuxserver.io convention NAS users know) and the ``WATCHD_*`` variables, stops
with config.py's message if any is bad, creates the data folders that are
missing (owned by PUID:PGID, so share users can read and delete what watchd
writes), gives the state volume to PUID:PGID, puts the baked-in model into an
empty ``/models``, and then replaces itself with ``setpriv`` (util-linux, in every
Debian base) which becomes PUID:PGID with no supplementary groups, no
capabilities and no way back (no_new_privs) before it execs ``watchd run``.
The daemon is therefore never root, and it is PID 1's program, so ``docker
stop``'s SIGTERM reaches it directly and starts its drain.

Started as a non-root user (``docker run --user``), it skips the ownership part
and runs the daemon as that user.

``python -m watchd.container run`` is the ENTRYPOINT; ``check`` only validates.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from watchd.config import Config
from watchd.envconfig import Layout, load_from_env
from watchd.errors import ConfigError, ModelError
from watchd.models import ModelStore
from watchd.pool.factory import models_on_this_machine

EXIT_USAGE = 2

#: Where the image keeps its copy of the baked-in model (``/models`` may be an empty volume).
BAKED_MODELS = Path("/opt/watchd/models")

_ID_RE = re.compile(r"[0-9]{1,10}")
_UMASK_RE = re.compile(r"0?[0-7]{3}")
_MAX_ID = 2**31 - 2  # the largest id Linux hands out (-1 means "unchanged" to setresuid)


@dataclass(frozen=True)
class Identity:
    """Who the daemon runs as and the umask its files get."""

    uid: int
    gid: int
    umask: int


def _id(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    if not _ID_RE.fullmatch(text) or int(text) > _MAX_ID:
        raise ConfigError(
            f"environment variable {name}={text!r}: expected a numeric id "
            f"(0 to {_MAX_ID}), as `id -u` / `id -g` print it"
        )
    return int(text)


def identity_from_env(environ: Mapping[str, str]) -> Identity:
    """``PUID``, ``PGID`` (default 1000) and ``UMASK`` (default 022), validated."""
    uid = _id(environ, "PUID", 1000)
    gid = _id(environ, "PGID", 1000)
    if uid == 0:
        raise ConfigError(
            "environment variable PUID='0': the daemon never runs as root; "
            "use the id of the user who should own the outputs (`id -u` on the NAS)"
        )
    text = environ.get("UMASK", "").strip() or "022"
    if not _UMASK_RE.fullmatch(text):
        raise ConfigError(
            f'environment variable UMASK={text!r}: expected an octal umask like "022" or "002"'
        )
    return Identity(uid=uid, gid=gid, umask=int(text, 8))


def _folders(config: Config) -> list[Path]:
    folders = [config.daemon.state_dir]
    for watch in config.watches:
        folders += [watch.inbox, watch.outbox, watch.archive, watch.failed]
    return folders


def prepare(config: Config, who: Identity | None, baked: Path = BAKED_MODELS) -> None:
    """Create missing folders (owned by ``who`` when root) and seed the models volume.

    Existing data folders are left as they are: they are the user's share. The state
    folder is the daemon's own, so it is handed over whole when its owner differs (a
    changed PUID would otherwise lock the daemon out of its ledger).
    """
    for folder in _folders(config):
        if not folder.exists():
            folder.mkdir(parents=True)
            if who is not None:
                os.chown(folder, who.uid, who.gid)
    state = config.daemon.state_dir
    info = os.stat(state)
    if who is not None and (info.st_uid, info.st_gid) != (who.uid, who.gid):
        for root, dirs, files in os.walk(state):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), who.uid, who.gid, follow_symlinks=False)
        os.chown(state, who.uid, who.gid)
    models = config.daemon.models_dir
    if models is None or not baked.is_dir():
        return
    models.mkdir(parents=True, exist_ok=True)
    if not os.access(models, os.W_OK):
        return  # a read-only models volume: what is in it is what there is
    for model in baked.glob("*.onnx"):
        _seed(model, models / model.name, who)


def _seed(model: Path, target: Path, who: Identity | None) -> None:
    """Copy a baked model to ``target`` unless anything (also a link) is there already.

    O_EXCL with O_NOFOLLOW: the models volume is writable by PUID, and root must not
    write through a link PUID planted there.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        return
    try:
        with open(model, "rb") as src, open(fd, "wb", closefd=False) as dst:
            shutil.copyfileobj(src, dst)
        if who is not None:
            os.fchown(fd, who.uid, who.gid)
    finally:
        os.close(fd)


def check_models(config: Config, environ: Mapping[str, str]) -> None:
    """Each watch's model is installed and intact; a bad one names WATCHD_MODEL if it set it.

    The daemon checks this too (preflight), but only here can the message name the
    variable, which is what a compose-file user has to change.
    """
    if not models_on_this_machine(config):
        return  # the models live on the worker hosts
    store = ModelStore(config.daemon.models_dir)
    chosen = environ.get("WATCHD_MODEL", "").strip()
    for index, watch in enumerate(config.watches):
        try:
            store.verify(watch.model)
        except ModelError as exc:
            where = f"environment variable WATCHD_MODEL={chosen!r}: " if chosen else ""
            raise ConfigError(f"{where}watch[{index}].model: {exc}") from None


def _daemon_argv() -> list[str]:
    return [sys.executable, "-m", "watchd", "run"]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``run``: prepare, drop privileges and exec the daemon (returns only on an error);
    ``check``: validate the variables and the model, exit 0 or 2 with the message."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if args not in (["run"], ["check"]):
        print("usage: python -m watchd.container run|check", file=sys.stderr)
        return EXIT_USAGE
    try:
        who = identity_from_env(env)
        config = load_from_env(env, Layout())
    except ConfigError as exc:
        print(f"watchd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    root = os.geteuid() == 0
    os.umask(who.umask)  # the folders created here get it too
    try:
        if args == ["run"]:
            prepare(config, who if root else None)
        check_models(config, env)
    except (ConfigError, OSError) as exc:
        print(f"watchd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args == ["check"]:
        return 0
    os.environ["HOME"] = str(config.daemon.state_dir)  # root's home is not the daemon's
    if not root:
        os.execv(sys.executable, _daemon_argv())
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    os.execv(
        setpriv,
        [
            "setpriv",
            f"--reuid={who.uid}",
            f"--regid={who.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--no-new-privs",
            "--",
            *_daemon_argv(),
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())
