"""The benchmark harness reports what BENCHMARKS.md quotes, with values that make sense."""

import json
import subprocess
import sys

import pytest

from big_transfer import bench
from conftest import ROOT


@pytest.mark.slow  # two compiles and a training run per case: ~1 min each on 2 cores
@pytest.mark.parametrize("method,data", [("supervised", "synthetic"), ("simclr", "pipeline")])
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


@pytest.mark.slow
def test_variants_run_each_in_its_own_process_and_report_ratios():
  # (The suite's 8 simulated devices reach the subprocesses: a batch of 8.)
  r = subprocess.run([sys.executable, "-m", "big_transfer.bench", "--model=resnet18",
                      "--resolution=32", "--batch_size=8", "--steps=2", "--rounds=1",
                      '--model_kwargs={"width": 0.125}',
                      "--variants=xla:;xla:--xla_cpu_enable_fast_math=true;xla:--no_such_flag"],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr
  rows = {x["variant"]: x for x in map(json.loads, r.stdout.splitlines())}
  assert rows["xla:"]["ratio_to_baseline"] == 1.0 and rows["xla:"]["images_per_sec"] > 0
  assert rows["xla:--xla_cpu_enable_fast_math=true"]["ratio_to_baseline"] > 0
  assert rows["xla:--no_such_flag"]["images_per_sec"] is None  # reported, not fatal
  assert "no_such_flag" in r.stderr
