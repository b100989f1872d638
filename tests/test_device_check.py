"""The device check's CPU form (benchmarks/device_check.sh): it runs and prints its one
table, every row present and every loss finite."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = [
    ("loss", "floor"), ("loss", "plain"), ("loss", "lean"),
    ("step", "fp32"), ("embed", "2 s utterances"), ("step", "fp16 + GradScaler"), ("step", "bf16"),
    ("step", "fp32 + augmentation"), ("step", "fp32, DDP 1 process (gloo)"),
]


@pytest.mark.slow
def test_device_check_cpu_form_prints_the_table(tmp_path):
    out = tmp_path / "check.json"
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--device", "cpu", "--json", str(out)],
                         cwd=tmp_path, env=dict(os.environ, PY=sys.executable, OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("device check on CPU") and "tiny sizes" in lines[0]
    table = [line.split(" | ") for line in lines if line.startswith("| ") and not line.startswith("| check")]
    assert len(table) == len(EXPECTED), run.stdout
    for cells, (check, setting) in zip(table, EXPECTED):
        assert cells[0] == f"| {check}" and cells[1].startswith(setting), cells
    assert all(cells[6] == "yes" for cells in table)  # every loss finite
    assert "DistributedDataParallel" in table[-1][1]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(EXPECTED) and rows[0][4] == "1.00x"
    assert all(float(row[3].split()[0]) > 0 for row in rows)
