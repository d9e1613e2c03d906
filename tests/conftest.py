"""Session fixtures: the PostgreSQL and Redis servers, and a shared daemon for protocol tests.

With TEST_DATABASE_URL and TEST_REDIS_URL set (CI sets them to the machine's services), tests
use those servers; without them the session starts embedded servers from the ``embedded``
extra in a temporary directory. Every daemon gets a new, empty database.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from grantexd.dev import EmbeddedPostgres, EmbeddedRedis
from tests.support import Backends, Daemon, create_database, drop_database, new_daemon, stop_quietly


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    database_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    if database_url and redis_url:
        parts = urlsplit(database_url)
        yield Backends(postgres_admin_url=urlunsplit(parts._replace(path="/postgres")), redis_url=redis_url)
        return
    # Outside pytest's temporary root: another pytest session resets that root to mode 0700,
    # which would lock out the embedded PostgreSQL, which runs as nobody when tests run as root.
    directory = Path(tempfile.mkdtemp(prefix="grantexd-test-servers-"))
    postgres = EmbeddedPostgres(directory / "postgres")
    redis = EmbeddedRedis(directory / "redis", persistent=False)
    postgres.start()
    redis.start()
    try:
        yield Backends(postgres_admin_url=postgres.url("postgres"), redis_url=redis.url())
    finally:
        redis.stop()
        postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def database_url(backends: Backends) -> Iterator[str]:
    url = create_database(backends)
    yield url
    drop_database(backends, url)


@pytest.fixture(scope="session")
def seeded_keys() -> dict[str, str]:
    return {
        "live": "gx_live_test_" + secrets.token_urlsafe(24),
        "sandbox": "gx_test_test_" + secrets.token_urlsafe(24),
    }


@pytest.fixture(scope="session")
def daemon(backends: Backends, seeded_keys: dict[str, str]) -> Iterator[Daemon]:
    """One daemon shared by the protocol tests; each test signs up its own developers."""
    url = create_database(backends)
    process = new_daemon(
        backends, url, SEED_API_KEY=seeded_keys["live"], SEED_SANDBOX_KEY=seeded_keys["sandbox"]
    )
    process.start()
    yield process
    stop_quietly(process)
    drop_database(backends, url)


@pytest.fixture
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
        yield http

