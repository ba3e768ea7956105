"""The metrics endpoint: an HTTP server on threads of its own, fed by the event loop.

Why threads: a scraper that is slow to send its request, or slow to read
the answer, would hold a trio task at most, but the exposition itself
(prometheus-client's) is synchronous code that runs for as long as it takes
to format every family; on the event loop that time would be taken from
the adverts.  Here each connection has its own thread (prometheus-client's
WSGI app under a threading server), a connection silent for
CLIENT_TIMEOUT is dropped, and at most MAX_CONNECTIONS are served at once:
one more is closed as soon as it is accepted (and counted), so a client
that opens connections faster than the timeout closes them cannot make
meshd start threads without end.

Why a snapshot per scrape (`LoopSnapshots`): the collector must not read
the cores' dicts while the event loop changes them, so the snapshot is
taken *on* the event loop's thread, between two of its steps
(`TrioToken.run_sync_soon`), and the HTTP thread waits for it at most
SNAPSHOT_TIMEOUT.  `trio.from_thread.run_sync` would wait forever on a
stuck loop; a scrape then answers without meshd's families instead
(collector.py).  The other way, a snapshot published by the loop every few
seconds, costs the loop the same copy whether anyone scrapes or not, and
serves values up to a period old: docs/metrics.md, "Pull or push", has
the measurements.

Must not: touch a core or a shell (only the snapshot function it is given
runs there, on the loop's thread), or block the event loop: binding is
quick, and closing is handed to a worker thread by the daemon.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
from collections.abc import Callable
from socketserver import TCPServer, ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily

from ..config.metrics import MetricsConfig
from .collector import MeshdCollector, SnapshotUnavailable
from .snapshot import Snapshot

SNAPSHOT_TIMEOUT = 2.0      # s the HTTP thread waits for the event loop's snapshot
CLIENT_TIMEOUT = 10.0       # s a connection may stay silent (request or answer) before it is dropped
MAX_CONNECTIONS = 16        # connections served at once; a Prometheus pair needs 2
POLL_INTERVAL = 0.1         # s between two looks of serve_forever at a shutdown request


class MetricsError(Exception):
    """The endpoint cannot be opened (str() names the address and why)."""


class LoopSnapshots:
    """Snapshots taken on the event loop's thread, fetched from another thread.

    Args:
        take: returns a Snapshot; runs on the event loop's thread.
        run_sync_soon: the loop's `TrioToken.run_sync_soon` (any callable
            that runs a function on the loop's thread soon).
        timeout: how long fetch() waits.
    """

    def __init__(self, take: Callable[[], Snapshot], run_sync_soon: Callable, timeout: float = SNAPSHOT_TIMEOUT):
        self.take = take
        self.run_sync_soon = run_sync_soon
        self.timeout = timeout

    def fetch(self) -> Snapshot:
        """A fresh snapshot.  Raises SnapshotUnavailable when the loop did not
        run the copy within the timeout, or has ended."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def on_the_loop() -> None:
            if not future.set_running_or_notify_cancel():
                return                  # the scrape gave up already: do not copy for nobody
            try:
                future.set_result(self.take())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(e)

        try:
            self.run_sync_soon(on_the_loop)
        except RuntimeError as e:       # trio.RunFinishedError: the loop has ended
            raise SnapshotUnavailable(f"event loop gone: {e}") from None
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise SnapshotUnavailable(f"no snapshot within {self.timeout:g} s") from None


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT        # StreamRequestHandler: a socket timeout per connection

    def log_message(self, format, *args):   # noqa: A002 - the stdlib's name
        pass                                 # scrapes are not events worth a log line


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True           # a connection's thread never holds the process at exit
    allow_reuse_address = True      # a restart binds again while old connections linger

    def __init__(self, *args, **kw):
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = RefusedConnections()     # MetricsServer gives the registry's
        super().__init__(*args, **kw)

    def process_request(self, request, client_address) -> None:
        # Runs on the accepting thread: taking the slot here, before a thread
        # is started, is what bounds the threads.
        if not self._slots.acquire(blocking=False):
            self.refused.count += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()   # no thread was started to release it
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_bind(self) -> None:
        # HTTPServer's own asks socket.getfqdn() for a name, a reverse lookup
        # that may wait on a name server, and would at start, on the event loop.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()


class RefusedConnections:
    """meshd_metrics_refused_connections_total, a collector of its own: the
    count outlives the servers that a reload builds anew on one registry,
    and it changes on the accepting thread, not on the loop."""

    def __init__(self):
        self.count = 0

    def collect(self):
        yield CounterMetricFamily("meshd_metrics_refused_connections",
                                  f"Connections closed unserved because {MAX_CONNECTIONS} were being served.",
                                  value=self.count)


def registry_for(collector: MeshdCollector, refused: RefusedConnections) -> CollectorRegistry:
    """A registry of meshd's collector, the endpoint's refused connections and
    the process collector (CPU, memory, open files), without
    prometheus-client's global default collectors."""
    registry = CollectorRegistry()
    registry.register(collector)
    registry.register(refused)
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """The endpoint on `config`'s address: bound by the constructor, served by start().

    Raises MetricsError from the constructor when the address cannot be bound
    (in use, not on this machine, no permission).
    """

    def __init__(self, config: MetricsConfig, registry: CollectorRegistry, refused: RefusedConnections):
        self.config = config
        server_class = type("_Server", (_ThreadingServer,),
                            {"address_family": socket.AF_INET6 if config.family == 6 else socket.AF_INET})
        try:
            self.httpd = server_class((config.address, config.port), _QuietHandler)
        except OSError as e:
            raise MetricsError(f"cannot listen on {config.listen}: {e.strerror or e}") from None
        self.httpd.refused = refused
        self.httpd.set_app(make_wsgi_app(registry))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the configured one; the kernel's choice for port 0 in tests)."""
        return self.httpd.server_address[1]

    @property
    def refused(self) -> int:
        """Connections closed unserved because MAX_CONNECTIONS were being served."""
        return self.httpd.refused.count

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(POLL_INTERVAL,),
                                        name=f"metrics {self.config.listen}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket (blocks up to POLL_INTERVAL: call it off the loop)."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()
