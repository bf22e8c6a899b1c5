"""The benchmark scripts run on the smoke geometry and print every figure they promise
(their numbers are machine-dependent and are not asserted)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SMOKE

ROOT = Path(__file__).resolve().parents[1]


def _bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"benchmarks/{script}", "--config", SMOKE, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_decode_speed_prints_times_ratios_and_overhead():
    out = _bench("decode_speed.py", "--steps", "2,4", "--large-batch", "3", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "N=64 tokens" in text and "K=64 codes" in text
    rows = re.findall(r"^\s+([24])\s+([\d.]+)\s+([\d.]+)\s+\(([\d.]+) img/s at batch 3\)", text, re.M)
    assert [r[0] for r in rows] == ["2", "4"]
    for _, b1, b3, ips in rows:
        assert float(b1) > 0 and float(b3) > 0
        assert abs(float(ips) - 1 / float(b3)) / float(ips) < 0.06, "images/s is the inverse of s/img"
    for decoder in ("kv-cache", "recompute"):
        assert re.search(rf"^\s*{decoder}\s+[\d.]+\s+[\d.]+$", text, re.M), decoder
        assert re.search(rf"^\s*{decoder}\s+x[\d.]+ \(batch 1\)\s+x[\d.]+ \(batch 3\)$", text, re.M), decoder
    assert len(re.findall(r"^T=[24]\s+[\d.]+ \(batch 1\)\s+[\d.]+ \(batch 3\)$", text, re.M)) == 2


@pytest.mark.slow
def test_decode_speed_rejects_bad_steps_in_one_line():
    out = _bench("decode_speed.py", "--steps", "4,x")
    assert out.returncode != 0
    assert "--steps '4,x' must be comma-separated integers" in out.stderr
    assert "Traceback" not in out.stderr
    out = _bench("decode_speed.py", "--steps", "999", "--no-ar")
    assert out.returncode != 0 and "Traceback" not in out.stderr and "999" in out.stderr


@pytest.mark.slow
def test_train_throughput_prints_each_stage_and_precision():
    out = _bench("train_throughput.py", "--steps", "1", "--batch-size", "4")
    assert out.returncode == 0, out.stderr
    lines = re.findall(r"^(tokenizer train step|transformer train step|transformer forward \(sampling\))"
                       r".*?(fp32|bf16-mixed)\s+batch\s+4:\s+([\d.]+) ms/step,\s+([\d.]+) images/s", out.stdout, re.M)
    assert len(lines) == 6, out.stdout
    assert {(name, prec) for name, prec, *_ in lines} == {
        (n, p) for n in ("tokenizer train step", "transformer train step", "transformer forward (sampling)")
        for p in ("fp32", "bf16-mixed")}
    out = _bench("train_throughput.py", "--steps", "1", "--batch-size", "2", "--no-tokenizer")
    assert out.returncode == 0 and "tokenizer train step" not in out.stdout and "transformer train step" in out.stdout


@pytest.mark.slow
def test_presets_speed_prints_a_row_per_preset_step_and_guidance():
    out = subprocess.run([sys.executable, "benchmarks/presets_speed.py", "--configs", SMOKE, "--batch", "2",
                          "--steps", "2,3", "--device", "cpu", "--dtype", "fp32", "--repeats", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"^fmnist_smoke \(maskgit, [\d.]+M\)\s+(\S+)\s+(\d+)\s+(\S+)\s+([\d.]+)\s*$", out.stdout, re.M)
    assert {(p, t, w) for p, t, w, _ in rows} == {(p, t, w) for p in ("official", "maskgit-pytorch", "halton-maskgit")
                                                  for t in ("2", "3") for w in ("0", "3")}, out.stdout
    assert all(float(ips) > 0 for *_, ips in rows)
    bad = subprocess.run([sys.executable, "benchmarks/presets_speed.py", "--configs", SMOKE, "--steps", "8,x"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--steps '8,x' must be comma-separated integers" in bad.stderr
