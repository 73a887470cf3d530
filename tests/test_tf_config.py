"""TF_CONFIG: a malformed one is a one-line error, a well-formed one is read.
"""
import json

import pytest

from tapefit.flags.config import ConfigError
from tapefit.loops.training import strategy

# ---- TF_CONFIG ---------------------------------------------------------------------------------

CLUSTER = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}


@pytest.mark.parametrize("tf_config,message", [
    ("{not json", "TF_CONFIG is not JSON"),
    ("[1, 2]", "TF_CONFIG is not a JSON object"),
    (json.dumps({"cluster": CLUSTER}), 'TF_CONFIG has a cluster but no "task"'),
    (json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 2}}),
     "TF_CONFIG has task index 2, but its cluster has 2 worker entries"),
    (json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": -1}}),
     "TF_CONFIG has task index -1"),
    (json.dumps({"cluster": CLUSTER, "task": {"type": "chief", "index": 0}}),
     "TF_CONFIG names task type 'chief', which its cluster lacks"),
    (json.dumps({"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker"}}),
     'TF_CONFIG needs "cluster"'),
])
def test_malformed_tf_config_is_a_one_line_error(monkeypatch, tiny_config, tf_config, message):
    """Before: json.JSONDecodeError / IndexError tracebacks (or TF's own, later)."""
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=message) as error:
        strategy.check_supported(tiny_config.replace(strategy="multi_worker"))
    assert "\n" not in str(error.value) and "unset it" in str(error.value)
    strategy.check_supported(tiny_config)  # Only multi_worker reads TF_CONFIG.


def test_well_formed_tf_config_is_read(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": CLUSTER,
                                                "task": {"type": "worker", "index": 1}}))
    assert strategy.task() == ("worker", 1, CLUSTER)
    assert not strategy.is_chief("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "")
    assert strategy.task() == (None, 0, {})
    assert strategy.is_chief("multi_worker")
