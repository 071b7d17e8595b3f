"""The README's commands run as written: the lines of its quick start that run in minutes on a
CPU (listed in TESTED, and named so in the README) are extracted from README.md itself and run
in order in a fresh directory, so the README cannot drift from the code. Marked slow (~4 min)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

# The workdirs of the README lines this test runs, in order (later lines use earlier runs).
# runs/in1k is the unprepared-TFDS line: one error line naming the prepare command.
TESTED = (
  "runs/mini_supervised",
  "runs/simclr",
  "runs/clip",
  "runs/ft_full",
  "runs/lp_5shot",
  "runs/zeroshot",
  "runs/wise",
  "runs/in1k",
)


def readme_commands() -> list[str]:
  """Every command of README.md's bash blocks (continuation lines joined, comments dropped)
  and every `python -m big_transfer...` in its prose."""
  text = open(os.path.join(ROOT, "README.md")).read()
  cmds = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    joined = re.sub(r"\\\n\s*", " ", block)
    cmds += [
      ln.split("  # ")[0].strip()
      for ln in joined.splitlines()
      if ln.strip() and not ln.strip().startswith("#")
    ]
  cmds += [re.sub(r"\s+", " ", c) for c in re.findall(r"`(python -m big_transfer\.[^`]+)`", text)]
  return cmds


def test_the_readmes_quick_start_lines_run_as_written(tmp_path):
  cmds = readme_commands()
  for d in ("configs", "launch"):
    os.symlink(os.path.join(ROOT, d), tmp_path / d)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  for wd in TESTED:
    found = sorted({c for c in cmds if f"--workdir={wd}" in c.split()})
    assert len(found) == 1, f"README: {len(found)} commands with --workdir={wd}: {found}"
    cmd = found[0].replace("python -m", f"{sys.executable} -m", 1)
    out = subprocess.run(
      cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    if wd == "runs/in1k":
      errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
      assert out.returncode == 2 and len(errors) == 1, out.stderr[-2000:]
      assert "python -m big_transfer.data.prepare imagenet2012" in errors[0]
      continue
    assert out.returncode == 0, f"{found[0]}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    assert os.path.exists(tmp_path / wd)
  # The transfer lines wrote their rows.
  for wd in ("runs/ft_full", "runs/lp_5shot", "runs/zeroshot", "runs/wise"):
    assert os.path.getsize(tmp_path / wd / "results.jsonl") > 0
