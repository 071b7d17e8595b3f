"""Published numbers of Entezari et al. (2023) (top-1 %, CLIP ResNet-50 unless noted; best
over their grid, selected on test), keyed by arm, downstream set and shots, so the report can
print them beside ours. Arms in a study config name them with ``published=<key>``."""

from __future__ import annotations

# arm -> downstream -> shots -> accuracy (%)
_COLUMNS = (("cifar100", "5"), ("cifar100", "20"), ("cifar100", "full"), ("dtd", "5"),
            ("dtd", "20"), ("dtd", "full"), ("pets", "5"), ("pets", "20"), ("pets", "full"))
_ROWS = {
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
PUBLISHED = {arm: {} for arm in _ROWS}
for _arm, _vals in _ROWS.items():
  for (_ds, _shots), _v in zip(_COLUMNS, _vals):
    if _v is not None:
      PUBLISHED[_arm].setdefault(_ds, {})[_shots] = _v
# LAION size sweep, full fine-tuning (CIFAR-100 / DTD / Pets).
for _size, (_c, _d, _p) in {"1m": (83.2, 60.6, 85.6), "5m": (82.6, 65.7, 85.6),
                            "7.5m": (83.8, 67.0, 85.7), "9.6m": (83.4, 67.4, 87.2)}.items():
  PUBLISHED[f"laion_{_size}"] = {"cifar100": {"full": _c}, "dtd": {"full": _d},
                                 "pets": {"full": _p}}
# SimCLR vs. CLIP, full fine-tuning on the same 2.7M data (DTD, Caltech-101, CIFAR-100,
# DomainNet-Real); the CLIP arms' DTD and CIFAR-100 numbers are already in the table above.
_METHOD = {
    "simclr_cc12m_2.7m": (72.1, 89.2, 83.8, 77.0),
    "simclr_redcaps_2.7m": (73.1, 90.2, 84.6, 79.0),
    "simclr_shutterstock_2.7m": (71.1, 88.5, 83.8, 80.0),
    "cc12m_2.7m": (65.9, 85.7, 83.1, 82.7),
    "redcaps_2.7m": (65.2, 85.8, 83.5, 82.9),
    "shutterstock_2.7m": (68.6, 86.3, 83.3, 82.8),
}
for _arm, _vals in _METHOD.items():
  for _ds, _v in zip(("dtd", "caltech101", "cifar100", "domainnet_real"), _vals):
    PUBLISHED.setdefault(_arm, {}).setdefault(_ds, {})["full"] = _v


def lookup(arm: str | None, downstream: str, shots) -> float | None:
  if not arm:
    return None
  return PUBLISHED.get(arm, {}).get(downstream, {}).get(str(shots))
