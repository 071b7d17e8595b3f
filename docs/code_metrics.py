"""The numbers in docs/ARCHITECTURE.md: lines per module, the longest functions (overall and in
the transfer and study modules), the package's import cycles (a module importing another that
imports it back, lazily inside a function or not), and the modules that name a pre-training
method as a string (what adding a method would touch).

  python docs/code_metrics.py [--rev=GIT_REV]   # the working tree, or a commit of it
"""

import argparse
import ast
import re
import subprocess
import sys

METHOD_NAMES = ("supervised", "simclr", "clip", "slip")


def files(rev):
  if rev:
    out = subprocess.run(
      ["git", "ls-tree", "-r", "--name-only", rev, "big_transfer"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.split()
    read = lambda p: (
      subprocess.run(
        ["git", "show", f"{rev}:{p}"], capture_output=True, text=True, check=True
      ).stdout
    )
  else:
    out = subprocess.run(
      ["git", "ls-files", "--cached", "--others", "--exclude-standard", "big_transfer"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.split()
    read = lambda p: open(p).read()
  return {p: read(p) for p in out if p.endswith(".py")}


def method_string_modules(src: dict) -> list[str]:
  """Modules outside methods/ that compare with or list a method's name as a string literal."""
  out = []
  pat = re.compile("[\"'](" + "|".join(METHOD_NAMES) + ")[\"']")
  for path, text in src.items():
    if "/methods/" in path:
      continue
    tree = ast.parse(text)
    hits = 0
    for node in ast.walk(tree):
      if isinstance(node, ast.Compare):
        seg = ast.get_source_segment(text, node) or ""
        # a method's name against something called method (not a model version or a preset)
        hits += bool(pat.search(seg) and "method" in seg)
    if hits:
      out.append(path)
  return sorted(out)


TRANSFER_LAYER = re.compile(
  r"big_transfer/(finetune|session|transfer|study|study_plan|study_slurm|protocols/\w+)\.py$"
)


def imports(path: str, text: str) -> set[str]:
  """The package modules ``path`` imports, at module level or inside a function."""
  out = set()
  for node in ast.walk(ast.parse(text)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    out |= {n for n in names if n.startswith("big_transfer")}
  return out


def import_cycles(src: dict) -> list[list[str]]:
  """Cycles in the package's import graph (each once, as module names)."""
  mod = lambda p: p[:-3].replace("/", ".").removesuffix(".__init__")
  modules = {mod(p) for p in src}
  graph = {
    mod(p): {m for m in imports(p, t) if m in modules and m != mod(p)} for p, t in src.items()
  }
  cycles, seen = [], set()

  def walk(node, stack):
    for nxt in sorted(graph.get(node, ())):
      if nxt in stack:
        cycle = stack[stack.index(nxt) :]
        key = frozenset(cycle)
        if key not in seen:
          seen.add(key)
          cycles.append(cycle)
      elif len(stack) < 12:
        walk(nxt, stack + [nxt])

  for m in sorted(graph):
    walk(m, [m])
  return cycles


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rev", default="")
  args = ap.parse_args()
  src = files(args.rev)
  lines = sorted(((len(t.splitlines()), p) for p, t in src.items()), reverse=True)
  funcs = []
  for path, text in src.items():
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        funcs.append((node.end_lineno - node.lineno + 1, f"{path}:{node.name}"))
  funcs.sort(reverse=True)
  layer = [(n, f) for n, f in funcs if TRANSFER_LAYER.search(f.split(":")[0])]
  print(f"modules: {len(src)}, lines: {sum(n for n, _ in lines)}")
  print(
    "largest modules: " + ", ".join(f"{p.removeprefix('big_transfer/')} {n}" for n, p in lines[:8])
  )
  print(
    "longest functions: "
    + ", ".join(f"{p.removeprefix('big_transfer/')} {n}" for n, p in funcs[:8])
  )
  print(
    "longest functions of the transfer and study modules: "
    + ", ".join(f"{p.removeprefix('big_transfer/')} {n}" for n, p in layer[:5])
  )
  cycles = import_cycles(src)
  print(
    f"import cycles: {len(cycles)}"
    + (" (" + "; ".join(" -> ".join(c + c[:1]) for c in cycles) + ")" if cycles else "")
  )
  hits = method_string_modules(src)
  print(
    f"modules comparing method names outside methods/: {len(hits)} "
    f"({', '.join(h.removeprefix('big_transfer/') for h in hits) or 'none'})"
  )


if __name__ == "__main__":
  sys.exit(main())
