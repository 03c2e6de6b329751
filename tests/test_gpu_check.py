"""benchmarks/gpu_check.py, the prepared script for a lent GPU machine, run on the CPU in its quick
mode so that it cannot rot between loans: every section measures something and writes its rows."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_the_gpu_check_runs_on_the_cpu_and_writes_every_section(tmp_path):
    out = tmp_path / "check.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = json.loads(out.with_suffix(".json").read_text())
    assert table["machine"]["device"] == "cpu" and table["machine"]["gpu"] == "none"
    rows = {(section, setting, batch): value for section, setting, batch, value in table["rows"]}
    sections = {section for section, _, _ in rows}
    assert sections == {"model only", "scorer path", "ray-free loop", "latency, batch 1", "memory per replica",
                        "replicas on one device", "parity with CPU fp32"}
    for batch in (1, 2):
        assert rows[("model only", "fp32 (TF32 off)", batch)] > 0 and rows[("model only", "bf16 autocast", batch)] > 0
        assert rows[("model only", "CUDA graph fp32", batch)] == "n/a (CUDA only)"
        assert rows[("scorer path", "frames/s", batch)] > 0
    assert rows[("ray-free loop", "2 decode process(es)", 4)] > 0
    assert 0 < rows[("latency, batch 1", "p50 ms", 1)] <= rows[("latency, batch 1", "p99 ms", 1)]
    assert rows[("replicas on one device", "2 process(es), total windows/s", 2)] > 0
    bf16_error = rows[("parity with CPU fp32", "cpu bf16: max error / max |score_raw|", 2)]
    assert 0 < bf16_error < 1  # bf16 differs from fp32, but not wholly
    assert out.read_text().startswith("# gpu_check ") and "| model only | fp32 (TF32 off) | 1 |" in out.read_text()
