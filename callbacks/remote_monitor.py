"""`RemoteMonitor`: POST every epoch's logs to a server, with the standard library."""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
import warnings

import numpy as np

from tapefit.callbacks.base import Callback


class RemoteMonitor(Callback):
    """POSTs `{"epoch": epoch, **logs}` to `root + path` at the end of every epoch.

    The request is the one Keras sends with `requests`: with `send_as_json` a
    JSON body (`Content-Type: application/json`, NaN/inf not allowed: such an
    epoch is not sent), otherwise a form with `field=<json.dumps(payload)>`.
    Unlike Keras, it uses `urllib`, gives up after `timeout` seconds, and never
    raises: a server that cannot be reached (or a payload that cannot be sent)
    is reported by one warning per hook, the training goes on.
    """

    def __init__(self, root="http://localhost:9000", path="/publish/epoch/end/",
                 field="data", headers=None, send_as_json=False, timeout=3.0):
        super().__init__()
        self.root = root
        self.path = path
        self.field = field
        self.headers = headers
        self.send_as_json = send_as_json
        self.timeout = timeout
        self._warned = False

    @staticmethod
    def payload(epoch, logs):
        """The dict Keras sends: the epoch, then the logs with numpy scalars unwrapped."""
        send = {"epoch": epoch}
        for k, v in (logs or {}).items():
            send[k] = v.item() if isinstance(v, (np.ndarray, np.generic)) else v
        return send

    def _request(self, send):
        headers = dict(self.headers or {})
        if self.send_as_json:
            # As `requests.post(json=...)`: strict JSON, UTF-8.
            body = json.dumps(send, allow_nan=False).encode("utf-8")
            content_type = "application/json"
        else:
            body = urllib.parse.urlencode(
                [(self.field.encode("utf-8"), json.dumps(send).encode("utf-8"))],
                doseq=True).encode("ascii")
            content_type = "application/x-www-form-urlencoded"
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = content_type
        return urllib.request.Request(self.root + self.path, data=body, headers=headers,
                                      method="POST")

    def on_epoch_end(self, epoch, logs=None):
        send = self.payload(epoch, logs)
        try:
            request = self._request(send)
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as e:
            # The server answered: like Keras (which does not check the status), go on.
            logging.debug("RemoteMonitor: %s answered %s", self.root + self.path, e.code)
            e.close()
        except Exception as e:  # noqa: BLE001 - monitoring must never stop training.
            if not self._warned:
                self._warned = True
                warnings.warn(f"Could not reach RemoteMonitor root server at {self.root} ({e})",
                              stacklevel=2)
            else:
                logging.debug("RemoteMonitor: %s", e)
