"""systemd's notify protocol: one datagram per state change to ``$NOTIFY_SOCKET``.

Without ``NOTIFY_SOCKET`` (not run by systemd with Type=notify) every call does nothing.
"""

from __future__ import annotations

import os
import socket

from grantexd.logging import get_logger

log = get_logger()


def notify(state: str) -> bool:
    """Send ``state`` (for example ``READY=1``); return False when there is no socket to send to."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        # An abstract socket: its name starts with a NUL byte instead of the "@".
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("systemd.notify.failed", state=state, error=str(exc))
        return False
    return True


def watchdog_interval_seconds() -> float | None:
    """Return how often to send WATCHDOG=1 (half of WatchdogSec), or None if it is off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit():
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2
