"""The CPU settings of the stages: denormals flushed to zero on every torch thread, and recorded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

# A denormal (below 1.2e-38) times 2, on one element (main thread) and on a tensor large enough for
# torch to split the multiplication over its OpenMP threads.
PROBE = """
import json, sys, torch
torch.set_num_threads(2)
{setup}
tiny = 1e-39
one = float(torch.tensor([tiny]) * 2)
many = torch.full((4_000_000,), tiny) * 2
print(json.dumps({{"one": one, "many_nonzero": int((many != 0).sum())}}))
"""


def probe(setup: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


FLUSH_SUPPORTED = torch.set_flush_denormal(False)  # False: this CPU has no flush-to-zero control


@pytest.mark.skipif(not FLUSH_SUPPORTED, reason="this CPU has no flush-to-zero control")
def test_configure_cpu_flushes_denormals_on_every_thread():
    kept = probe("")
    assert kept["one"] > 0 and kept["many_nonzero"] == 4_000_000  # the probe sees denormals when nothing is set
    flushed = probe("from pipeline.cpu import configure_cpu; assert configure_cpu()['flush_denormal']")
    assert flushed == {"one": 0.0, "many_nonzero": 0}


def test_stages_apply_and_record_the_settings(tmp_path):
    """``cli.run`` (every stage's entry) applies them before ``main`` runs; provenance records them."""
    code = ("import json, torch; from pipeline import cli; from pipeline.provenance import execution\n"
            "def main(argv):\n"
            "    print(json.dumps({'one': float(torch.tensor([1e-39]) * 2), 'cpu': execution({})['cpu']}))\n"
            "cli.run(main, [])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         cwd=tmp_path).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["cpu"]["threads"] >= 1
    assert result["cpu"]["flush_denormal"] is FLUSH_SUPPORTED
    if result["cpu"]["flush_denormal"]:
        assert result["one"] == 0.0


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_wait_passively_unless_the_user_chose(preset, expected):
    """Set by the package before torch loads (any ``import pipeline...`` of a stage), never over the user's."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = ("import sys; import pipeline.cpu as c; assert 'torch' in sys.modules\n"
            "import json; print(json.dumps(c.describe()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env=env).stdout
    assert json.loads(out.strip().splitlines()[-1])["omp_wait_policy"] == expected
    late = subprocess.run([sys.executable, "-c", "import torch, pipeline.cpu as c; print(c.describe()['omp_wait_policy'])"],
                          capture_output=True, text=True, check=True, timeout=120, env=env).stdout
    assert "torch was loaded before pipeline" in late
