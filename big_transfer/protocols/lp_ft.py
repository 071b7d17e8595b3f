"""LP-FT: a linear probe first (``lp.lp_ft_solver``: the authors' AdamW head, or ``lp.solver``),
then fine-tuning from it over the grid, as ``ft``."""

from __future__ import annotations

from big_transfer.protocols import ft, lp


class Protocol(ft.Protocol):
  name = "lp_ft"
  sections = (ft.SECTION, lp.SECTION)

  def auto_head(self, text_tower: bool) -> str:
    return "probe"
