"""A TCP proxy on 127.0.0.1 that cuts its first connection after a number of bytes went
upstream, as a network failure does in the middle of an upload (the link goes quiet, then the
connection is reset); later connections pass."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class CuttingProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``upstream``; the first connection is closed
    (both sides) ``quiet_seconds`` after ``cut_after`` bytes went from the client to the
    upstream, nothing more forwarded meanwhile."""

    def __init__(self, upstream: int, cut_after: int, quiet_seconds: float = 0.5) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.quiet_seconds = quiet_seconds
        self.connections = 0
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, name="cutting-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                if self._stopped:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
                first = self.connections == 0
                self.connections += 1
            limit = self.cut_after if first else None
            for source, target, cut in ((client, server, limit), (server, client, None)):
                threading.Thread(
                    target=self._pump, args=(source, target, cut, (client, server)), daemon=True
                ).start()

    def _pump(
        self,
        source: socket.socket,
        target: socket.socket,
        cut_after: int | None,
        pair: tuple[socket.socket, socket.socket],
    ) -> None:
        moved = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if cut_after is not None and moved + len(data) >= cut_after:
                    target.sendall(data[: cut_after - moved])
                    time.sleep(self.quiet_seconds)
                    self.cut.set()
                    break
                target.sendall(data)
                moved += len(data)
        except OSError:
            pass
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
