"""Shared fixtures: tiny, offline configurations (no test reaches the network)."""
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras reads KERAS_HOME once, at import: give the test session an empty, private one
# so no test sees (or writes) the user's cached weights.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="tapefit-keras-home-")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import socket  # noqa: E402

import pytest  # noqa: E402

from tapefit.flags.config import Config  # noqa: E402


def h5_datasets(path) -> dict:
    """Every dataset of an h5 file (e.g. a `.weights.h5`) by its path in the file."""
    import h5py
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


@pytest.fixture
def tiny_config(tmp_path):
    """A seconds-long run: MobileNet(alpha=0.25) at 32x32 on synthetic data."""
    return Config(
        workdir=str(tmp_path / "run"), backbone="mobilenet", alpha=0.25, weights="none",
        image_size=32, dataset="synthetic", synthetic_examples=40, batch_size=8, epochs=2,
        verbose=0, deterministic=True, unfreeze_from="conv_dw_13")


@pytest.fixture
def no_network(monkeypatch):
    """Fails any connection that leaves the machine; proxies are ignored."""
    real_connect = socket.socket.connect

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test tried to reach the network: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
