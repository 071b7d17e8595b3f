"""The repository stands alone: every document it points to is in it."""

import os
import re
import subprocess

from conftest import ROOT


def _tracked():
  out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
  if out.returncode:  # not a git checkout (an sdist): every file under the root
    return [os.path.relpath(os.path.join(dp, f), ROOT) for dp, _, fs in os.walk(ROOT) for f in fs]
  return out.stdout.split()


def test_no_file_points_outside_the_repository_and_every_doc_link_resolves():
  text_files = [
    f
    for f in _tracked()
    if f.endswith((".py", ".md", ".sh", ".toml", ".txt")) and not f.startswith("tests/")
  ]
  outside = [f for f in text_files if "../shared" in open(os.path.join(ROOT, f)).read()]
  assert not outside, outside
  broken = []
  for f in [f for f in text_files if f.endswith(".md")]:
    for target in re.findall(r"\]\(([^)\s#]+)", open(os.path.join(ROOT, f)).read()):
      if "://" in target:
        continue
      if not os.path.exists(os.path.join(ROOT, os.path.dirname(f), target)):
        broken.append(f"{f}: {target}")
  assert not broken, broken
  # Documents named in the code's own text exist (PAPER.md, DATA.md).
  for f in text_files:
    for name in re.findall(r"\b(?:docs/)?([A-Z]+\.md)\b", open(os.path.join(ROOT, f)).read()):
      assert os.path.exists(os.path.join(ROOT, name)) or os.path.exists(
        os.path.join(ROOT, "docs", name)
      ), f"{f} names {name}"


def test_study_help_and_readme_agree_on_when_a_pretraining_run_is_finished():
  from big_transfer import study

  readme = open(os.path.join(ROOT, "README.md")).read()
  assert "counts as finished only once its `done.json` is written" in readme
  assert "finished when its ``done.json`` records the run's last step" in study.__doc__
  assert "last checkpoint exists" not in study.__doc__


def test_the_readmes_outputs_are_ignored_by_git():
  ignored = open(os.path.join(ROOT, ".gitignore")).read().split()
  assert {"/runs/", "/ckpt/"} <= set(ignored)  # the study's and the conversion examples' outputs


def test_convert_help_lists_merge_and_a_conversion_without_dst_is_one_line():
  import sys

  out = subprocess.run(
    [sys.executable, "-m", "big_transfer.data.convert", "--help"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0 and "imagefolder | webdataset | csv | coco | merge" in out.stdout
  assert "'merge DST' (no SRC)" in " ".join(out.stdout.split())
  bad = subprocess.run(
    [sys.executable, "-m", "big_transfer.data.convert", "csv", "x.csv"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines() == [
    "error: csv needs SRC and DST (python -m big_transfer.data.convert csv SRC DST)"
  ]


def test_the_readme_speaks_in_users_terms_and_names_the_tests_behind_its_guarantees():
  import glob

  readme = open(os.path.join(ROOT, "README.md")).read()
  # Written for the people who use it: short, and no process vocabulary (internal issue
  # numbers, session dates) — the reference material lives in docs/, which it links.
  assert len(readme.splitlines()) <= 300
  assert not re.search(r"\bissues? \d+", readme, re.I), re.search(r"\bissues? \d+", readme, re.I)
  assert not re.search(r"\b20\d\d-\d\d-\d\d\b", readme.split("<!-- mini-study")[0])
  for page in ("GUARANTEES", "CONFIG", "TRANSFER", "WORKDIR", "CLUSTERS", "CHECKPOINTS"):
    assert f"docs/{page}.md" in readme, page
  # Every test the README and the docs name exists (file::name), and the guarantees name many.
  tests = {}
  for path in glob.glob(os.path.join(ROOT, "tests", "test_*.py")):
    tests[os.path.basename(path)] = set(re.findall(r"^def (test_\w+)", open(path).read(), re.M))
  every = set().union(*tests.values())
  pages = [readme] + [open(p).read() for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))]
  guarantees = open(os.path.join(ROOT, "docs", "GUARANTEES.md")).read()
  assert len(re.findall(r"`(test_\w+\.py)::(test_\w+)", guarantees)) > 10
  for text in pages:
    for f, name in re.findall(r"`(test_\w+\.py)::(test_\w+)", text):
      assert name in tests.get(f, set()), f"docs name {f}::{name}, which does not exist"
    for name in re.findall(r"`\.\.\.::(test_\w+)", text):
      assert name in every, f"docs name ...::{name}, which does not exist"
