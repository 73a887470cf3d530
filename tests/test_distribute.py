"""Both loops under MirroredStrategy over 2 logical CPU devices match a single device."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# All-reducing two half-batch gradients rounds differently from one full batch.
RELATIVE_TOLERANCE = 1e-5


@pytest.mark.parametrize("loop", ["custom", "fit"])
def test_mirrored_over_two_cpus_matches_one_device(tmp_path, loop):
    out = subprocess.run([sys.executable, "tests/mirrored_worker.py", str(tmp_path), loop],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["weights_changed"]
    assert result["max_abs_weight_diff"] <= RELATIVE_TOLERANCE * result["max_weight"], result
    assert result["max_abs_metric_diff"] <= 1e-5, result
