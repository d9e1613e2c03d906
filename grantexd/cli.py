"""The ``grantexd`` command line."""

from __future__ import annotations

import argparse
import sys

from grantexd import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grantexd",
        description="Grantex delegated-authorization server. Configuration comes from the environment.",
    )
    parser.add_argument("--version", action="version", version=f"grantexd {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the daemon (the default command)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    dev = commands.add_parser(
        "dev", help="run the daemon on embedded PostgreSQL and Redis, with generated keys, for development"
    )
    dev.add_argument(
        "--data-dir",
        help="where the embedded servers keep their data (default: the user's data directory)",
    )
    dev.add_argument("--port", type=int, default=3001, help="HTTP port to listen on (default: 3001)")
    dev.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    if command == "serve":
        from grantexd.commands import serve

        return serve()
    if command == "migrate":
        from grantexd.commands import migrate

        return migrate()
    if command == "dev":
        from grantexd.dev import run_dev

        return run_dev(data_dir=args.data_dir, host=args.host, port=args.port)
    print(f"grantexd: unknown command {command!r}", file=sys.stderr)
    return 2
