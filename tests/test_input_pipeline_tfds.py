"""The tfds source under `tfds.testing.mock_data`, and its no-network behaviour."""
import socket
import threading

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tapefit import input_pipeline
from tapefit.flags.config import Config
from tapefit.input_pipeline import DataError, tfds_source

S = 40


pytestmark = pytest.mark.usefixtures("no_network")  # From conftest.py.


@pytest.fixture
def no_download(monkeypatch):
    """Records probes, and fails the test if tfds tries to download."""
    probes = []

    def probe(hosts):
        probes.append(list(hosts))
        return False

    def download(self, *args, **kwargs):
        raise AssertionError("download_and_prepare was called")

    monkeypatch.setattr(tfds_source, "network_available", probe)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download)
    return probes


def config(tmp_path, **changes):
    return Config(image_size=S, tfds_data_dir=str(tmp_path / "tfds"), **changes)


def test_mocked_cats_vs_dogs_loads_resized_splits(tmp_path, monkeypatch):
    # mock_data's builder is never "prepared", so the code path probes, then calls the
    # (mocked, no-op) download_and_prepare: let the probe pass.
    monkeypatch.setattr(tfds_source, "network_available", lambda hosts: True)
    with tfds.testing.mock_data(num_examples=6):
        splits = input_pipeline.load_splits(config(tmp_path))
        capped = input_pipeline.load_splits(config(tmp_path, max_examples_per_split=4))
    assert splits.class_names == ("cat", "dog")
    assert splits.sizes == {"train": 6, "validation": 6, "test": 6}
    assert splits.skipped == ()
    for ds in (splits.train, splits.validation, splits.test):
        items = list(ds.as_numpy_iterator())
        assert len(items) == 6
        for image, label in items:
            assert image.shape == (S, S, 3) and image.dtype == np.uint8
            assert label.dtype == np.int32 and label in (0, 1)
        assert ds.element_spec[0] == tf.TensorSpec((S, S, 3), tf.uint8)
    assert capped.sizes == {"train": 4, "validation": 4, "test": 4}
    assert len(list(capped.test)) == 4
    train, steps = input_pipeline.train_batches(splits.train, 6, 4, seed=0)
    assert steps == 2
    images, _ = next(iter(train))
    assert images.shape == (4, S, S, 3) and images.dtype == tf.float32


def test_no_network_fails_fast_without_downloading(tmp_path, no_download):
    with pytest.raises(DataError, match="cannot download tfds dataset 'cats_vs_dogs': no "
                                        "network") as error:
        input_pipeline.load_splits(config(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    for fix in ("--data_dir=DIR", "--tfds_data_dir=DIR", "--dataset=synthetic"):
        assert fix in message
    assert no_download == [["download.microsoft.com"]]


def test_unknown_tfds_name_says_how_to_find_names(tmp_path, no_download):
    with pytest.raises(DataError, match="unknown tfds dataset 'cats_vs_dogz'.*list_builders"):
        input_pipeline.load_splits(config(tmp_path, dataset="cats_vs_dogz"))
    assert no_download == []


def _listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server


def test_probe_goes_through_the_https_proxy(monkeypatch):
    server = _listener()
    port = server.getsockname()[1]
    try:
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        assert tfds_source.network_available(["download.example"], timeout=2)
    finally:
        server.close()
    # Now nothing listens on that port: refused.
    assert not tfds_source.network_available(["download.example"], timeout=2)


def test_probe_gives_up_at_its_timeout(monkeypatch):
    release = threading.Event()
    hanging = []

    def hang(*args, **kwargs):
        hanging.append(1)
        release.wait(60)
        hanging.pop()
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        assert not tfds_source.network_available(["a.example", "b.example"], timeout=0.3)
        # It answered while both connection attempts still hang: it did not wait for them.
        assert len(hanging) == 2
    finally:
        release.set()
