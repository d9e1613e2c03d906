"""A webhook receiver on 127.0.0.1 whose reply to each request is chosen by the test.

The receiver speaks HTTP/1.1 over plain sockets with one thread per connection. A test can
make it misbehave in ways a web framework would not allow: hang, reset the connection, send
a reply that is not HTTP, or stream a body without end. Every request it reads is recorded.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Maximum body bytes of one streamed reply, so that no send loop is unbounded.
MAX_STREAMED_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass(frozen=True)
class Reply:
    """Send this status with an optional body, then close the connection."""

    status: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Hold:
    """Send nothing until ``release`` is set (or the test ends), then reply ``then``."""

    release: threading.Event
    then: Reply = Reply()


@dataclass(frozen=True)
class Raw:
    """Send these bytes as the whole reply, then close."""

    data: bytes


@dataclass(frozen=True)
class Reset:
    """Close the connection with a TCP reset instead of replying."""


@dataclass(frozen=True)
class Endless:
    """Reply with this status and a chunked body that never ends (bounded by MAX_STREAMED_BYTES)."""

    status: int = 200


@dataclass(frozen=True)
class Trickle:
    """Reply with this status line and headers, then one body byte every ``interval_seconds``."""

    status: int = 200
    interval_seconds: float = 0.2


Action = Reply | Hold | Raw | Reset | Endless | Trickle


@dataclass
class Receiver:
    """The listening socket, the scripted replies per path, and the requests received."""

    tls_context: ssl.SSLContext | None = None
    requests: list[ReceivedRequest] = field(default_factory=list)
    _scripts: dict[str, list[Action]] = field(default_factory=dict)
    _condition: threading.Condition = field(default_factory=threading.Condition)
    _stopped: threading.Event = field(default_factory=threading.Event)
    _listener: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self._listener is not None
        port: int = self._listener.getsockname()[1]
        return port

    def url(self, path: str) -> str:
        scheme = "https" if self.tls_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *actions: Action) -> None:
        """Reply to requests for ``path`` with these actions in turn; the last one repeats."""
        with self._condition:
            self._scripts[path] = list(actions)

    def received(self, path: str | None = None) -> list[ReceivedRequest]:
        with self._condition:
            return [request for request in self.requests if path is None or request.path == path]

    def wait_for(self, count: int, path: str | None = None, timeout_seconds: float = 10) -> list[ReceivedRequest]:
        """Wait until ``count`` requests (to ``path``, if given) have arrived and return them."""
        deadline = time.monotonic() + timeout_seconds
        with self._condition:
            while True:
                found = [request for request in self.requests if path is None or request.path == path]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"received {len(found)} of {count} requests to {path or 'any path'} "
                        f"within {timeout_seconds} s"
                    )
                self._condition.wait(remaining)

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
        for thread in list(self._threads):
            thread.join(5)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                connection, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _next_action(self, path: str) -> Action:
        with self._condition:
            actions = self._scripts.get(path)
            if not actions:
                return Reply(404, b"no script for this path")
            return actions.pop(0) if len(actions) > 1 else actions[0]

    def _serve(self, connection: socket.socket) -> None:
        try:
            if self.tls_context is not None:
                connection.settimeout(5)
                try:
                    connection = self.tls_context.wrap_socket(connection, server_side=True)
                except (ssl.SSLError, OSError):
                    return
            connection.settimeout(30)
            request = _read_request(connection)
            if request is None:
                return
            with self._condition:
                self.requests.append(request)
                self._condition.notify_all()
            self._act(connection, self._next_action(request.path))
        except OSError:
            pass  # The daemon gave up on the connection first, which some tests cause on purpose.
        finally:
            connection.close()

    def _act(self, connection: socket.socket, action: Action) -> None:
        if isinstance(action, Reply):
            _send_reply(connection, action)
        elif isinstance(action, Hold):
            while not action.release.wait(0.1):
                if self._stopped.is_set():
                    return
            _send_reply(connection, action.then)
        elif isinstance(action, Raw):
            connection.sendall(action.data)
        elif isinstance(action, Reset):
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif isinstance(action, Endless):
            connection.sendall(f"HTTP/1.1 {action.status} Whatever\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b"x" * 65536
            framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            sent = 0
            while sent < MAX_STREAMED_BYTES and not self._stopped.is_set():
                connection.sendall(framed)
                sent += len(chunk)
        elif isinstance(action, Trickle):
            connection.sendall(f"HTTP/1.1 {action.status} Slow\r\nContent-Length: 1000000\r\n\r\n".encode())
            for _ in range(1000):
                if self._stopped.wait(action.interval_seconds):
                    return
                connection.sendall(b"x")


def _read_request(connection: socket.socket) -> ReceivedRequest | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk or len(data) > 1024 * 1024:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        body += chunk
    return ReceivedRequest(method=method, path=path, headers=headers, body=body[:length])


def _send_reply(connection: socket.socket, reply: Reply) -> None:
    lines = [f"HTTP/1.1 {reply.status} Scripted", "Connection: close"]
    if reply.status not in (204, 304) and not 100 <= reply.status < 200:
        lines.append(f"Content-Length: {len(reply.body)}")
    lines.extend(f"{name}: {value}" for name, value in reply.headers)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    body = b"" if reply.status in (204, 304) or 100 <= reply.status < 200 else reply.body
    connection.sendall(head + body)


@contextmanager
def running_receiver(tls_context: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver = Receiver(tls_context=tls_context)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def wait_until(condition: Callable[[], bool], timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")
        time.sleep(0.02)
