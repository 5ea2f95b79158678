"""`python -m benchmarks --smoke` runs end to end and the numbers it reports are of complete runs.

A correctness check of the benchmark harness only (it measures speed; this test never does).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_reports_reference_and_gateway_with_nothing_lost(tmp_path: Path) -> None:
    """Both consumers got every reading at both QoS, under live load and draining a backlog
    (QoS 0 larger than the gateway's intake buffer), and the gateway's files passed the
    audit."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    for case in ("live", "throughput"):
        assert not results["cases"][case]["failed"], case
        consumers = results["cases"][case]["consumers"]
        for qos in ("qos1", "qos0"):
            assert {"mosquitto_sub", "gateway 5"} <= set(consumers[qos])
            for consumer in ("mosquitto_sub", "gateway 5"):
                (run,) = consumers[qos][consumer]["rounds"]
                assert run["delivered"] == run["expected"] > 0, (case, qos, consumer, run)
                assert run["rate"] > 0
            (gateway,) = consumers[qos]["gateway 5"]["rounds"]
            assert gateway["audit"]["ok"], (case, gateway["audit"])
            assert gateway["audit"]["found"] == gateway["expected"]
        if case == "live":
            for consumer in ("mosquitto_sub", "gateway 5"):
                (run,) = consumers["qos1"][consumer]["rounds"]
                assert run["publisher_rate"] > 0
    assert (tmp_path / "latest.md").read_text(encoding="utf-8").startswith("# Benchmark results")


def test_the_compaction_benchmark_compacts_every_reading_it_wrote(tmp_path: Path) -> None:
    """A correctness check of benchmarks/compaction.py on a small partition (no timing)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compaction", "--readings", "20000", "--no-gzip",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run,) = json.loads((tmp_path / "compaction.json").read_text(encoding="utf-8"))["runs"]
    assert run["readings"] == 20000
    assert 0 < run["parquet_bytes"] < run["jsonl_bytes"]
    assert run["peak_rss_mb"] > 0


def test_the_decode_benchmark_decodes_every_shape_it_builds(tmp_path: Path) -> None:
    """benchmarks/decode.py on a small fleet (no timing): every shape decoded, every reading
    counted, the json format the unit of the ratios."""
    out = tmp_path / "decode.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.decode", "--devices", "10", "--per-device", "3",
         "--rounds", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["json"]["ratio_to_json"] == 1.0
    for name, row in results.items():
        assert row["readings"] >= 30, name
        assert row["us_per_reading"] > 0, name
