"""The published numbers come from the authors' results log, and carry how they were reached."""

import pytest

from big_transfer import published

# The paper's tables as printed (PAPER.md): CIFAR-100, DTD, Pets at 5 / 20 / full shots.
COLUMNS = (
  ("cifar100", "5"),
  ("cifar100", "20"),
  ("cifar100", "full"),
  ("dtd", "5"),
  ("dtd", "20"),
  ("dtd", "full"),
  ("pets", "5"),
  ("pets", "20"),
  ("pets", "full"),
)
TABLE = {
  "cc3m": (37.3, 52.4, 83.4, 38.4, 57.3, 65.2, 28.7, 67.9, 86.2),
  "cc12m_2.7m": (36.2, 52.8, 83.1, 38.2, 57.0, 65.9, 26.3, 64.6, 85.5),
  "redcaps_2.7m": (32.9, 50.6, 83.5, 40.6, 57.6, 65.2, 29.2, 71.4, 87.8),
  "yfcc_2.7m": (29.0, 47.0, 82.8, 34.7, 54.1, 62.8, 25.6, 60.6, 84.4),
  "laion_2.7m": (39.0, 54.4, 83.7, 39.9, 58.0, 65.8, 26.9, 65.2, 85.7),
  "wit_2.7m": (28.3, 44.2, 81.6, 34.3, 53.2, 61.1, 22.1, 57.0, 83.2),
  "shutterstock_2.7m": (38.7, 53.2, 83.3, 43.9, 60.7, 68.6, 24.4, 66.7, 86.7),
  "laion_15m": (47.0, 60.2, 83.7, 40.3, 60.9, 68.8, 29.3, 70.7, 87.5),
  "supervised_in1k": (32.8, 59.5, 84.9, 43.6, 65.1, 71.2, 78.3, 88.4, 92.6),
  "laion_2b_vitb32": (77.1, 81.2, 90.5, 45.9, 67.6, 74.3, 38.3, 75.2, 93.1),
  "scratch": (None, None, 72.8, None, None, 44.6, None, None, 68.0),
}
SIZES = {
  "laion_1m": (83.2, 60.6, 85.6),
  "laion_5m": (82.6, 65.7, 85.6),
  "laion_7.5m": (83.8, 67.0, 85.7),
  "laion_9.6m": (83.4, 67.4, 87.2),
}
# SimCLR (LP-FT in the log) vs. CLIP (full fine-tuning): DTD, Caltech-101, CIFAR-100, Real.
METHOD = {
  ("simclr_cc12m_2.7m", "lp_ft"): (72.1, 89.2, 83.8, 77.0),
  ("simclr_redcaps_2.7m", "lp_ft"): (73.1, 90.2, 84.6, 79.0),
  ("simclr_shutterstock_2.7m", "lp_ft"): (71.1, 88.5, 83.8, 80.0),
  ("cc12m_2.7m", "ft"): (65.9, 85.7, 83.1, 82.7),
  ("redcaps_2.7m", "ft"): (65.2, 85.8, 83.5, 82.9),
  ("shutterstock_2.7m", "ft"): (68.6, 86.3, 83.3, 82.8),
}


def _printed_cells():
  out = {}
  for arm, vals in TABLE.items():
    for (ds, shots), v in zip(COLUMNS, vals):
      if v is not None:
        out[(arm, ds, "ft", shots)] = v
  for arm, vals in SIZES.items():
    for ds, v in zip(("cifar100", "dtd", "pets"), vals):
      out[(arm, ds, "ft", "full")] = v
  for (arm, protocol), vals in METHOD.items():
    for ds, v in zip(("dtd", "caltech101", "cifar100", "domainnet_real"), vals):
      out[(arm, ds, protocol, "full")] = v
  return out


def test_every_printed_number_is_the_best_run_of_its_cell_in_the_authors_log():
  printed = _printed_cells()
  assert len(printed) == 123
  for key, value in printed.items():
    cell = published.lookup(key[0], key[1], key[3], key[2])
    assert cell is not None, key
    assert cell.accuracy == pytest.approx(value, abs=0.051), key
  # 51 of the 123 are reached only outside the grid the paper's text describes.
  outside = [k for k in printed if not published.lookup(k[0], k[1], k[3], k[2]).in_text_grid]
  assert len(outside) == 51
  dtd5 = published.lookup("cc3m", "dtd", "5")
  assert (dtd5.lr, dtd5.batch_size, dtd5.epochs, dtd5.in_text_grid) == (1e-4, 32, 128, False)
  assert "outside the text's grid" in dtd5.label()


def test_protocols_are_kept_apart_and_the_authors_grid_is_theirs():
  # SimCLR's published cells are LP-FT; there is no full fine-tuning number to compare with.
  assert published.lookup("simclr_cc12m_2.7m", "dtd", "full", "ft") is None
  assert published.lookup("cc12m_2.7m", "dtd", "full", "lp_ft") is None  # CLIP LP-FT: few-shot
  assert published.lookup("cc12m_2.7m", "dtd", "20", "lp_ft") is not None
  grid = published.authors_grid("dtd")
  assert {b for _, b, _ in grid} == {32, 64, 128} and {e for _, _, e in grid} == {64, 128}
  assert min(l for l, _, _ in grid) == 3e-6 and max(l for l, _, _ in grid) >= 3e-3
  assert {(l, b, e) for l, b, e in published.authors_grid("pets")} >= {
    (lr, 128, 128) for lr in published.TEXT_GRID_LRS
  }
