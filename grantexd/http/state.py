"""Process state that request handlers read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RuntimeState:
    """Set ``draining`` when shutdown begins, so readiness probes turn away new traffic."""

    draining: bool = False
