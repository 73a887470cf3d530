"""The one network probe: can a download (weights, tfds data) reach its host?

It answers in seconds instead of waiting on a client's download retries, so an
offline run stops at once with a one-line error naming the offline alternatives.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.parse
import urllib.request

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3.0


def network_available(hosts, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to any of `hosts` (or the HTTPS proxy) opens within `timeout`."""
    proxy = urllib.request.getproxies().get("https")
    targets = [(h, 443) for h in hosts]
    if proxy:
        parts = urllib.parse.urlsplit(proxy if "//" in proxy else "//" + proxy)
        targets = [(parts.hostname, parts.port or 80)]
    reached = []

    def probe(address):
        try:
            socket.create_connection(address, timeout=timeout).close()
            reached.append(address)
        except (OSError, UnicodeError):
            pass

    # Daemon threads: name resolution has no timeout of its own.
    threads = [threading.Thread(target=probe, args=(a,), daemon=True) for a in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if not reached:
        log.info("no network: cannot reach %s", targets)
    return bool(reached)
