"""gunicorn's threaded worker (gthread) with a deadline for reading a request.

gthread gives a connection a thread as soon as its first bytes arrive; the thread then reads the
request head (and the app the body) with blocking reads. A client that sends a byte now and then
(slowloris) would hold that thread for as long as it likes, and enough of them hold every thread of
every worker. Here a watchdog cuts off a connection whose request has taken longer than
REQUEST_DEADLINE_SECONDS since its thread took it: its socket is shut for reading, the blocked read
returns end-of-file and the thread is free again. The app's answer can still be written (a request
that was read in time and is slow to answer, or a live stream, only loses its keep-alive), and the
other clients are served meanwhile. bin/serve uses it (app/api/gunicorn_conf.py).
"""
from __future__ import annotations

import socket
import threading
import time

from gunicorn.workers.gthread import ThreadWorker

REQUEST_DEADLINE_SECONDS = 5.0
WATCH_INTERVAL_SECONDS = 0.5


class DeadlineThreadWorker(ThreadWorker):
    def init_process(self):
        self._deadlines: dict[object, float] = {}
        self._deadlines_lock = threading.Lock()
        threading.Thread(target=self._watch, name="request-deadline", daemon=True).start()
        super().init_process()

    def handle(self, conn):
        with self._deadlines_lock:
            self._deadlines[conn] = time.monotonic() + REQUEST_DEADLINE_SECONDS
        try:
            return super().handle(conn)
        finally:
            with self._deadlines_lock:
                self._deadlines.pop(conn, None)

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_SECONDS)
            now = time.monotonic()
            with self._deadlines_lock:
                late = [conn for conn, deadline in self._deadlines.items() if deadline <= now]
                for conn in late:
                    del self._deadlines[conn]
            for conn in late:
                try:
                    conn.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
