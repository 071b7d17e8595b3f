"""The benchmark harness reports what BENCHMARKS.md quotes, with values that make sense."""

import json
import subprocess
import sys

import pytest

from big_transfer import bench
from conftest import ROOT


@pytest.mark.parametrize("method,data", [
    ("supervised", "synthetic"),
    pytest.param("simclr", "pipeline", marks=pytest.mark.slow)])
def test_model_bench_reports_throughput_mfu_overhead_and_checkpoint_rates(method, data):
  rows = bench.bench_model("resnet18", 8, 32, 3, method, "float32", data, torch_ref=False,
                           model_kwargs={"width": 0.125})
  model, ckpt = rows
  assert model["bench"] == "model" and ckpt["bench"] == "checkpoint"
  for k in ("images_per_sec", "bare_images_per_sec", "step_time_s", "loop_step_time_s",
            "compile_time_s", "pipeline_images_per_sec", "peak_matmul_tflops"):
    assert model[k] > 0, k
  # XLA's cost analysis of the step, over the measured matmul peak.
  assert model["flops_per_step"] > 1e6 and 0 < model["mfu"] <= 1
  assert model["mfu"] == pytest.approx(
      model["flops_per_step"] / model["step_time_s"] / (model["peak_matmul_tflops"] * 1e12),
      rel=0.02)
  assert model["images_per_sec"] == pytest.approx(8 / model["loop_step_time_s"], rel=1e-2)
  assert model["loop_overhead"] == pytest.approx(
      model["loop_step_time_s"] / model["step_time_s"] - 1, abs=1e-3)
  assert "cpu" in model["device"]
  assert ckpt["bytes"] > 4 * 10_000 and ckpt["save_gb_per_sec"] > 0 < ckpt["restore_gb_per_sec"]


def test_bench_cli_prints_json_lines():
  r = subprocess.run([sys.executable, "-m", "big_transfer.bench", "--what=pipeline",
                      "--images=4", "--height=64", "--width=80", "--seconds=0.05"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  rows = [json.loads(x) for x in r.stdout.splitlines()]
  assert {x["case"] for x in rows} >= {"raw_decode_simplejpeg", "train_chain_fused"}
  assert rows[0]["ratio_to_raw_decode"] == 1.0
