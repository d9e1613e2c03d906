"""The ``grantexd`` command line."""

from __future__ import annotations

import argparse
import sys

from grantexd import __version__
from grantexd.key_commands import add_key_commands, run_key_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grantexd",
        description="Grantex delegated-authorization server. Configuration comes from the environment.",
    )
    parser.add_argument("--version", action="version", version=f"grantexd {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the daemon (the default command)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    add_key_commands(commands)
    audit = commands.add_parser("audit", help="check the audit log")
    audit_actions = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_actions.add_parser(
        "verify",
        help="recompute the audit hash chains",
        description="Recompute every entry's hash and link in chain order and log one JSON line per chain. "
        "Exit status: 0 when every chain is intact, 1 when one is broken, 2 when the check cannot run.",
    )
    verify.add_argument("--developer", metavar="ID", help="check only this developer's chain (default: every chain)")
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
    if command == "keys":
        return run_key_command(args)
    if command == "audit":
        from grantexd.commands import verify_audit

        return verify_audit(developer_id=args.developer)
    if command == "dev":
        from grantexd.dev import run_dev

        return run_dev(data_dir=args.data_dir, host=args.host, port=args.port)
    print(f"grantexd: unknown command {command!r}", file=sys.stderr)
    return 2
