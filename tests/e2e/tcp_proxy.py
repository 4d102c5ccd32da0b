"""A TCP proxy on 127.0.0.1 that a test can switch to a black hole, for partition tests.

Role: stand between the operator and the kube-apiserver (TLS passes through untouched) and cut
them apart the way a lost NAT or load-balancer entry does: no RST, no FIN, the bytes just stop.
:meth:`TcpProxy.black_hole` freezes every open connection for good (both sockets stay open,
nothing is read or forwarded) and holds new ones the same way; :meth:`TcpProxy.heal` forwards
connections opened from then on. A frozen connection never comes back: only a client that
times out and reconnects recovers, which is what the operator's request timeouts must do.

Limits: plain threads, two per connection, a 0.2 s poll on every socket; meant for the handful
of connections one operator opens, not for load. Listens and connects on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from dataclasses import dataclass, field

_POLL = 0.2
_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One client connection and, unless it was born in a black hole, its upstream twin."""

    client: socket.socket
    upstream: socket.socket | None
    frozen: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream_port> until told to black-hole."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._holing = False
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="proxy-accept", daemon=True)]
        self._threads[0].start()

    @property
    def connections(self) -> int:
        """Connections accepted so far (frozen ones included)."""
        with self._lock:
            return len(self._links)

    def black_hole(self) -> None:
        """Freeze every open connection for good and hold every new one the same way."""
        with self._lock:
            self._holing = True
            for link in self._links:
                link.frozen.set()

    def heal(self) -> None:
        """Forward connections opened from now on; frozen ones stay frozen."""
        with self._lock:
            self._holing = False

    def stop(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()
        with self._lock:
            for link in self._links:
                link.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                holing = self._holing
            upstream = None
            if not holing:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
                except OSError:
                    client.close()
                    continue
            link = _Link(client, upstream)
            if holing:
                link.frozen.set()
            with self._lock:
                self._links.append(link)
            if upstream is not None:
                for source, sink in ((client, upstream), (upstream, client)):
                    pump = threading.Thread(
                        target=self._pump, args=(link, source, sink), daemon=True
                    )
                    self._threads.append(pump)
                    pump.start()

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket) -> None:
        """Copy bytes one way until either side closes, the link freezes or the proxy stops."""
        while not self._stopped.is_set() and not link.frozen.is_set():
            try:
                readable, _, _ = select.select([source], [], [], _POLL)
                if not readable or link.frozen.is_set():
                    continue
                chunk = source.recv(_CHUNK)
                if not chunk:
                    break
                sink.sendall(chunk)
            except OSError:
                break
        if not link.frozen.is_set():
            link.close()
