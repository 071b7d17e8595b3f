"""The tools' command lines (cli.Command over absl flags): what each takes and the one line it
prints for what it cannot take. The help format of all nine entry points, and a misspelt flag in
each: test_train.py::test_every_entry_point_has_one_help_format_and_one_line_for_a_misspelt_flag.
"""

import pytest

from big_transfer import bench, convert_checkpoint, report
from big_transfer.data import convert, prepare, tokenizer


def refused(command, argv, capsys) -> str:
  with pytest.raises(SystemExit) as e:
    command.parse(argv)
  assert e.value.code == 2
  (line,) = capsys.readouterr().err.strip().splitlines()
  return line


def test_positional_arguments_repeated_flags_and_both_flag_spellings():
  args = prepare.command().parse(["cifar10", "dtd", "--data_dir", "/data/tfds"])
  assert args.names == ["cifar10", "dtd"] and args.data_dir == "/data/tfds"
  args = bench.command().parse(
    ["--model=resnet18", '--model_kwargs={"width": 0.5}', '--model_kwargs={"x": 1}', "--steps=3"]
  )
  assert args.model_kwargs == ['{"width": 0.5}', '{"x": 1}'] and args.steps == 3
  assert bench.command().parse([]).model_kwargs == [] and bench.command().parse([]).what is None
  args = convert.command().parse(["imagefolder", "src", "dst", "--recursive", "--workers=2"])
  assert (args.kind, args.src, args.dst, args.recursive, args.workers) == (
    "imagefolder",
    "src",
    "dst",
    True,
    2,
  )
  assert convert.command().parse(["merge", "out"]).dst is None
  args = tokenizer.command().parse(["encode", "clip", "a photo", "--context_length", "6"])
  assert (args.command, args.vocab, args.text, args.context_length) == (
    "encode",
    "clip",
    "a photo",
    6,
  )
  args = convert_checkpoint.command().parse(["--from=bit", "m.npz", "--out=o"])
  assert (args.fmt, args.to, args.src, args.out) == ("bit", None, "m.npz", "o")


def test_what_a_tool_cannot_take_is_one_line_naming_it(capsys):
  hint = "(python -m big_transfer.report --help lists what it takes)"
  assert refused(report.command(), [], capsys) == f"error: --workdir is required {hint}"
  line = refused(convert_checkpoint.command(), ["x", "--from=bit", "--to=timm", "--out=o"], capsys)
  assert "one of --from=FORMAT (import) or --to=FORMAT (export) is needed" in line
  line = refused(convert_checkpoint.command(), ["x", "--from=bigvision", "--out=o"], capsys)
  assert line.startswith("error: --from=bigvision: value should be one of")
  assert "did you mean big_vision?" in line
  assert "error: NAME is required" in refused(prepare.command(), [], capsys)
  line = refused(convert.command(), ["csv", "a", "b", "c"], capsys)
  assert line.startswith("error: unexpected argument 'c'")
  line = refused(convert.command(), ["webdataset", "a", "b", "--split=../x"], capsys)
  assert "--split='../x' is not a plain split name" in line
  line = refused(bench.command(), ["--steps=ten"], capsys)
  assert line.startswith("error: --steps=ten: ") and "int" in line
  line = refused(tokenizer.command(), ["--vocab_size=5"], capsys)
  assert line.startswith("error: a command is needed: train | encode")
  line = refused(tokenizer.command(), ["train", "builtin:glyphs"], capsys)
  assert line.startswith("error: --out is required (python -m big_transfer.data.tokenizer train")
