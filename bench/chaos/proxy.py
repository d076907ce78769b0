"""A TCP proxy that can cut a dependency off, as a crashed broker looks from a client.

The broker (Tansu) advertises the proxy's address, so every client connection,
bootstrap and leader alike, goes through it. `cut()` closes every relayed
connection and stops listening: clients get connection resets, then
"connection refused", exactly as when a broker process dies; the broker
itself keeps its in-memory topics, so `restore()` brings the same cluster
back. One thread accepts; each connection gets two pump threads. Throughput
is far below a real network path, which is fine for the outage scenarios;
the soak and throughput runs do not use it.
"""
from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Listens on 127.0.0.1:`port` and relays to `target_port`; cut() and restore() switch it."""

    def __init__(self, port: int, target_port: int, host: str = "127.0.0.1",
                 cut_after_bytes: int | None = None) -> None:
        """`cut_after_bytes`: forward that many client-to-server bytes in all, then cut() in the middle
        of whatever is being sent (a client that dies mid-write, as Redis or the broker sees it)."""
        self.host, self.port, self.target_port = host, port, target_port
        self.budget = cut_after_bytes
        self.forwarded = 0  # client-to-server bytes so far
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def restore(self) -> None:
        """Listen again (on the same port) and relay new connections."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            open_sockets, self._sockets = self._sockets, set()
        if listener is not None:
            _close(listener)
        for sock in open_sockets:
            _close(sock)

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the listener was closed by cut()
                return
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    _close(client), _close(upstream)
                    return
                self._sockets |= {client, upstream}
            for src, dst, upward in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, upward), name="proxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if upward and self.budget is not None:
                    with self._lock:
                        allowed = max(0, self.budget - self.forwarded)
                        data = data[:allowed]
                        self.forwarded += len(data)
                    if data:
                        dst.sendall(data)
                    if self.forwarded >= self.budget:
                        self.cut()
                        return
                    continue
                if upward:
                    self.forwarded += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with self._lock:
                    self._sockets.discard(sock)
                _close(sock)


def _close(sock: socket.socket) -> None:
    """shutdown() first: unlike close(), it wakes a thread blocked in recv() or accept() on the socket."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
