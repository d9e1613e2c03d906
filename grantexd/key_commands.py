"""``grantexd keys list|generate|rotate|retire``: manage the signing keys kept in PostgreSQL."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

import trio
import trio_asyncio

from grantexd.commands import command_pool_settings, load_config_or_log
from grantexd.crypto.keys import parse_key_encryption_key
from grantexd.errors import DatabaseUnavailable, leaf_exceptions
from grantexd.logging import configure_logging
from grantexd.services import keys
from grantexd.services.context import utc_now
from grantexd.services.timefmt import parse_duration, to_iso
from grantexd.store import signing_keys as key_store
from grantexd.store.database import Database
from grantexd.store.migrations import MigrationError, apply_migrations

# How long a rotated-in key is published before it signs: long enough for every instance to
# reload the key set (KEYS_REFRESH_INTERVAL, 60 s by default) and for verifiers that cache the
# JWKS to fetch it again.
DEFAULT_ACTIVATION_DELAY = "10m"


def add_key_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("keys", help="manage signing keys kept in PostgreSQL (needs KEY_ENCRYPTION_KEY)")
    actions = parser.add_subparsers(dest="keys_command", required=True)
    actions.add_parser("list", help="list the keys with their state")
    generate = actions.add_parser("generate", help="add a key that signs at once (or after --activate-in)")
    generate.add_argument("--activate-in", default="0s", help="delay before it signs, e.g. 10m (default: 0s)")
    rotate = actions.add_parser(
        "rotate", help=f"add a key that is published now and signs after a delay (default {DEFAULT_ACTIVATION_DELAY})"
    )
    rotate.add_argument("--activate-in", default=DEFAULT_ACTIVATION_DELAY, help="delay before it signs, e.g. 10m")
    retire = actions.add_parser("retire", help="withdraw a key from the JWKS now")
    retire.add_argument("kid", help="the key's kid, as `grantexd keys list` shows it")
    retire.add_argument("--force", action="store_true", help="retire even the key that signs now")


def run_key_command(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    configure_logging("warn")
    config = load_config_or_log(environ)
    if config is None:
        return 1
    if config.key_encryption_key is None:
        print("grantexd keys: KEY_ENCRYPTION_KEY is not set, so there is no stored key set to manage;"
              " with a single RSA_PRIVATE_KEY, rotate by replacing that key", file=sys.stderr)
        return 1
    kek = parse_key_encryption_key(config.key_encryption_key.reveal())

    async def with_database(action: Callable[[Database], Awaitable[int]]) -> int:
        async with trio_asyncio.open_loop():
            db = await Database.open(command_pool_settings(config, max_size=2))
            try:
                await apply_migrations(db)
                return await action(db)
            finally:
                await db.close()

    async def list_keys(db: Database) -> int:
        states = keys.classify_keys(await key_store.list_keys(db), utc_now())
        print(f"{'kid':<45} {'state':<11} {'published':<9} {'created':<24} {'signs from':<24} last token expires")
        for state in states:
            stored = state.stored
            last = to_iso(stored.last_token_expires_at) if stored.last_token_expires_at else "-"
            print(
                f"{stored.kid:<45} {state.state:<11} {'yes' if state.published else 'no':<9} "
                f"{to_iso(stored.created_at):<24} {to_iso(stored.activates_at):<24} {last}"
            )
        return 0

    async def add_key(db: Database, delay: timedelta) -> int:
        await keys.ensure_key_set(db, kek, None, utc_now())
        key = await keys.add_key(db, kek, utc_now() + delay)
        print(f"added key {key.kid}: published now, signs from {to_iso(utc_now() + delay)}")
        return 0

    async def retire_key(db: Database) -> int:
        await keys.retire(db, args.kid, utc_now(), args.force)
        await keys.ensure_key_set(db, kek, None, utc_now())
        print(f"retired key {args.kid}: withdrawn from the JWKS within KEYS_REFRESH_INTERVAL")
        return 0

    try:
        if args.keys_command == "list":
            return trio.run(with_database, list_keys)
        if args.keys_command in ("generate", "rotate"):
            delay = timedelta(0) if args.activate_in in ("0", "0s") else parse_duration(args.activate_in)
            if delay is None:
                print(f"grantexd keys: invalid --activate-in {args.activate_in!r}; use e.g. 30s, 10m or 1h",
                      file=sys.stderr)
                return 2
            return trio.run(with_database, lambda db: add_key(db, delay))
        return trio.run(with_database, retire_key)
    except Exception as exc:
        expected = [
            error
            for error in leaf_exceptions(exc)
            if isinstance(error, (keys.KeyStoreError, DatabaseUnavailable, MigrationError))
        ]
        if not expected:
            raise
        print(f"grantexd keys: {expected[0]}", file=sys.stderr)
        return 1
