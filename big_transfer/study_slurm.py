"""A study on SLURM: each pre-training arm a job, each arm's transfer runs a job array of workers
after it (afterok), the report a job after every array (afterany); jobs requeue on preemption.

  python -m big_transfer.study --config=... --workdir=DIR --submit=slurm [--dry_run]
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys

from big_transfer import logging as log_lib
from big_transfer import runlock
from big_transfer.study_plan import Run


@dataclasses.dataclass
class Job:
  """One sbatch submission: ``name``, its sbatch options, the command its tasks run, the jobs
  it waits for (by name) and how (afterok / afterany)."""

  name: str
  options: list[str]
  command: list[str]
  after: list[str]
  dependency: str = "afterok"
  array: int = 0  # tasks (0: not an array)


def slurm_jobs(
  runs: list[Run],
  study_args: list[str],
  study,
  options: list[str],
  runs_per_task: int,
  max_array: int,
) -> list[Job]:
  """The study as SLURM jobs: a job per pre-training arm or conversion (its own command, under
  srun: several nodes join one JAX job), a job array per arm of its transfer runs (workers of
  one share each, ``--worker=slurm --arm=<arm> --stage=transfer``, with the user's ``--only``
  in ``study_args``) after that arm's job, and a
  report job after every array (afterany: a report of what finished)."""
  # Every command runs as a job step (srun), which --signal reaches two minutes before the time
  # limit: the run saves and exits 75, and the task requeues itself (as SLURM does on
  # preemption with --requeue); its next start resumes.
  common = ["--requeue", "--signal=TERM@120", "--open-mode=append"] + list(options)
  pre_opts = [
    f"--{k.replace('_', '-')}={v}" for k, v in dict(study.get("slurm_pretrain", {})).items()
  ]
  jobs: list[Job] = []

  def logs(name, array=False):  # WORKDIR/slurm/<job>_<id>[_<task>].out
    return f"--output={{workdir}}/slurm/{name.replace('/', '_')}_{'%A_%a' if array else '%j'}.out"

  for r in runs:
    if r.kind in ("pretrain", "convert"):
      cmd = r.command()
      cmd = [sys.executable, *cmd[1:]] if cmd[0] == "python" else cmd  # this environment's
      jobs.append(
        Job(r.name, common + (pre_opts if r.kind == "pretrain" else []) + [logs(r.name)], cmd, [])
      )
  by_arm: dict[str, list[Run]] = {}
  for r in runs:
    if r.kind == "transfer":
      by_arm.setdefault(r.name.split("/")[1], []).append(r)
  arrays = []
  for arm, trs in by_arm.items():
    per_task = max(runs_per_task, -(-len(trs) // max_array))
    tasks = -(-len(trs) // per_task)
    name = f"transfer/{arm}"
    cmd = [*study_args, "--worker=slurm", "--stage=transfer", f"--arm={arm}"]
    deps = sorted({d for r in trs for d in r.deps})
    jobs.append(Job(name, common + [logs(name, array=True)], cmd, deps, array=tasks))
    arrays.append(name)
  jobs.append(
    Job(
      "report",
      list(options) + [logs("report")],
      [*study_args, "--collect"],
      arrays,
      dependency="afterany",
    )
  )
  return jobs


def wrap(command: list[str]) -> str:
  """The batch script of a job: its command as a job step; exit 75 (stopped by the time-limit
  signal after saving) requeues the task."""
  return (
    f"srun {shlex.join(command)}; rc=$?; "
    f'if [ "$rc" -eq {runlock.PREEMPTED_EXIT} ]; then scontrol requeue "$SLURM_JOB_ID"; fi; '
    f"exit $rc"
  )


def sbatch_argv(job: Job, ids: dict[str, str], workdir: str) -> list[str]:
  """The sbatch command line of ``job`` (``ids``: the job ids of the jobs it waits for)."""
  argv = ["sbatch", "--parsable", f"--job-name=bt:{job.name}"]
  argv += [o.replace("{workdir}", workdir) for o in job.options]
  if job.array:
    argv.append(f"--array=0-{job.array - 1}")
  wait = [ids[a] for a in job.after if a in ids]
  if wait:
    argv.append(f"--dependency={job.dependency}:{':'.join(wait)}")
  argv += ["--wrap", wrap(job.command)]
  return argv


def submit_slurm(jobs: list[Job], workdir: str, dry_run: bool) -> dict[str, str]:
  """Submits ``jobs`` in order with sbatch (each job's dependencies by the ids sbatch gave);
  ``dry_run``: prints the commands, with ``$<name>`` for the ids. Returns {name: id}."""
  ids: dict[str, str] = {}
  if not dry_run:
    os.makedirs(os.path.join(workdir, "slurm"), exist_ok=True)
  for job in jobs:
    argv = sbatch_argv(job, ids, workdir)
    if dry_run:
      print(shlex.join(argv))
      ids[job.name] = f"${job.name.replace('/', '_')}"
      continue
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode:
      raise RuntimeError(
        f"sbatch failed for {job.name} (exit {out.returncode}): "
        f"{(out.stderr.strip().splitlines() or ['?'])[-1]}"
      )
    ids[job.name] = out.stdout.strip().split(";")[0]
    log_lib.info(f"submitted {job.name}: job {ids[job.name]}")
  return ids
