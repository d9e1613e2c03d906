"""The OpenAPI document describes exactly the routes the application serves."""

from __future__ import annotations

import re

import httpx

from tests.support import Daemon


def test_openapi_matches_routes(daemon: Daemon) -> None:
    document = httpx.get(f"{daemon.base_url}/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    documented = {
        (method.upper(), path) for path, operations in document["paths"].items() for method in operations
    }

    # The running app's routes, through its own introspection: the Quart URL map.
    from grantexd.http.openapi import OPERATIONS

    served = _served_routes()
    assert documented == {(operation.method, operation.path) for operation in OPERATIONS}
    assert served - documented == set(), "routes without a description"
    assert documented - served == set(), "descriptions of routes that do not exist"


def test_openapi_references_resolve(daemon: Daemon) -> None:
    document = httpx.get(f"{daemon.base_url}/openapi.json").json()
    text = httpx.get(f"{daemon.base_url}/openapi.json").text
    for name in re.findall(r'"#/components/schemas/([A-Za-z]+)"', text):
        assert name in document["components"]["schemas"], name


def _served_routes() -> set[tuple[str, str]]:
    import types

    from grantexd.http.app import create_app
    from grantexd.http.state import RuntimeState

    # create_app only reads configuration while building routes, so a stand-in config suffices.
    config = types.SimpleNamespace(
        cors_allowed_origins=(), metrics_api_key=None, public_base_url="http://127.0.0.1", rate_limit_ip_per_minute=0
    )
    app = create_app(types.SimpleNamespace(config=config), RuntimeState())  # type: ignore[arg-type]
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method, path))
    return routes
