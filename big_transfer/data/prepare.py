r"""Prepare TFDS datasets in ArrayRecord form — what ``tfds:`` specs read — outside any run.

  python -m big_transfer.data.prepare cifar100 dtd --data_dir=/data/tfds
  python -m big_transfer.data.prepare study --data_dir=/data/tfds        # every TFDS set of the paper
  python -m big_transfer.data.prepare imagenet2012 --data_dir=/data/tfds --manual_dir=/data/in1k

Runs each dataset's TFDS builder (download, then encode) with ``file_format=array_record``.
Encoding images needs TensorFlow, at build time only: ``pip install -r requirements-prepare.txt``
first (ideally in its own environment); training and transfer read the prepared files without
it. A dataset TFDS cannot download itself (ImageNet) says where to get its files. Runs never
prepare data themselves: a ``tfds:`` spec that is not prepared stops the run with one line that
names this command.

``--imports=MODULE`` imports a module that defines more TFDS builders (your own datasets).
"""

from __future__ import annotations

import importlib
import os
import sys
import time

from big_transfer import cli
from big_transfer.data import sources
from big_transfer.logging import quiet_absl

# The paper's TFDS datasets: the eight downstream sets and ImageNet-1K (supervised
# pre-training, CLIP zero-shot). Caltech Camera Traps is not in TFDS: see docs/DATA.md.
STUDY = (
  "cifar100",
  "dtd",
  "caltech101",
  "oxford_iiit_pet",
  "domainnet/real",
  "domainnet/clipart",
  "eurosat/rgb",
  "cassava",
  "imagenet2012",
)


class PrepareError(RuntimeError):
  """A dataset that cannot be prepared; the message is one line saying why and what to do."""


def _needs_tensorflow(e: BaseException) -> bool:
  while e is not None:
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "tensorflow":
      return True
    if "No module named 'tensorflow'" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def prepare(name: str, data_dir: str, manual_dir: str | None = None) -> str:
  """Prepares one dataset (a no-op when it is already there); returns a one-line summary."""
  import tensorflow_datasets as tfds  # lazy: --help and argument errors answer at once

  t0 = time.time()
  try:
    with quiet_absl():
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise PrepareError(
      f"{name}: TFDS has no such dataset (see `tfds.list_builders()`, or "
      f"--imports=MODULE for a builder of your own)"
    ) from None
  fmt = builder.info.file_format
  if builder.is_prepared():
    if fmt is not None and fmt.value != "array_record":
      raise PrepareError(
        f"{name}: already prepared in {builder.data_dir} as {fmt.value}; "
        f"tfds.data_source reads array_record: move that directory away or "
        f"use another --data_dir"
      )
    return f"{name}: already prepared in {builder.data_dir}"
  instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  manual = manual_dir or os.path.join(data_dir, "downloads", "manual")
  if instructions and not (os.path.isdir(manual) and os.listdir(manual)):
    raise PrepareError(
      f"{name}: needs a manual download into {manual} (or --manual_dir): "
      f"{' '.join(str(instructions).split())}"
    )
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  try:
    builder.download_and_prepare(download_config=config)
  except Exception as e:  # noqa: BLE001  one line per dataset, the cause named
    if _needs_tensorflow(e):
      raise PrepareError(
        f"{name}: encoding its features needs TensorFlow at build time: "
        f"pip install -r requirements-prepare.txt (then run this again)"
      ) from None
    raise PrepareError(f"{name}: {type(e).__name__}: {' '.join(str(e).split())[:400]}") from None
  splits = ", ".join(f"{k} {v.num_examples}" for k, v in sorted(builder.info.splits.items()))
  return (
    f"{name}: prepared {builder.info.version} in {builder.data_dir} ({splits}; "
    f"array_record) in {time.time() - t0:.0f}s"
  )


def command() -> cli.Command:
  c = cli.Command(
    "big_transfer.data.prepare",
    __doc__,
    args=[
      cli.Arg(
        "names",
        f"TFDS names (cifar100, eurosat/rgb, ...) or 'study' for {', '.join(STUDY)}",
        nargs="+",
        metavar="NAME",
      )
    ],
  )
  c.string(
    "data_dir",
    None,
    "where to write (default: $TFDS_DATA_DIR or ~/tensorflow_datasets); "
    "runs read it through --config.data_dir or $TFDS_DATA_DIR",
    metavar="DIR",
  )
  c.string(
    "manual_dir",
    None,
    "files you downloaded by hand (default: DATA_DIR/downloads/manual)",
    metavar="DIR",
  )
  c.string(
    "imports",
    "",
    "comma-separated modules to import first (builders of your own)",
    metavar="MODULES",
  )
  return c


def main(argv=None) -> int:
  args = command().parse(argv)
  data_dir = os.path.expanduser(args.data_dir) if args.data_dir else sources.tfds_data_dir()
  for module in filter(None, (m.strip() for m in args.imports.split(","))):
    try:
      importlib.import_module(module)
    except ImportError as e:
      print(f"error: --imports={module}: {e}", file=sys.stderr)
      return 2
  names = [n for name in args.names for n in (STUDY if name == "study" else (name,))]
  failed = []
  for i, name in enumerate(names, 1):
    print(f"[{i}/{len(names)}] {name} -> {data_dir}", flush=True)
    try:
      print(prepare(name, data_dir, args.manual_dir), flush=True)
    except PrepareError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      failed.append(name)
  if failed:
    print(
      f"error: {len(failed)} of {len(names)} not prepared: {', '.join(failed)}", file=sys.stderr
    )
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
