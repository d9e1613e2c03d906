"""Migrations run by the real daemon and by ``grantexd migrate``, on fresh databases."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from grantexd.dev import free_port
from grantexd.store.migrations import bundled_migrations
from tests.database_locks import MIGRATION_LOCK_KEY, held_transaction
from tests.support import REPOSITORY, Backends, daemon_environment, new_daemon, query, stop_quietly

BUNDLED_NAMES = [migration.name for migration in bundled_migrations()]


def run_migrate(backends: Backends, database_url: str) -> tuple[int, list[dict[str, Any]]]:
    environ = daemon_environment(database_url, backends.redis_url, free_port())
    completed = subprocess.run(
        [sys.executable, "-m", "grantexd", "migrate"],
        env=environ,
        cwd=REPOSITORY,
        capture_output=True,
        timeout=60,
    )
    lines = [json.loads(line) for line in completed.stdout.decode().splitlines() if line.strip()]
    return completed.returncode, lines


def recorded_names(database_url: str) -> list[str]:
    return [row["name"] for row in query(database_url, "SELECT name FROM grantexd_migrations ORDER BY name")]


def test_migrations_two_daemons_at_once(backends: Backends, database_url: str) -> None:
    first = new_daemon(backends, database_url)
    second = new_daemon(backends, database_url)
    try:
        first.start(wait_ready=False)
        second.start(wait_ready=False)
        first.wait_ready()
        second.wait_ready()
    finally:
        stop_quietly(first)
        stop_quietly(second)

    assert recorded_names(database_url) == BUNDLED_NAMES
    applied = [
        line["migration"]
        for daemon in (first, second)
        for line in daemon.json_lines()
        if line.get("msg") == "migration.applied"
    ]
    assert sorted(applied) == BUNDLED_NAMES


def test_migrations_lock_wait_outlasts_command_timeout(backends: Backends, database_url: str) -> None:
    daemon = new_daemon(backends, database_url, DB_COMMAND_TIMEOUT="1")
    try:
        with held_transaction(database_url, f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"):
            daemon.start(wait_ready=False)
            deadline = time.monotonic() + 20
            while not any('"migration.lock.waiting"' in line for line in daemon.lines):
                assert daemon.process is not None and daemon.process.poll() is None, daemon.output()
                assert time.monotonic() < deadline, daemon.output()
                time.sleep(0.02)
            # Hold the lock past the command timeout, as a slow migration elsewhere would.
            time.sleep(1.5)
        daemon.wait_ready()
    finally:
        stop_quietly(daemon)

    assert recorded_names(database_url) == BUNDLED_NAMES


def test_migrations_changed_file_stops_startup(backends: Backends, database_url: str) -> None:
    status, _ = run_migrate(backends, database_url)
    assert status == 0
    changed = BUNDLED_NAMES[0]
    query(database_url, "UPDATE grantexd_migrations SET checksum = $1 WHERE name = $2", "0" * 64, changed)

    daemon = new_daemon(backends, database_url)
    try:
        daemon.start(wait_ready=False)
        status = daemon.wait_exit(30)
    finally:
        stop_quietly(daemon)

    assert status == 1
    fatal = [line for line in daemon.json_lines() if line.get("level") == "fatal"]
    assert len(fatal) == 1
    assert fatal[0]["msg"] == "startup.failed"
    assert f"migration {changed} was changed after it was applied" in fatal[0]["error"]
    assert "startup.http.listening" not in [line.get("msg") for line in daemon.json_lines()]


def test_migrations_failed_file_named(backends: Backends, database_url: str) -> None:
    # A view named like a table makes the first migration's CREATE TABLE IF NOT EXISTS a no-op
    # and its CREATE INDEX fail, as a database left in an unexpected state would.
    query(database_url, "CREATE VIEW developers AS SELECT 1 AS id")

    daemon = new_daemon(backends, database_url)
    try:
        daemon.start(wait_ready=False)
        status = daemon.wait_exit(30)
    finally:
        stop_quietly(daemon)

    assert status == 1
    fatal = [line for line in daemon.json_lines() if line.get("level") == "fatal"]
    assert len(fatal) == 1
    assert fatal[0]["msg"] == "startup.failed"
    assert f"migration {BUNDLED_NAMES[0]} failed and was rolled back" in fatal[0]["error"]
    assert recorded_names(database_url) == []


def test_migrate_command(backends: Backends, database_url: str) -> None:
    first_status, first_lines = run_migrate(backends, database_url)
    second_status, second_lines = run_migrate(backends, database_url)

    assert first_status == 0
    assert recorded_names(database_url) == BUNDLED_NAMES
    assert query(database_url, "SELECT to_regclass('agents') IS NOT NULL AS present") == [{"present": True}]
    first_done = [line for line in first_lines if line.get("msg") == "migrate.done"]
    assert len(first_done) == 1
    assert first_done[0]["applied"] == BUNDLED_NAMES
    assert second_status == 0
    second_done = [line for line in second_lines if line.get("msg") == "migrate.done"]
    assert len(second_done) == 1
    assert second_done[0]["applied"] == []


def test_migrate_command_changed_file(backends: Backends, database_url: str) -> None:
    status, _ = run_migrate(backends, database_url)
    assert status == 0
    query(database_url, "UPDATE grantexd_migrations SET checksum = $1 WHERE name = $2", "0" * 64, BUNDLED_NAMES[0])

    status, lines = run_migrate(backends, database_url)

    assert status == 1
    fatal = [line for line in lines if line.get("level") == "fatal"]
    assert len(fatal) == 1
    assert fatal[0]["msg"] == "migrate.failed"
    assert BUNDLED_NAMES[0] in fatal[0]["error"]


def test_migrate_command_unreachable_database(backends: Backends) -> None:
    # Nothing listens on a free loopback port, so the connection is refused at once.
    status, lines = run_migrate(backends, f"postgresql://postgres@127.0.0.1:{free_port()}/grantex")

    assert status == 1
    fatal = [line for line in lines if line.get("level") == "fatal"]
    assert len(fatal) == 1
    assert fatal[0]["msg"] == "migrate.failed"
    assert "PostgreSQL" in fatal[0]["error"]
