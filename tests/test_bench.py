"""The benchmark harness reports what BENCHMARKS.md quotes, with values that make sense."""

import json
import re
import subprocess
import sys

import pytest

from big_transfer import bench
from conftest import ROOT


@pytest.mark.slow  # two compiles and a training run per case: ~1 min each on 2 cores
@pytest.mark.parametrize("method,data", [("supervised", "synthetic"), ("simclr", "pipeline")])
def test_model_bench_reports_throughput_mfu_overhead_and_checkpoint_rates(method, data):
  rows = bench.bench_model(
    "resnet18", 8, 32, 3, method, "float32", data, torch_ref=False, model_kwargs={"width": 0.125}
  )
  model, ckpt = rows
  assert model["bench"] == "model" and ckpt["bench"] == "checkpoint"
  for k in (
    "images_per_sec",
    "bare_images_per_sec",
    "step_time_s",
    "loop_step_time_s",
    "compile_time_s",
    "pipeline_images_per_sec",
    "peak_matmul_tflops",
  ):
    assert model[k] > 0, k
  # XLA's cost analysis of the step, over the measured matmul peak.
  assert model["flops_per_step"] > 1e6 and 0 < model["mfu"] <= 1
  assert model["mfu"] == pytest.approx(
    model["flops_per_step"] / model["step_time_s"] / (model["peak_matmul_tflops"] * 1e12), rel=0.02
  )
  assert model["images_per_sec"] == pytest.approx(8 / model["loop_step_time_s"], rel=1e-2)
  assert model["loop_overhead"] == pytest.approx(
    model["loop_step_time_s"] / model["step_time_s"] - 1, abs=1e-3
  )
  assert "cpu" in model["device"]
  assert ckpt["bytes"] > 4 * 10_000 and ckpt["save_gb_per_sec"] > 0 < ckpt["restore_gb_per_sec"]


def test_profile_row_says_where_the_step_time_goes(tmp_path):
  """--profile: a trace on disk, and the step's operation time split by what it computes —
  the convolutions and matmuls of a ResNet (its 1x1 projections and head are matmuls on CPU)
  among them — with the slowest operations named."""
  model, prof = bench.bench_model(
    "resnet18",
    8,
    32,
    2,
    "supervised",
    "float32",
    "synthetic",
    torch_ref=False,
    checkpoint=False,
    loop=False,
    model_kwargs={"width": 0.125},
    profile_dir=str(tmp_path),
  )
  assert model["bench"] == "model" and prof["bench"] == "profile"
  assert prof["trace"].startswith(str(tmp_path)) and prof["trace"].endswith(".trace.json.gz")
  kinds = prof["by_kind"]
  assert kinds["convolution"]["ms"] > 0 and kinds["matmul"]["ms"] > 0
  assert sum(k["share"] for k in kinds.values()) == pytest.approx(1, abs=0.01)
  assert sum(k["ms"] for k in kinds.values()) == pytest.approx(prof["op_ms_per_step"], rel=0.01)
  times = [ms for _, ms, _ in prof["slowest_ops"]]
  assert times == sorted(times, reverse=True) and len(times) >= 5
  assert prof["step_ms"] > 0


def test_bench_cli_prints_json_lines():
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "big_transfer.bench",
      "--what=pipeline",
      "--images=4",
      "--height=64",
      "--width=80",
      "--seconds=0.05",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr
  rows = [json.loads(x) for x in r.stdout.splitlines()]
  assert {x["case"] for x in rows} >= {"raw_decode_simplejpeg", "train_chain_fused"}
  assert rows[0]["ratio_to_raw_decode"] == 1.0


@pytest.mark.slow
def test_variants_run_each_in_its_own_process_and_report_ratios():
  # (The suite's 8 simulated devices reach the subprocesses: a batch of 8.)
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "big_transfer.bench",
      "--model=resnet18",
      "--resolution=32",
      "--batch_size=8",
      "--steps=2",
      "--rounds=1",
      '--model_kwargs={"width": 0.125}',
      "--variants=xla:;xla:--xla_cpu_enable_fast_math=true;xla:--no_such_flag;"
      'args:--model_kwargs={"pointwise":"conv"}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr
  rows = {x["variant"]: x for x in map(json.loads, r.stdout.splitlines())}
  assert rows["xla:"]["ratio_to_baseline"] == 1.0 and rows["xla:"]["images_per_sec"] > 0
  assert rows["xla:--xla_cpu_enable_fast_math=true"]["ratio_to_baseline"] > 0
  assert rows["xla:--no_such_flag"]["images_per_sec"] is None  # reported, not fatal
  assert "no_such_flag" in r.stderr
  # A variant's model kwargs add to the base run's: the same width, convs instead of matmuls.
  assert rows["xla:"]["model_kwargs"] == {"width": 0.125}
  assert rows['args:--model_kwargs={"pointwise":"conv"}']["model_kwargs"] == {
    "width": 0.125,
    "pointwise": "conv",
  }


@pytest.mark.parametrize("model,forward_gflops", [("resnet50", 4.1), ("vit_b16", 17.6)])
def test_train_step_flops_match_the_known_per_image_figures(model, forward_gflops):
  """Counted on the lowered program (the same on every backend), a training step is ~3x the
  forward pass's published multiply-adds per image (ResNet-50 4.1 G, ViT-B/16 17.6 G at 224),
  within 10%; FLOPs count a multiply-add as two."""
  per_image = bench.train_step_flops(model, batch_size=8) / 8
  assert per_image == pytest.approx(3 * 2 * forward_gflops * 1e9, rel=0.10)


def test_loader_bench_reports_rates_per_worker_count_and_their_scaling():
  rows = bench.bench_loader([0, 2], batch_size=8, seconds=0.5, images=4, height=96, width=128)
  assert [r["workers"] for r in rows] == [0, 2]
  for r in rows:
    assert r["bench"] == "loader" and r["images_per_sec"] > 0
    assert r["scaling_efficiency"] == pytest.approx(
      r["images_per_sec"] / (max(r["workers"], 1) * r["chain_images_per_sec_per_core"]), rel=0.01
    )
    assert r["output"] == "uint8[224, 224, 3]"  # normalised on the device, not here


def test_a_step_that_cannot_fit_is_one_line_before_anything_is_allocated(capsys):
  # The README's CLIP line on a CPU tried to allocate 51 GB and died with a traceback.
  with pytest.raises(SystemExit) as e:
    bench.entry(
      [
        "--model=resnet18",
        '--model_kwargs={"width": 0.125}',
        "--batch_size=1048576",
        "--resolution=224",
        "--steps=1",
        "--loop=off",
        "--torch=off",
      ]
    )
  assert e.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  # First what it is doing (the compile from shapes takes minutes for a large step on a CPU),
  # then one error line.
  assert lines[0].startswith("bench: compiling the resnet18 step at batch 1048576")
  err = [l for l in lines if l.startswith("error:")]
  assert len(err) == 1 and len(lines) == 2
  assert err[0].startswith("error: bench: the resnet18 step at batch 1048576")
  assert re.search(
    r"needs [\d.]+ GB per device \(XLA's memory analysis: .*\) and the device "
    r"has [\d.]+ GB .*; a batch of about \d+ would fit",
    err[0],
  ), err[0]


@pytest.mark.parametrize("data", ["synthetic", "pipeline"])
def test_every_method_says_how_the_bench_builds_its_batch(data, tmp_path):
  """Each registered method's bench config yields that method's batch keys from one example
  (the method's training_pp and bench_optimizer), without compiling anything."""
  import io

  import numpy as np
  from PIL import Image

  from big_transfer import methods
  from big_transfer.data import ops, tokenizer

  vocab = str(tmp_path / "bpe.txt")
  tokenizer.train(["a photo of a digit", "a scan of a letter"] * 20, 520).save(vocab)
  jpeg = io.BytesIO()
  Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(jpeg, format="JPEG")
  for name in methods.known():
    c = bench.bench_config("resnet18", name, 8, 32, 2, "float32", data)
    pp = ops.parse(c.pp_train, bind={"vocab": vocab, "max_len": 8})
    example = {
      "image": jpeg.getvalue() if data == "pipeline" else np.zeros((32, 32, 3), np.uint8),
      "label": 1,
      "caption": "a photo of a digit",
    }
    out = pp(example, np.random.default_rng(0))
    assert set(methods.method_class(name).batch_keys) <= set(out), (name, sorted(out))
    assert c.optimizer.name == (methods.method_class(name).bench_optimizer.get("name") or "sgd")
