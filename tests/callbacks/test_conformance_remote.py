"""RemoteMonitor against Keras' own, with a local HTTP server (127.0.0.1 only)."""
import http.server
import math
import socket
import threading
import time
import warnings

import keras
import numpy as np
import pytest
from cb_helpers import Epoch, ModelPair, Scenario, cases, drive, monitored_values

from tapefit import callbacks

pytest.importorskip("requests")  # Keras' RemoteMonitor needs it.

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY")


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records every request; answers with the server's current status."""

    def do_POST(self):  # noqa: N802 - http.server's naming.
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.command, self.path, {
            k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    with pytest.MonkeyPatch.context() as mp:  # Never through a proxy.
        for name in PROXY_VARIABLES:
            mp.delenv(name, raising=False)
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        httpd.requests = []
        httpd.status = 200
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield httpd
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def pair():
    return ModelPair("sgd")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remote_value(rng):
    kind = rng.choice(("float", "float", "float", "special", "np32", "np64", "array0", "int",
                       "str"))
    if kind == "float":
        return monitored_values(rng, 0.1, 1)[0]
    if kind == "special":
        return rng.choice((math.nan, math.inf, -math.inf))
    if kind == "np32":
        return np.float32(rng.uniform(-1, 1))
    if kind == "np64":
        return np.float64(rng.uniform(-1, 1))
    if kind == "array0":
        return np.array(rng.uniform(-1, 1), dtype="float32")
    if kind == "int":
        return rng.integer(-3, 3)
    return rng.choice(("text", "é ü", 'quo"te'))


def remote_scenario(rng):
    epochs = []
    for _ in range(rng.integer(1, 3)):
        keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                            "é") if rng.random() < 0.7]
        logs = {k: remote_value(rng) for k in keys}
        epochs.append(Epoch(batch_logs=[], val_batches=0, val_logs={}, logs=logs))
    return Scenario(epochs=epochs, seed=rng.integer(0, 2**16))


HEADERS = (None, None, {"X-Token": "abc"}, {"Content-Type": "text/plain"},
           {"content-type": "application/x-custom", "X-Other": "1"})
IGNORED_HEADERS = {"user-agent", "accept", "accept-encoding", "connection", "host"}


def comparable(requests_seen):
    """Method, path, body and headers, without the ones each HTTP client sets its own way."""
    return [(method, path, {k: v for k, v in headers.items() if k not in IGNORED_HEADERS}, body)
            for method, path, headers, body in requests_seen]


def run(module, model, kwargs, scenario, server):
    server.requests = []
    hook = module.RemoteMonitor(**kwargs)
    records = drive(hook, model, scenario, before_epoch_end=lambda m, e: None)
    warned = [w for r in records for w in r[3]]
    errors = [r[2] for r in records if r[2]]
    return comparable(server.requests), warned, errors


def test_remote_monitor_conformance(pair, server):
    for rng in cases("RemoteMonitor"):
        server.status = rng.choice((200, 200, 200, 201, 404, 500))
        kwargs = dict(
            root=f"http://127.0.0.1:{server.server_address[1]}",
            path=rng.choice(("/publish/epoch/end/", "/", "/api/v1/logs", "/q?x=1")),
            field=rng.choice(("data", "data", "payload", "a b", "é")),
            headers=rng.choice(HEADERS), send_as_json=rng.boolean())
        stream = remote_scenario(rng)
        pair.reset()
        keras_requests, keras_warnings, keras_errors = run(keras.callbacks, pair.keras, kwargs,
                                                           stream, server)
        our_requests, our_warnings, our_errors = run(callbacks, pair.ours, kwargs, stream,
                                                     server)
        context = f"{rng}: {kwargs} status={server.status}\n{stream}"
        assert our_requests == keras_requests, (
            f"{context}\nours:  {our_requests}\nkeras: {keras_requests}")
        assert our_errors == keras_errors == [], context
        # Keras warns on every failed epoch (a NaN with send_as_json cannot be
        # sent); ours warns once per hook (DIFFERENCES.md).
        assert bool(our_warnings) == bool(keras_warnings), context
        assert len(our_warnings) <= 1, context
        assert all(w[1].startswith("Could not reach RemoteMonitor root server")
                   for w in our_warnings + keras_warnings), context


def test_remote_monitor_unreachable_server_warns_once_and_never_raises(pair):
    pair.reset()
    hook = callbacks.RemoteMonitor(root=f"http://127.0.0.1:{closed_port()}", timeout=0.5)
    hook.set_model(pair.ours)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(5):
            hook.on_epoch_end(epoch, {"loss": 1.0})
    assert time.monotonic() - start < 5
    assert [str(w.message).split(" (")[0] for w in caught] == [
        f"Could not reach RemoteMonitor root server at {hook.root}"]


def test_remote_monitor_gives_up_after_its_timeout(pair):
    """A server that accepts but never answers costs at most `timeout` per epoch."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        hook = callbacks.RemoteMonitor(root=f"http://127.0.0.1:{listener.getsockname()[1]}",
                                       timeout=0.3)
        hook.set_model(pair.ours)
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hook.on_epoch_end(0, {"loss": 1.0})
            hook.on_epoch_end(1, {"loss": 1.0})
        assert time.monotonic() - start < 3
        assert len(caught) == 1


def test_remote_monitor_bad_url_does_not_raise(pair):
    hook = callbacks.RemoteMonitor(root="notaurl", path="")
    hook.set_model(pair.ours)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hook.on_epoch_end(0, {"loss": 1.0})
    assert len(caught) == 1

