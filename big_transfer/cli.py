"""One command line for every ``python -m big_transfer.X``: absl flags, one ``--help``, bad input
in one line.

Every entry point parses its command line with absl's flags and prints its help with
``render``: the module's docstring (what it does, with example commands), a usage line, its
arguments, then each flag with its type or choices, its default and its meaning. A command line
it cannot take is one ``error:`` line naming the flag, value or argument (the nearest flag for a
misspelt one) and exits 2.

- train, finetune and study define their flags on absl's global ``FLAGS`` (``app.define_flags``):
  ml_collections' ``--config`` with ``--config.KEY=VALUE`` overrides and absl logging's
  ``--verbosity`` live there; ``config_lib.flags_parser`` parses them.
- the tools (bench, report, convert_checkpoint, data.convert, data.tokenizer, data.prepare)
  build a ``Command``: the same absl flag types on a ``FlagValues`` of their own (modules import
  each other and absl allows a name once per ``FlagValues``; a fresh one per call also lets
  tests call ``main(argv)`` repeatedly), positional arguments, and subcommands as the first
  argument (``data.tokenizer train ...``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import textwrap
import types
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import flags

WIDTH = 100
HELP_ARGS = ("-h", "--help", "-?", "--helpshort", "--helpfull")


@dataclasses.dataclass(frozen=True)
class Arg:
  """A positional argument: ``nargs`` '1' (one), '?' (optional) or '+' (one or more)."""

  name: str
  help: str
  nargs: str = "1"
  choices: tuple[str, ...] = ()
  metavar: str = ""

  @property
  def shown(self) -> str:
    return self.metavar or self.name.upper()


class Command:
  """A tool's command line: ``python -m MODULE [COMMAND] ARGS --flags``.

  Flags are absl flags on ``self.flags`` (define them with the methods below, or with any
  ``flags.DEFINE_*(..., flag_values=command.flags)``); ``parse(argv)`` returns a namespace of
  every flag's value (under its ``dest``) and every positional argument, and ``command`` when
  the tool has subcommands."""

  def __init__(
    self,
    module: str,
    doc: str,
    args: Sequence[Arg] = (),
    commands: dict[str, Command] | None = None,
    summary: str = "",
    usage: str = "",
  ):
    self.module = module
    self.prog = f"python -m {module}"
    self.doc = textwrap.dedent(doc).strip()
    self.args = tuple(args)
    self.commands = dict(commands or {})
    self.summary = summary
    self._usage = usage
    self.flags = flags.FlagValues()
    self._required: list[str] = []
    self._dest: dict[str, str] = {}
    self._metavar: dict[str, str] = {}
    self._checks: list[Callable[[types.SimpleNamespace], str | None]] = []

  # -- definitions: absl's DEFINE_* on this command's FlagValues --------------------------------

  def _define(self, define, name, default, help, *more, required=False, dest=None, metavar=None):
    define(name, default, *more, help, flag_values=self.flags)
    if required:
      self._required.append(name)
    self._dest[name] = dest or name
    if metavar:
      self._metavar[name] = metavar

  def string(self, name: str, default: str | None, help: str, **kw) -> None:
    self._define(flags.DEFINE_string, name, default, help, **kw)

  def integer(self, name: str, default: int | None, help: str, **kw) -> None:
    self._define(flags.DEFINE_integer, name, default, help, **kw)

  def number(self, name: str, default: float | None, help: str, **kw) -> None:
    self._define(flags.DEFINE_float, name, default, help, **kw)

  def boolean(self, name: str, default: bool, help: str, **kw) -> None:
    self._define(flags.DEFINE_bool, name, default, help, **kw)

  def enum(self, name: str, default: str | None, choices: Sequence[str], help: str, **kw) -> None:
    self._define(
      lambda n, d, h, flag_values: flags.DEFINE_enum(
        n, d, list(choices), h, flag_values=flag_values
      ),
      name,
      default,
      help,
      **kw,
    )

  def repeated(self, name: str, help: str, **kw) -> None:
    """A flag given any number of times (its values in order; [] when absent)."""
    self._define(flags.DEFINE_multi_string, name, [], help, **kw)

  def check(self, fn: Callable[[types.SimpleNamespace], str | None]) -> None:
    """``fn(args)`` returns what is wrong with a parsed command line (one line), or None."""
    self._checks.append(fn)

  # -- parsing ----------------------------------------------------------------------------------

  def parse(self, argv: Sequence[str] | None = None) -> types.SimpleNamespace:
    """The namespace of a command line (``sys.argv[1:]`` when None). ``--help`` prints the help
    and exits 0; what it cannot take is one ``error:`` line and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[: argv.index("--")] if "--" in argv else argv
    if self.commands:
      name = next((a for a in head if not a.startswith("-")), None)
      if name is None:
        if any(a in HELP_ARGS for a in head):
          self.exit_help()
        self.error(f"a command is needed: {' | '.join(self.commands)}")
      if name not in self.commands:
        self.error(f"unknown command {name!r}{_nearest(name, self.commands)}")
      argv.remove(name)
      args = self.commands[name].parse(argv)
      args.command = name
      return args
    if any(a in HELP_ARGS for a in head):
      self.exit_help()
    try:
      rest = self.flags([self.prog, *argv])[1:]
    except flags.UnrecognizedFlagError as e:
      self.error(unknown_flag(e.flagname, self._dest))
    except flags.Error as e:
      self.error(_value_error(e, self.flags))
    out = {dest: self.flags[name].value for name, dest in self._dest.items()}
    for name in self._required:
      if self.flags[name].value is None:
        self.error(f"--{name} is required")
    out.update(self._positionals(rest))
    args = types.SimpleNamespace(**out)
    for check in self._checks:
      problem = check(args)
      if problem:
        self.error(problem)
    return args

  def _positionals(self, rest: list[str]) -> dict:
    out = {}
    for i, arg in enumerate(self.args):
      if arg.nargs == "+":
        later = len(self.args) - i - 1
        take = rest[: max(0, len(rest) - later)]
        if not take:
          self.error(f"{arg.shown} is required")
        out[arg.name], rest = take, rest[len(take) :]
        for value in take:
          self._check_choice(arg, value)
        continue
      if not rest:
        if arg.nargs == "1":
          self.error(f"{arg.shown} is required")
        out[arg.name] = None
        continue
      out[arg.name], rest = rest[0], rest[1:]
      self._check_choice(arg, out[arg.name])
    if rest:
      self.error(f"unexpected argument {rest[0]!r}")
    return out

  def _check_choice(self, arg: Arg, value: str) -> None:
    if arg.choices and value not in arg.choices:
      self.error(
        f"{arg.shown}={value!r}: not one of {' | '.join(arg.choices)}"
        + _nearest(value, arg.choices)
      )

  def error(self, message: str) -> NoReturn:
    fail(self.module, message)

  def exit_help(self) -> NoReturn:
    print(self.help())
    raise SystemExit(0)

  # -- help -------------------------------------------------------------------------------------

  def usage(self) -> str:
    if self._usage:
      return f"{self.prog} {self._usage}"
    if self.commands:
      return f"{self.prog} COMMAND ARGS [flags]"
    parts = [self.prog]
    for arg in self.args:
      shown = arg.shown + (" ..." if arg.nargs == "+" else "")
      parts.append(f"[{shown}]" if arg.nargs == "?" else shown)
    parts += [f"--{n}={self._metavar_of(self.flags[n])}" for n in self._required]
    if len(self._dest) > len(self._required):
      parts.append("[flags]")
    return " ".join(parts)

  def _metavar_of(self, flag) -> str:
    return self._metavar.get(flag.name) or metavar(flag)

  def help(self) -> str:
    listed = [self.flags[name] for name in self._dest]
    return render(
      self.doc,
      self.usage(),
      arguments=[(a.shown + (" ..." if a.nargs == "+" else ""), _arg_help(a)) for a in self.args],
      flag_entries=[
        flag_entry(f, self._metavar_of(f), required=f.name in self._required) for f in listed
      ],
      commands=[(name, c.summary) for name, c in self.commands.items()],
      commands_hint=f"{self.prog} COMMAND --help: a command's arguments and flags",
    )


def _arg_help(arg: Arg) -> str:
  text = arg.help
  if arg.choices:
    text = f"one of {' | '.join(arg.choices)}: {text}"
  return text + (" (optional)" if arg.nargs == "?" else "")


def fail(module: str, message: str) -> NoReturn:
  """A command line an entry point cannot take: one ``error:`` line, exit 2 — the message, and
  where the help is unless the message names a command line itself (or the module is not
  known: '')."""
  named = not module or module.split()[0] in message
  hint = "" if named else f" (python -m {module} --help lists what it takes)"
  print(f"error: {message}{hint}", file=sys.stderr)
  raise SystemExit(2)


def unknown_flag(name: str, names) -> str:
  """The line for a flag an entry point does not have, with the nearest one it has."""
  return f"unknown flag --{name}{_nearest(name, names, '--')}"


def _value_error(e: flags.Error, fv: flags.FlagValues) -> str:
  """absl's line for a bad value, with the nearest choice of an enum flag."""
  text = str(e).removeprefix("flag ")
  m = re.match(r"--(\w+)=(.*?): value should be one of", text)
  if m and m.group(1) in fv:
    text += _nearest(m.group(2), fv[m.group(1)].parser.enum_values)
  return text


def _nearest(name: str, names, prefix: str = "") -> str:
  near = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
  return f"; did you mean {prefix}{near[0]}?" if near else ""


def metavar(flag) -> str:
  """What a flag's value looks like in the help: its choices, or its type."""
  parser = flag.parser
  if getattr(parser, "enum_values", None):
    return "|".join(parser.enum_values)
  kind = flag.flag_type()
  if kind.endswith("int"):
    return "INT"
  if kind.endswith("float"):
    return "FLOAT"
  return flag.name.upper()


def flag_entry(flag, shown: str | None = None, required: bool = False) -> tuple:
  """(left, help) of one flag in the help's list."""
  if isinstance(flag.parser, flags.BooleanParser):
    left = f"--[no]{flag.name}"
  else:
    left = f"--{flag.name}={shown or metavar(flag)}"
  if flag.flag_type().startswith("multi"):
    left += " (repeatable)"
  if required:
    left += "  (required)"
  elif flag.default not in (None, "", []):
    default = flag.default
    if isinstance(default, bool):
      default = str(default).lower()
    elif isinstance(default, list):
      default = ",".join(map(str, default))
    left += f"  (default: {default})"
  meaning = " ".join((flag.help or "").split())
  if getattr(flag.parser, "enum_values", None):  # absl puts the choices before an enum's help
    meaning = meaning.removeprefix(f"<{'|'.join(flag.parser.enum_values)}>: ")
  return left, meaning


def render(
  doc: str,
  usage: str,
  arguments: Sequence[tuple[str, str]] = (),
  flag_entries: Sequence[tuple[str, str]] = (),
  commands: Sequence[tuple[str, str]] = (),
  commands_hint: str = "",
) -> str:
  """The one help format: the docstring as written, the usage line, then ``arguments:``,
  ``commands:`` and ``flags:`` — each entry on a line, its meaning wrapped below it."""
  out = [doc.rstrip(), "", f"usage: {usage}"] if doc else [f"usage: {usage}"]

  def section(title, entries):
    if not entries:
      return
    out.extend(["", f"{title}:"])
    for left, meaning in entries:
      out.append(f"  {left}")
      out.extend(
        textwrap.wrap(
          meaning or "-",
          WIDTH,
          initial_indent=" " * 6,
          subsequent_indent=" " * 6,
          break_on_hyphens=False,
          break_long_words=False,
        )
      )

  section("arguments", arguments)
  section("commands", commands)
  if commands and commands_hint:
    out.append(f"  ({commands_hint})")
  section("flags", flag_entries)
  return "\n".join(out)
