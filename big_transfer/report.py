r"""The study's report from its results table only: Markdown tables and PNG figures.

  python -m big_transfer.report --workdir=runs/mini_study

Reads ``WORKDIR/results.jsonl`` (one row per transfer result, written by finetune.py) and writes
``WORKDIR/report/report.md`` with:
  - per downstream set and protocol: test accuracy (mean ± std over seeds) for every
    pre-training arm and shots, the published number beside ours where an arm matches a
    published one (``tags.published``);
  - figures: accuracy against shots per arm for each downstream set; the spread across
    pre-training sources against shots (the paper's main finding); accuracy against
    pre-training size with the supervised reference; web vs. template captions; SimCLR vs. CLIP.
Which arms form a comparison is read from the rows' ``tags.group`` (set by the study config:
``sources``, ``size``, ``reference``, ``captions``, ``method``).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from big_transfer import cli, methods, paths, published, transfer
from big_transfer.workdir import Workdir

SHOT_ORDER = ("1", "5", "10", "20", "25", "50", "100", "200", "full")


def shot_key(s) -> float:
  return math.inf if str(s) == "full" else float(s)


def groups_of(row) -> set[str]:
  return set(filter(None, str(row.get("tags", {}).get("group", "")).split("+")))


REQUIRED = ("data", "protocol", "shots", "seed")


def unusable(row) -> str | None:
  """Why a results row cannot enter a table (None: it can): not an object, a missing key, or
  an accuracy that is missing or not a finite number (a failed run's row)."""
  if not isinstance(row, dict):
    return f"not a JSON object ({type(row).__name__})"
  missing = [k for k in REQUIRED if k not in row]
  if missing:
    return f"no {', '.join(missing)}"
  for k in ("test_accuracy", "val_accuracy"):
    v = row.get(k)
    if k not in row:
      return f"no {k}"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
      return f"{k} is {json.dumps(v)}"
  return None


def split_rows(rows: Sequence) -> tuple[list[dict], list[tuple[Any, str]]]:
  """(usable rows, [(row, why)] for the others)."""
  good, bad = [], []
  for r in rows:
    why = unusable(r)
    if why is None:
      good.append(r)
    else:
      bad.append((r, why))
  return good, bad


def _row_name(r) -> str:
  if not isinstance(r, dict):
    return repr(r)[:80]
  return str(
    r.get("row_id")
    or r.get("workdir")
    or "/".join(str(r.get(k, "?")) for k in ("data", "protocol", "shots", "seed"))
  )


def left_out(bad: list[tuple[Any, str]]) -> str:
  """The report's list of rows that could not enter a table, one line each."""
  return "\n".join(f"- `{_row_name(r)}`: {why or 'unusable'}" for r, why in bad)


def cell_of(r: dict) -> tuple:
  """What a row answers: (arm, downstream set, protocol, shots, seed, WiSE-FT's alpha)."""
  tags = r.get("tags", {})
  return (
    tags.get("arm", r.get("pretrain_method", "?")),
    tags.get("downstream", r["data"]),
    r["protocol"],
    str(r["shots"]),
    r["seed"],
    (r.get("hyperparameters") or {}).get("alpha"),
  )


def _numbers(r: dict) -> tuple:
  return (r["val_accuracy"], r["test_accuracy"], r.get("test_selected_accuracy"))


def reconcile(rows: Sequence[dict]) -> tuple[list[dict], list[str], list[str]]:
  """Rows that answer the same cell twice (tables merged from two clusters, a run appended
  twice): identical ones count once; ones with other numbers are a conflict, resolved by the
  rule RULE (the higher validation accuracy, then the later row). Returns (the rows kept, one
  line per cell with identical duplicates, one line per conflicting cell naming each row's
  numbers and where it came from)."""
  by_cell: dict[tuple, list[dict]] = defaultdict(list)
  for r in rows:
    by_cell[cell_of(r)].append(r)
  kept, dups, conflicts = [], [], []
  name = lambda c: (
    " / ".join(str(x) for x in c[:3])
    + f", {shots_label(c[3])}, seed {c[4]}"
    + (f", alpha {c[5]}" if c[5] is not None else "")
  )
  for cell, rs in by_cell.items():
    distinct = {}
    for r in rs:
      distinct.setdefault(_numbers(r), r)
    if len(rs) > len(distinct):
      dups.append(
        f"{name(cell)}: {len(rs)} rows, {len(rs) - len(distinct)} identical (counted once)"
      )
    best = max(distinct.values(), key=lambda r: (r["val_accuracy"], str(r.get("time", ""))))
    kept.append(best)
    if len(distinct) > 1:
      each = "; ".join(
        f"{'kept' if r is best else 'left out'}: val {100 * r['val_accuracy']:.1f} test "
        f"{100 * r['test_accuracy']:.1f} (`{_row_name(r)}`)"
        for r in sorted(distinct.values(), key=lambda r: r is not best)
      )
      conflicts.append(f"{name(cell)}: {len(distinct)} different rows — {each}")
  return kept, dups, conflicts


RULE = "the row with the higher validation accuracy is kept (ties: the later one)"


def aggregate(rows: Sequence[dict]) -> dict[tuple, dict[str, Any]]:
  """(arm, downstream, protocol, shots) -> {mean, std, n, val, ts_mean, tags, ...}: test
  accuracy over seeds (WiSE-FT rows: the validation-chosen alpha of each seed), the
  test-selected accuracy (the paper's way) where rows carry it, and how the rows were made
  (grid, refit, test subsampling) so comparisons can say where they differ. Rows that cannot
  enter a table (:func:`unusable`) are left out (the report lists them). ``missing_seeds``:
  the seeds other arms have at the same downstream set, protocol and shots that this cell
  lacks."""
  rows, _ = split_rows(rows)
  rows, _, _ = reconcile(rows)
  by_seed: dict[tuple, dict[Any, dict]] = defaultdict(dict)
  for r in rows:
    tags = r.get("tags", {})
    key = (
      tags.get("arm", r.get("pretrain_method", "?")),
      tags.get("downstream", r["data"]),
      r["protocol"],
      str(r["shots"]),
    )
    prev = by_seed[key].get(r["seed"])
    if prev is None or r["val_accuracy"] > prev["val_accuracy"]:
      by_seed[key][r["seed"]] = r
  out = {}
  for key, seeds in by_seed.items():
    rs = list(seeds.values())
    test = np.array([r["test_accuracy"] for r in rs])
    val = np.array([r["val_accuracy"] for r in rs])
    ts = [r["test_selected_accuracy"] for r in rs if r.get("test_selected_accuracy") is not None]
    any_row = rs[0]
    out[key] = {
      "mean": float(test.mean()),
      "std": float(test.std()),
      "n": len(test),
      "val": float(val.mean()),
      "tags": any_row.get("tags", {}),
      "ts_mean": float(np.mean(ts)) if ts else None,
      "grid": any_row.get("hyperparameters", {}).get("grid", ""),
      "refit": any("refit" in r for r in rs),
      "val_split": any_row.get("val_split", ""),
      "recipe": any_row.get("recipe", {}),
      "data": any_row.get("data", ""),
      "test_subsampled": any_row.get("test_subsampled"),
      "pretrain_size": any_row.get("pretrain_size", ""),
      "num_classes": any_row.get("num_classes"),
      "pretrain_method": any_row.get("pretrain_method", ""),
      "seeds": sorted(seeds, key=str),
    }
  peers: dict[tuple, set] = defaultdict(set)
  for key, a in out.items():
    peers[key[1:]] |= set(a["seeds"])
  for key, a in out.items():
    a["expected_seeds"] = len(peers[key[1:]])
    a["missing_seeds"] = sorted(peers[key[1:]] - set(a["seeds"]), key=str)
  return out


def _size_value(text) -> float | None:
  t = str(text).strip().upper()
  if not t:
    return None
  mult = {"K": 1e3, "M": 1e6, "B": 1e9}.get(t[-1], 1.0)
  try:
    return float(t[:-1] if t[-1] in "KMB" else t) * mult
  except ValueError:
    return None


def size_source(agg: dict[tuple, dict], group: str) -> str:
  """The source a size sweep varies: its arms' own ``source`` tag (one), else the group's
  suffix ('size_yfcc' -> 'yfcc'), else 'sizes'."""
  sources = {agg[k]["tags"].get("source", "") for k in agg if group in groups_of(agg[k])}
  sources.discard("")
  if len(sources) == 1:
    return sources.pop()
  return group.partition("_")[2] or "sizes"


def figure_specs(agg: dict[tuple, dict]) -> dict[str, dict]:
  """What each figure shows, as data: panels with axis labels and series of (x, y, err). The
  PNGs are drawn from these, and tests check them."""
  downstreams = sorted({k[1] for k in agg})
  protocols = sorted({k[2] for k in agg if k[2] != "zeroshot"})
  main = "ft" if "ft" in protocols else (protocols[0] if protocols else "zeroshot")
  specs: dict[str, dict] = {}
  colours = arm_colours(agg)

  def shots_axis(keys):
    return sorted({k[3] for k in keys}, key=shot_key)

  # Figures 1 and 2: a panel per downstream set and protocol (fine-tuning and probes side by
  # side: the paper's finding is how the source's effect changes between them).
  pairs = [
    (ds, p) for ds in downstreams for p in protocols if any(k[1] == ds and k[2] == p for k in agg)
  ]

  # 1. accuracy against shots, one series per arm
  panels = []
  for ds, protocol in pairs:
    keys = [k for k in agg if k[1] == ds and k[2] == protocol]
    xs = shots_axis(keys)
    series = {}
    for arm in sorted({k[0] for k in keys}):
      pts = [(x, agg[(arm, ds, protocol, x)]) for x in xs if (arm, ds, protocol, x) in agg]
      tags = pts[0][1]["tags"]
      series[arm] = {
        "x": [p[0] for p in pts],
        "y": [p[1]["mean"] for p in pts],
        "err": [p[1]["std"] for p in pts],
        "seeds": [
          f"{p[1]['n']}/{p[1]['expected_seeds']}" if p[1].get("missing_seeds") else "" for p in pts
        ],
        "colour": colours[arm],
        "style": {
          "source": tags.get("source", ""),
          "size": tags.get("size", ""),
          "method": pts[0][1]["pretrain_method"],
        },
      }
    classes = {agg[k]["num_classes"] for k in keys if agg[k].get("num_classes")}
    zeroshot = {
      k[0]: agg[k]["mean"] for k in agg if k[1] == ds and k[2] == "zeroshot" and k[0] in series
    }
    panels.append(
      {
        "title": f"{ds} ({protocol})",
        "xlabel": "shots per class",
        "ylabel": "test accuracy",
        "xcategories": xs,
        "series": series,
        "chance": 1.0 / classes.pop() if len(classes) == 1 else None,
        "zeroshot": zeroshot,
        "shots_axis": True,
        "seeds": max(agg[k]["n"] for k in keys),
      }
    )
  specs["accuracy_vs_shots"] = {"title": "Transfer accuracy against shots", "panels": panels}

  # 2. spread across pre-training sources against shots (max - min of the source arms)
  panels = []
  for ds, protocol in pairs:
    keys = [k for k in agg if k[1] == ds and k[2] == protocol and "sources" in groups_of(agg[k])]
    xs = shots_axis(keys)
    spread = []
    for x in xs:
      vals = [agg[k]["mean"] for k in keys if k[3] == x]
      spread.append(100 * (max(vals) - min(vals)) if len(vals) >= 2 else float("nan"))
    panels.append(
      {
        "title": f"{ds} ({protocol})",
        "xlabel": "shots per class",
        "ylabel": "spread (accuracy points)",
        "xcategories": xs,
        "series": {"spread": {"x": xs, "y": spread, "err": [0.0] * len(xs)}},
        "n_sources": len({k[0] for k in keys}),
        "shots_axis": True,
      }
    )
  specs["spread_vs_shots"] = {
    "title": "How much the pre-training source matters: max - min accuracy across sources",
    "panels": panels,
  }

  # 3. accuracy against pre-training size, one figure per size group ('size' = LAION,
  # 'size_yfcc', ...); each reference arm (supervised ImageNet, scratch) its own labelled line.
  size_groups = sorted({g for k in agg for g in groups_of(agg[k]) if g.startswith("size")})
  for group in size_groups:
    panels = []
    for ds in downstreams:
      keys = [k for k in agg if k[1] == ds and k[2] == main and group in groups_of(agg[k])]
      series, refs = {}, {}
      for x in shots_axis(keys):
        pts = sorted(
          (_size_value(agg[k]["pretrain_size"] or agg[k]["tags"].get("size")), agg[k])
          for k in keys
          if k[3] == x
        )
        pts = [p for p in pts if p[0] is not None]
        if pts:
          series[shots_label(x)] = {
            "x": [p[0] for p in pts],
            "y": [p[1]["mean"] for p in pts],
            "err": [p[1]["std"] for p in pts],
          }
          for k in agg:
            if k[1] == ds and k[2] == main and k[3] == x and "reference" in groups_of(agg[k]):
              refs[f"{k[0]}, {shots_label(x)}"] = {"y": agg[k]["mean"], "colour": colours[k[0]]}
      if series:
        source = size_source(agg, group)
        panels.append(
          {
            "title": f"{ds} ({main})",
            "xlabel": f"pre-training examples ({source})",
            "ylabel": "test accuracy",
            "xscale": "log",
            "series": series,
            "hlines": refs,
          }
        )
    name = "accuracy_vs_size" + (f"_{group.partition('_')[2]}" if "_" in group else "")
    specs[name] = {
      "title": f"Pre-training size, {size_source(agg, group)} (reference arms dashed)",
      "panels": panels,
    }

  # 4./5. paired comparisons as grouped bars: captions (web vs template), method (SimCLR vs
  # CLIP). The paper sets SimCLR's LP-FT beside CLIP's FT (its SimCLR numbers are LP-FT): the
  # method figure pairs them so where SimCLR arms ran LP-FT, and its title says which it shows.
  for group, name, title in (
    ("captions", "captions", "Web vs. template captions"),
    ("method", "method", "SimCLR vs. CLIP on the same data"),
  ):
    panels, pairs = [], set()
    for ds in downstreams:
      arms = sorted({k[0] for k in agg if k[1] == ds and group in groups_of(agg[k])})
      protocol_of = {}
      for arm in arms:
        method = agg[next(k for k in agg if k[0] == arm and k[1] == ds)]["pretrain_method"]
        want = published.METHOD_FIGURE_PROTOCOL.get(method, main) if group == "method" else main
        have = {k[2] for k in agg if k[0] == arm and k[1] == ds}
        if want in have or main in have:
          protocol_of[arm] = want if want in have else main
      keys = [k for k in agg if k[1] == ds and protocol_of.get(k[0]) == k[2]]
      if not keys:
        continue
      xs = shots_axis(keys)
      series = {}
      for arm, p in sorted(protocol_of.items()):
        label = arm if len(set(protocol_of.values())) == 1 else f"{arm} ({p})"
        series[label] = {
          "colour": colours[arm],
          "x": xs,
          "y": [
            agg[(arm, ds, p, x)]["mean"] if (arm, ds, p, x) in agg else float("nan") for x in xs
          ],
          "err": [agg[(arm, ds, p, x)]["std"] if (arm, ds, p, x) in agg else 0.0 for x in xs],
        }
      used = sorted(set(protocol_of.values()))
      pairs.add(" vs. ".join(used))
      panels.append(
        {
          "title": f"{ds} ({' vs. '.join(used)})",
          "xlabel": "shots per class",
          "ylabel": "test accuracy",
          "xcategories": xs,
          "series": series,
          "kind": "bar",
        }
      )
    if group == "method" and panels:
      title += (
        "; SimCLR LP-FT beside CLIP FT, as the paper pairs them"
        if any("lp_ft" in p and "ft" in p.split(" vs. ") for p in pairs)
        else f"; both {main} (no SimCLR LP-FT runs: the paper pairs SimCLR LP-FT with CLIP FT)"
      )
    specs[name] = {"title": title, "panels": panels}
  return {k: v for k, v in specs.items() if v["panels"]}


def shots_label(x) -> str:
  """'1 shot', '5 shots', 'all data' (a cell's shots as words)."""
  x = str(x)
  return "all data" if x == "full" else f"{x} shot" + ("" if x == "1" else "s")


def arm_colours(agg: dict[tuple, dict]) -> dict[str, tuple]:
  """One colour per arm of the study, the same in every figure, every two far apart: a
  qualitative palette (tab10, then tab20's second shades) in the arms' sorted order."""
  import matplotlib

  arms = sorted({k[0] for k in agg})
  tab10 = matplotlib.colormaps["tab10"]
  tab20 = matplotlib.colormaps["tab20"]
  palette = [tab10(i)[:3] for i in range(10)] + [tab20(2 * i + 1)[:3] for i in range(10)]
  return {arm: tuple(float(v) for v in palette[i % len(palette)]) for i, arm in enumerate(arms)}


def _shot_positions(cats: Sequence[str]) -> dict[str, float]:
  """Shots on a log axis, 'full' set apart to the right and zero-shot ('0') to the left."""
  nums = [float(c) for c in cats if c not in ("full", "0")]
  top = np.log10(max(nums)) if nums else 0.0
  pos = {c: np.log10(float(c)) for c in cats if c not in ("full", "0")}
  pos["full"] = top + 0.7
  pos["0"] = -0.6
  return pos


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _styles(series: dict) -> dict[str, dict]:
  """The arm's own colour (``colour`` in the series: the same in every figure), method as line
  style, size as marker: each property its own channel."""

  def index(key):
    values = sorted({str(s.get("style", {}).get(key, "")) for s in series.values()})
    return {v: i for i, v in enumerate(values)}

  colour, line, marker = index("source"), index("method"), index("size")
  cmap = __import__("matplotlib").colormaps["tab10"]
  styled = {
    label: {k: str(s.get("style", {}).get(k, "")) for k in ("source", "method", "size")}
    for label, s in series.items()
  }
  # Arms of one source share its hue, each in its own shade (darker to lighter), so no two
  # series are drawn in the same colour.
  same = {
    label: [l for l in sorted(styled) if styled[l]["source"] == st["source"]]
    for label, st in styled.items()
  }
  out = {}
  for label, st in styled.items():
    base = np.array(cmap(colour[st["source"]] % 10)[:3])
    k, n = same[label].index(label), len(same[label])
    t = (k / (n - 1) - 0.5) * 0.7 if n > 1 else 0.0  # -0.35 (darker) .. +0.35 (lighter)
    rgb = base + (1 - base) * t if t > 0 else base * (1 + t)
    own = series[label].get("colour")
    out[label] = {
      "color": tuple(own) if own else tuple(float(v) for v in rgb),
      "linestyle": _LINESTYLES[line[st["method"]] % len(_LINESTYLES)],
      "marker": _MARKERS[marker[st["size"]] % len(_MARKERS)],
    }
  return out


def _size_text(n: float) -> str:
  for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= div:
      return f"{n / div:g}{unit}"
  return f"{n:g}"


def _legend_label(label: str, s: dict) -> str:
  st = s.get("style")
  if not st:
    return label
  bits = [b for b in (st.get("method"), st.get("source"), st.get("size")) if b]
  return f"{label} ({', '.join(bits)})" if bits else label


def draw(spec: dict, path: str) -> None:
  """The figure of ``spec``, written to ``path`` (PNG)."""
  import matplotlib.pyplot as plt

  fig = render(spec)
  buf = io.BytesIO()  # the report may be in a bucket: the figure is written whole
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  paths.write_bytes(path, buf.getvalue())


def text_overlaps(fig) -> list[str]:
  """The figure's words that do not fit: a title, axis label, legend entry or annotation
  outside the canvas, or two of them drawn over each other (tick labels are laid out by
  matplotlib and left out)."""
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  canvas = fig.bbox
  texts = [fig._suptitle] if fig._suptitle is not None else []  # noqa: SLF001
  for ax in fig.axes:
    texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
  for legend in fig.legends:
    texts += list(legend.get_texts())
  boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text().strip()]
  problems = []
  for text, box in boxes:
    if (
      box.x0 < canvas.x0 - 1
      or box.x1 > canvas.x1 + 1
      or box.y0 < canvas.y0 - 1
      or box.y1 > canvas.y1 + 1
    ):
      problems.append(f"{text!r} is cut by the canvas's edge")
  for i, (a, ba) in enumerate(boxes):
    for b, bb in boxes[i + 1 :]:
      if (
        ba.overlaps(bb) and ba.intersection(ba, bb).width > 1 and ba.intersection(ba, bb).height > 1
      ):
        problems.append(f"{a!r} overlaps {b!r}")
  return problems


def render(spec: dict):
  """The matplotlib figure of a figure spec (not yet written anywhere)."""
  import matplotlib  # lazy: +0.4 s, for drawing only (train/finetune import this module)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = spec["panels"]
  # One y scale across panels that show the same quantity: panels compare at a glance.
  share = len({p["ylabel"] for p in panels}) == 1 and not any(p.get("kind") for p in panels)
  fig, axes = plt.subplots(
    1, len(panels), figsize=(4.6 * len(panels), 3.9), squeeze=False, sharey=share
  )
  handles: dict[str, Any] = {}
  any_err = any_missing = False
  for ax, p in zip(axes[0], panels):
    cats = p.get("xcategories")
    styles = _styles(p["series"])
    if p.get("kind") == "bar":
      n = max(1, len(p["series"]))
      width = 0.8 / n
      for i, (label, s) in enumerate(p["series"].items()):
        pos = [cats.index(x) + (i - (n - 1) / 2) * width for x in s["x"]]
        h = ax.bar(pos, s["y"], width, yerr=s["err"], label=label, capsize=2, color=s.get("colour"))
        handles.setdefault(label, h)
        any_err |= any(e > 0 for e in s["err"])
      ax.set_xticks(range(len(cats)), cats)
    elif p.get("shots_axis"):
      ticks = list(cats) + (["0"] if p.get("zeroshot") else [])
      pos = _shot_positions(ticks)
      for label, s in p["series"].items():
        st = styles[label] if s.get("style") else {"marker": "o"}
        h = ax.errorbar(
          [pos[x] for x in s["x"]], s["y"], yerr=s["err"], capsize=2, markersize=4, **st
        )
        handles.setdefault(_legend_label(label, s), h)
        any_err |= any(e > 0 for e in s["err"])
        if label in p.get("zeroshot", {}):  # zero-shot: an open marker at '0'
          z = ax.plot(
            [pos["0"]],
            [p["zeroshot"][label]],
            marker=st.get("marker", "o"),
            markerfacecolor="none",
            color="gray",
            linestyle="none",
          )[0]
          z.set_markeredgecolor(st.get("color"))
          handles.setdefault(
            "zero-shot (hollow marker, the arm's colour)",
            ax.plot([], [], marker="o", markerfacecolor="none", color="gray", linestyle="none")[0],
          )
      if "full" in cats and len(cats) > 1:
        ax.axvline(
          (pos["full"] + max(v for k, v in pos.items() if k not in ("full", "0"))) / 2,
          color="gray",
          linewidth=0.6,
          linestyle=(0, (2, 2)),
        )
      ax.set_xticks([pos[t] for t in ticks], [("zero-shot" if t == "0" else t) for t in ticks])
      if p.get("chance") is not None:
        ax.axhline(p["chance"], color="gray", linewidth=0.8, linestyle=":")
        ax.annotate(
          "chance",
          (0.99, p["chance"]),
          xycoords=("axes fraction", "data"),
          fontsize=7,
          ha="right",
          va="bottom",
          color="gray",
        )
    else:
      for label, s in p["series"].items():
        h = ax.errorbar(s["x"], s["y"], yerr=s["err"], marker="o", capsize=2, label=label)
        handles.setdefault(label, h)
        for x, y, n in zip(s["x"], s["y"], s.get("seeds") or []):
          if n:  # a point missing seeds says so where it is drawn
            ax.annotate(
              f"{n} seeds",
              (x, y),
              textcoords="offset points",
              xytext=(3, 3),
              fontsize=6,
              color=h.lines[0].get_color(),
            )
            any_missing = True
        any_err |= any(e > 0 for e in s["err"])
      for i, (label, ref) in enumerate(p.get("hlines", {}).items()):
        # A reference arm: a dashed line in the arm's colour, named in the legend (labels
        # written on the axes overlap when two references are close).
        h = ax.axhline(
          ref["y"], linestyle=_LINESTYLES[1 + i % 3], linewidth=1, color=ref.get("colour", "gray")
        )
        handles.setdefault(label, h)
    if p.get("xscale"):
      ax.set_xscale(p["xscale"])
      xs = sorted({x for s in p["series"].values() for x in s["x"]})
      if xs and len(xs) <= 8:  # the sizes themselves as ticks, not bare powers of ten
        ax.set_xticks(xs, [_size_text(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlim(xs[0] / 1.6, xs[-1] * 1.6)
    seeds = p.get("seeds")
    ax.set_title(
      textwrap.fill(
        p["title"]
        + (
          f", {seeds} seeds"
          if seeds and seeds > 1
          else ", 1 seed: no error bars"
          if seeds == 1
          else ""
        ),
        width=44,
      ),
      fontsize=10,
    )
    ax.set_xlabel(p["xlabel"])
    ax.set_ylabel(p["ylabel"])
    ax.grid(alpha=0.3)
  ncol = 1
  if handles and not (len(handles) == 1 and "spread" in handles):
    # As many columns as the figure's width holds at the longest label (7-pt text: ~0.06 in
    # a character, plus the line sample): a legend wider than the figure is cut.
    longest = max(len(k) for k in handles)
    ncol = max(1, min(4, len(handles), int(fig.get_figwidth() / (0.06 * longest + 0.6))))
    fig.legend(
      list(handles.values()),
      list(handles.keys()),
      loc="lower center",
      ncol=ncol,
      fontsize=7,
      frameon=False,
    )
  note = "; ".join(
    (
      [("error bars: ±1 standard deviation over seeds, in panels with more than one")]
      if any_err
      else []
    )
    + (["'n/N seeds': a point missing seeds other arms have"] if any_missing else [])
  )
  width = max(40, int(13 * 4.6 * len(panels)))  # characters that fit the figure's width
  title = textwrap.fill(spec["title"], width) + (
    f"\n{textwrap.fill(note, width + 20)}" if note else ""
  )
  fig.suptitle(title, fontsize=11 if len(panels) > 1 else 10)
  rows = -(-len(handles) // ncol) if handles else 0
  fig.tight_layout(rect=(0, min(0.45, 0.055 * rows + 0.02), 1, 1))
  return fig


def _cell(a: dict | None) -> str:
  if a is None:
    return ""
  text = (
    f"{100 * a['mean']:.1f}"
    if a["n"] == 1
    else f"{100 * a['mean']:.1f} ± {100 * a['std']:.1f} ({a['n']})"
  )
  missing = a.get("missing_seeds")
  if missing:
    text += (
      f" — {a['n']} of {a['expected_seeds']} seeds, missing seed "
      f"{', '.join(str(m) for m in missing)}"
    )
  return text


def summary(agg: dict[tuple, dict]) -> str:
  """The results at a glance, for a terminal: per downstream set and protocol, each arm's test
  accuracy (%, mean over seeds) at every shot count; the report has the full tables."""
  out = []
  for ds in sorted({k[1] for k in agg}):
    for protocol in sorted({k[2] for k in agg if k[1] == ds}):
      keys = [k for k in agg if k[1] == ds and k[2] == protocol]
      xs = sorted({k[3] for k in keys}, key=shot_key)
      arms = sorted({k[0] for k in keys})
      width = max(len(a) for a in arms)
      head = "  ".join(f"{x:>6}" for x in xs)
      out.append(f"{ds} / {protocol} (test accuracy %, chosen on validation)")
      out.append(f"  {'':<{width}}  {head}")
      for arm in arms:
        cells = [agg.get((arm, ds, protocol, x)) for x in xs]
        out.append(
          f"  {arm:<{width}}  "
          + "  ".join(
            (f"{100 * c['mean']:>5.1f}" + ("*" if c.get("missing_seeds") else " "))
            if c
            else f"{'-':>6}"
            for c in cells
          )
        )
  gaps = [k for k, a in sorted(agg.items()) if a.get("missing_seeds")]
  if gaps:
    out.append(
      "* missing seeds (other arms have them): "
      + "; ".join(
        f"{k[0]} {k[1]} {k[2]} {shots_label(k[3])} {agg[k]['n']}/{agg[k]['expected_seeds']}"
        for k in gaps[:8]
      )
      + (" ..." if len(gaps) > 8 else "")
    )
  return "\n".join(out)


def tables(agg: dict[tuple, dict]) -> str:
  """Per downstream set and protocol: every arm's validation-selected test accuracy."""
  out = []
  for ds in sorted({k[1] for k in agg}):
    for protocol in sorted({k[2] for k in agg if k[1] == ds}):
      keys = [k for k in agg if k[1] == ds and k[2] == protocol]
      xs = sorted({k[3] for k in keys}, key=shot_key)
      several = any(agg[k]["n"] > 1 for k in keys)
      out.append(
        f"### {ds} — {protocol} (test accuracy %, chosen on validation"
        + ("; mean ± std over (n) seeds)\n" if several else "; one seed)\n")
      )
      heads = [
        "zero-shot" if protocol == "zeroshot" else shots_label(x) if x != "full" else "all data"
        for x in xs
      ]
      out.append("| pre-training | " + " | ".join(heads) + " |")
      out.append("|---" * (len(xs) + 1) + "|")
      for arm in sorted({k[0] for k in keys}):
        out.append(
          f"| {arm} | " + " | ".join(_cell(agg.get((arm, ds, protocol, x))) for x in xs) + " |"
        )
      out.append("")
  return "\n".join(out)


# The downstream sets whose few-shot test sets the authors' code subsampled to k per class.
AUTHORS_SUBSAMPLED_TEST = (
  "domainnet_real",
  "domainnet_clipart",
  "cassava",
  "eurosat",
  "caltech_camera_traps",
)


def differences(key: tuple, a: dict, pub) -> list[str]:
  """How our cell and the published one were made differently (empty: like for like)."""
  _, ds, _, shots = key
  out = []
  if "authors' log" not in a["grid"]:  # ours ran their grid: where theirs peaked is no difference
    if not pub.in_text_grid:
      out.append(
        f"paper's number only outside the text's grid (lr {pub.lr:g}, batch "
        f"{pub.batch_size}, {pub.epochs} epochs)"
      )
    out.append(f"our grid: {a['grid'] or 'unknown'}")
  if a["ts_mean"] is None:
    out.append("ours not test-selected")
  theirs_sub = shots != "full" and ds in AUTHORS_SUBSAMPLED_TEST
  if theirs_sub and not a["test_subsampled"]:
    out.append(f"paper's test subsampled to {shots} per class, ours the full test split")
  elif a["test_subsampled"] and not theirs_sub:
    out.append("our test subsampled, the paper's not")
  if shots == "full" and not a["refit"] and not a.get("val_split"):
    out.append("ours trained on train minus validation (no refit)")
  if a["n"] > 1:
    out.append(f"ours the mean of {a['n']} seeds")
  if shots == "full" and a.get("val_split") and not a["refit"]:
    out.append(
      f"ours trained on the train split, chosen on the '{a['val_split']}' split, no refit on "
      f"train + val"
    )
  if a["tags"].get("pretrain_note"):  # the arm's own word on its pre-training recipe
    out.append(a["tags"]["pretrain_note"])
  order = (a.get("recipe") or {}).get("text_head_order", "labels")
  if (
    order == "labels"
    and (a.get("recipe") or {}).get("templates")
    and (ds in published.MISWIRED_TEXT_HEADS)
  ):
    out.append(
      "their text head on this set was wired to the wrong classes (their class-name list is "
      "not in their label order: the log's zero-shot column is at chance here); ours starts "
      "from a correctly ordered head"
    )
  why = published.quirk(a["tags"].get("published"), ds, key[2], shots)
  if why:
    out.append(f"the paper's number looks implausible: {why}")
  out += recipe_differences(key, a)
  return out


# The authors' fine-tuning recipe (their finetune.py, wise_ft.py, args.py; timm 0.4.12), as
# the rows record it (finetune.recipe_of): each value of ours that differs is named.
AUTHORS_RECIPE = {
  "decay": ("all", "weight decay on kernels only (theirs: every parameter)"),
  "grad_clip_norm": (1.0, "gradient clipping {ours} (theirs: 1.0)"),
  "warmup_cap": (0.0, "warm-up capped at {ours} of a run (theirs: uncapped)"),
  "templates": ("openai80", "text head from templates {ours} (theirs: OpenAI's 80)"),
  "probe_solver": ("adamw", "LP-FT probe by {ours} (theirs: an AdamW head)"),
  "normalize": ("imagenet", "{ours} mean/std (theirs: ImageNet's)"),
  "dtype": ("float32", "{ours} training compute (theirs: float32)"),
  "class_names": ("underscores", "class names with {ours} (theirs: underscores kept)"),
  "steps_rule": (
    "epochs*ceil(n/batch)",
    "steps {ours}, full batches (theirs: epochs x ceil(n / batch), each epoch's last batch short)",
  ),
  "probe_features": (
    "train_pp, best-test epoch",
    "LP-FT probe on features by {ours} (theirs: features through the training augmentation, "
    "the probe epoch best on test — a choice on test we never make)",
  ),
  "eval_dtype": ("float16", "evaluation in {ours} (theirs: float16 autocast)"),
  "lp_solver": ("adamw", "linear probe by {ours} (theirs: an AdamW head; no published LP cell)"),
  "resize": ("PIL bicubic, antialiased", "resizing: {ours} (theirs: PIL's antialiased bicubic)"),
}


def recipe_differences(key: tuple, a: dict) -> list[str]:
  """Where the recipe of our cell is not the authors' (nothing for rows that do not record
  it: those say 'recipe not recorded')."""
  recipe = a.get("recipe") or {}
  if not recipe:
    return ["recipe not recorded"]
  out = []
  for k, (theirs, text) in AUTHORS_RECIPE.items():
    if k in recipe and recipe[k] != theirs:
      out.append(text.format(ours=recipe[k]))
  if methods.has_text_tower(a.get("pretrain_method")) and recipe.get("probe_init") == "zero":
    out.append("AdamW probe from a zero head (theirs: from the zero-shot head)")
  method = a.get("pretrain_method")
  if (
    methods.traits(method).normalized_features
    and not methods.has_text_tower(method)
    and recipe.get("feature_norm") != "l2"
  ):
    out.append(f"{published.method_title(method)} features not L2-normalised (theirs are)")
  pp = recipe.get("pp_train", "")
  if "randaugment" in pp and "color_jitter" in pp:
    out.append("colour jitter after RandAugment (timm 0.4.12 applies none under RandAugment)")
  if key[1] in ("eurosat", "cassava", "caltech_camera_traps"):
    out.append("our test split (theirs: their own CSV split, not public)")
  if key[1] == "cassava" and str(a.get("data", "")).startswith("tfds:cassava"):
    out.append("TFDS cassava (iCassava 2019; theirs: the 2020 Kaggle competition's images)")
  return out


def comparison(agg: dict[tuple, dict]) -> str:
  """Our cells beside published ones of the same protocol, every difference labelled."""
  lines = []
  for key in sorted(agg, key=lambda k: (k[1], k[2], k[0], shot_key(k[3]))):
    a = agg[key]
    if key[2] == "zeroshot":  # the log's zero-shot column, as what it is
      z = published.zero_shot(a["tags"].get("published"), key[1])
      if z is not None:
        note = (
          "theirs: the log's zero-shot column, their text head wired to the wrong classes "
          "on this set"
          if key[1] in published.MISWIRED_TEXT_HEADS
          else "theirs: the log's zero-shot column"
        )
        lines.append(f"| {key[1]} | zeroshot | {key[0]} | - | {_cell(a)} | – | {z:.1f} | {note} |")
      continue
    pub = published.lookup(a["tags"].get("published"), key[1], key[3], key[2])
    if pub is None:
      continue
    ts = f"{100 * a['ts_mean']:.1f}" if a["ts_mean"] is not None else "–"
    diffs = differences(key, a, pub)
    order = (a.get("recipe") or {}).get("text_head_order", "labels")
    said = (  # their wiring, reproduced on purpose: said, not a difference
      f" (text head wired in another code's class-name order, {order}, on purpose)"
      if order != "labels"
      else ""
    )
    verdict = ("; ".join(diffs) if diffs else "like for like") + said
    lines.append(
      f"| {key[1]} | {key[2]} | {key[0]} | {key[3]} | {_cell(a)} | {ts} | "
      f"{pub.accuracy:.1f} | {verdict} |"
    )
  if not lines:
    return ""
  head = [
    "| downstream | protocol | pre-training | shots | ours (val-selected) | "
    "ours (test-selected) | paper (test-selected) | differences |",
    "|---|---|---|---|---|---|---|---|",
  ]
  return "\n".join(head + lines)


def write_report(workdir: str, study=None) -> str:
  path = Workdir(workdir).results
  read = transfer.read_results(path)
  rows, bad = split_rows(read)
  if not rows:
    raise ValueError(
      f"{path}: no usable results rows"
      + (f" ({len(bad)} left out; the first, {_row_name(bad[0][0])}: {bad[0][1]})" if bad else "")
    )
  rows, dups, conflicts = reconcile(rows)
  agg = aggregate(rows)
  out_dir = os.path.join(workdir, "report")
  paths.makedirs(out_dir)
  specs = figure_specs(agg)
  counted = f"{len(rows)} result rows from `{path}`" + (
    f" ({len(read)} read: {len(read) - len(rows)} left out, duplicated or in conflict, "
    f"listed under 'Rows left out')"
    if len(read) != len(rows)
    else ""
  )
  lines = [
    f"# Study report: {study.get('name', '') if study else os.path.basename(workdir)}",
    "",
    f"{counted}. Figures and tables show the test "
    "accuracy of the run chosen on validation (never on test); the comparison with the "
    "paper also shows the test-selected number, the paper's own selection.",
    "",
  ]
  for name, spec in specs.items():
    draw(spec, os.path.join(out_dir, f"{name}.png"))
    lines += [f"## {spec['title']}", "", f"![{name}]({name}.png)", ""]
    if name == "spread_vs_shots":
      for p in spec["panels"]:
        vals = ", ".join(
          f"{x}: {100 * y:.1f}"
          for x, y in zip(p["series"]["spread"]["x"], p["series"]["spread"]["y"])
        )
        lines.append(f"- {p['title']}: spread over {p['n_sources']} sources (points) — {vals}")
      lines.append("")
  lines += ["## Tables", "", tables(agg)]
  gaps = [(k, a) for k, a in sorted(agg.items()) if a.get("missing_seeds")]
  if gaps:
    lines += ["## Missing results", ""]
    lines += [
      f"- {k[0]} on {k[1]}, {k[2]}, {shots_label(k[3])}: {a['n']} of {a['expected_seeds']} "
      f"seeds (missing seed {', '.join(str(m) for m in a['missing_seeds'])})"
      for k, a in gaps
    ]
    lines.append("")
  lines += rows_left_out(path, bad, dups, conflicts)
  compared = comparison(agg)
  if compared:
    lines += [
      "## Beside the paper",
      "",
      "Published numbers (the authors' results log) only beside runs of the same "
      "protocol. Theirs is the best *test* accuracy over their grid and epochs; ours is "
      "shown both ways. Each difference in how the numbers were made is listed.",
      "",
      compared,
      "",
    ]
  paths.write_json(os.path.join(out_dir, "specs.json"), specs, indent=1, default=str)
  md = os.path.join(out_dir, "report.md")
  paths.write_text(md, "\n".join(lines) + "\n")
  return md


def rows_left_out(path: str, bad, dups: list[str], conflicts: list[str]) -> list[str]:
  """The report's section on rows that did not enter the tables as read: unusable ones (with
  why), identical duplicates (counted once) and conflicting rows of one cell (which was kept,
  by which rule)."""
  if not (bad or dups or conflicts):
    return []
  out = ["## Rows left out", ""]
  if bad:
    out += [
      f"{len(bad)} row(s) of `{path}` left out of every table (a failed run's row, or one "
      f"written by hand):",
      left_out(bad),
      "",
    ]
  if dups:
    out += ["Cells answered more than once by identical rows (counted once):", ""]
    out += [f"- {d}" for d in dups] + [""]
  if conflicts:
    out += [f"Cells answered by rows with different numbers ({RULE}):", ""]
    out += [f"- {c}" for c in conflicts] + [""]
  return out


def console_notes(rows: Sequence) -> list[str]:
  """What the study prints under its results about rows that did not enter as read."""
  good, bad = split_rows(rows)
  _, dups, conflicts = reconcile(good)
  out = []
  if bad:
    out.append(
      f"{len(bad)} row(s) left out of the tables (listed in the report); the first, "
      f"{_row_name(bad[0][0])}: {bad[0][1]}"
    )
  if dups:
    out.append(f"{len(dups)} cell(s) with identical duplicate rows, counted once (the report)")
  if conflicts:
    out.append(f"{len(conflicts)} cell(s) with conflicting rows: {RULE}; e.g. {conflicts[0]}")
  return out


# ------------------------------------------------------------------------------ README numbers

README_BEGIN = (
  "<!-- mini-study results: written by `python -m big_transfer.report "
  "--workdir=runs/mini_study --readme=README.md`; edit the code, not the text -->"
)
README_END = "<!-- end of mini-study results -->"
README_FIGURES = {
  "accuracy_vs_shots": "mini_study_accuracy_vs_shots.png",
  "spread_vs_shots": "mini_study_spread_vs_shots.png",
}


def _ranked(values: dict[str, float]) -> str:
  items = sorted(values.items(), key=lambda kv: -kv[1])
  return ", ".join(f"{k} {v:.1f}" for k, v in items) + "%"


def mini_study_paragraph(agg: dict[tuple, dict]) -> str:
  """The README's account of the mini study (configs/mini/study.py), every number and every
  comparison word computed from its results, so the text cannot drift from a run."""

  def acc(arm, ds, protocol, shots):
    a = agg.get((arm, ds, protocol, shots))
    if a is None:
      raise ValueError(
        f"no {protocol} result of {arm} on {ds} at {shots} shots: the README's "
        f"numbers come from the whole mini study (configs/mini/study.py)"
      )
    return 100 * a["mean"]

  clip = {"letters": "clip_letters", "glyphs": "clip_glyphs", "shapes": "clip_shapes"}
  spread = lambda d: max(d.values()) - min(d.values())
  lp5 = {k: acc(a, "digits", "lp", "5") for k, a in clip.items()}
  lpf = {k: acc(a, "digits", "lp", "full") for k, a in clip.items()}
  let = {k: acc(a, "letters", "lp", "full") for k, a in clip.items()}
  top, second = sorted(let, key=lambda k: -let[k])[:2]
  pretrained = sorted(
    {
      k[0]
      for k in agg
      if k[0] != "scratch" and k[1] == "digits" and k[2] == "lp" and k[3] == "full"
    }
  )
  scratch = acc("scratch", "digits", "lp", "full")
  beat = sum(acc(a, "digits", "lp", "full") > scratch for a in pretrained)
  sup = acc("supervised_glyphs", "digits", "lp", "full")
  best_probe = max(pretrained, key=lambda a: acc(a, "digits", "lp", "full"))
  zs = acc("clip_glyphs", "digits", "zeroshot", "full")
  ft5 = {k: acc(a, "digits", "ft", "5") for k, a in clip.items()}
  ftf = {k: acc(a, "digits", "ft", "full") for k, a in clip.items()}
  every_ft = {a: acc(a, "digits", "ft", "full") for a in pretrained + ["scratch"]}
  narrows = spread(ftf) < spread(lpf)
  return (
    f"What it shows (these figures and numbers are a run of this code): with frozen features "
    f"the pre-training source matters — on the digits "
    f"the three CLIP sources are {spread(lp5):.1f} points apart at 5 shots and "
    f"{spread(lpf):.1f} with all the data ({_ranked(lpf)}); on the held-out letters the "
    f"model pre-trained on {top} leads by {let[top] - let[second]:.1f} points with all the "
    f"data ({_ranked(let)}); "
    + (
      "every pre-trained model beats"
      if beat == len(pretrained)
      else f"{beat} of {len(pretrained)} pre-trained models beat"
    )
    + f" random features ({scratch:.1f}% on the digits); supervised labels from the related "
    f"source reach {sup:.1f}%"
    + (
      " (the best probe)"
      if best_probe == "supervised_glyphs"
      else f" ({best_probe} probes best, {acc(best_probe, 'digits', 'lp', 'full'):.1f}%)"
    )
    + f"; CLIP zero-shot reaches {zs:.1f}% on the real digits from glyph captions (chance "
    f"10%). Full fine-tuning "
    + (
      "narrows the gap between the sources, as in the paper"
      if narrows
      else "does not narrow the gap between the sources here (the paper finds it does)"
    )
    + f": the CLIP sources are {spread(ft5):.1f} points apart at 5 digits per class "
    f"({min(ft5.values()):.1f}–{max(ft5.values()):.1f}%) and {spread(ftf):.1f} with all of "
    f"them ({min(ftf.values()):.1f}–{max(ftf.values()):.1f}%), where every model — random "
    f"init included ({every_ft['scratch']:.1f}%) — ends within {spread(every_ft):.1f} "
    f"points."
  )


# How far the README's numbers may move between machines and thread counts: the order of
# floating-point reductions changes the pre-trained weights themselves (a few hundred chaotic
# steps), and every number after them. Measured between one and two cores of one machine: the
# probes' and zero-shot numbers of the paragraph by up to 4.3 points, fine-tuning's by 1.9.
# The README says so.
README_TOLERANCE = {"probes": 5.0, "fine-tuning": 3.0}


def readme_block(text: str) -> str:
  """The mini-study paragraph of a README (between README_BEGIN and README_END)."""
  if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
    raise ValueError(f"needs one mini-study block ({README_BEGIN!r} ... {README_END!r})")
  return " ".join(text.split(README_BEGIN)[1].split(README_END)[0].split())


def paragraph_differences(written: str, fresh: str) -> list[str]:
  """Where a README's mini-study paragraph and one written from a fresh run disagree: any word
  (every comparison the paragraph makes), and any number by more than README_TOLERANCE (the
  probes' and zero-shot numbers before 'Full fine-tuning', fine-tuning's after)."""
  number = re.compile(r"\d+\.\d")
  # Numbers masked, and a ranked list's order too: two sources within a point of each other
  # may swap between machines; the claims around it may not.
  ranked = re.compile(r"\((?:[\w ]+ #, )+[\w ]+ #%\)")
  words = lambda t: ranked.sub("(ranked)", number.sub("#", " ".join(t.split())))
  out = []
  if words(written) != words(fresh):
    out.append(f"the words differ: README {words(written)!r}; fresh {words(fresh)!r}")
  for part, tol in zip(
    ("probes", "fine-tuning"), (README_TOLERANCE["probes"], README_TOLERANCE["fine-tuning"])
  ):
    pick = (
      (lambda t: t.split("Full fine-tuning")[0])
      if part == "probes"
      else (lambda t: t.split("Full fine-tuning")[-1])
    )
    a = [float(x) for x in number.findall(pick(written))]
    b = [float(x) for x in number.findall(pick(fresh))]
    for x, y in zip(a, b):
      if abs(x - y) > tol:
        out.append(f"{part}: {x} in the README, {y} now (tolerance {tol})")
  return out


def rewrite_readme(readme: str, workdir: str, figures: str = "") -> None:
  """Rewrites the README's mini-study block (between README_BEGIN and README_END) from
  WORKDIR's results and copies the report's figures to ``figures`` (default: the docs/
  directory beside the README given, created when missing)."""
  rows, _ = split_rows(transfer.read_results(Workdir(workdir).results))
  if not rows:
    raise ValueError(f"{workdir}/results.jsonl: no usable results rows")
  text = open(readme).read()
  if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
    raise ValueError(f"{readme}: needs one mini-study block ({README_BEGIN!r} ... {README_END!r})")
  head, rest = text.split(README_BEGIN)
  _, tail = rest.split(README_END)
  body = textwrap.fill(
    mini_study_paragraph(aggregate(rows)), width=96, break_long_words=False, break_on_hyphens=False
  )
  docs = figures or os.path.join(os.path.dirname(os.path.abspath(readme)), "docs")
  os.makedirs(docs, exist_ok=True)
  for name, dst in README_FIGURES.items():
    src = os.path.join(workdir, "report", f"{name}.png")
    if not paths.exists(src):
      raise ValueError(f"{src}: missing (run the report first)")
    paths.write_bytes(os.path.join(docs, dst), paths.read_bytes(src))
  with open(readme + ".tmp", "w") as f:
    f.write(head + README_BEGIN + "\n" + body + "\n" + README_END + tail)
  os.replace(readme + ".tmp", readme)


def command() -> cli.Command:
  c = cli.Command("big_transfer.report", __doc__)
  c.string(
    "workdir",
    None,
    "a study's directory: reads results.jsonl, writes report/ (report.md, the figures, specs.json)",
    required=True,
    metavar="DIR",
  )
  c.string(
    "readme",
    "",
    "also rewrite this README's mini-study block (numbers and sentences) "
    "from the results and copy the figures to the docs/ beside it (the mini study's "
    "workdir only)",
    metavar="FILE",
  )
  c.string("figures", "", "with --readme: copy the figures here instead (created)", metavar="DIR")
  return c


def main(argv=None):
  args = command().parse(argv)
  try:
    paths.check_location(args.workdir, "--workdir")
    print(write_report(args.workdir))
    if args.readme:
      rewrite_readme(args.readme, args.workdir, args.figures)
      print(f"rewrote the mini-study block of {args.readme} and its figures")
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
