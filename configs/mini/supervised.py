r"""Mini supervised pre-training on built-in digits: runs offline on a laptop CPU in ~1 minute.

  python -m big_transfer.train --config=configs/mini/supervised.py --workdir=/tmp/mini_sup
  python -m big_transfer.train --config=configs/mini/supervised.py:model=vit_ti4 --workdir=...

Args: model (resnet18 at width 1/4 by default), steps, batch.
"""

from big_transfer import config_lib
from big_transfer.evaluators import common as evals


def get_config(arg=None):
  a = config_lib.parse_arg(arg, model="resnet18", steps=300, batch=128, width=0.25)
  c = config_lib.base_config()
  c.method = "supervised"
  c.model = a.model
  if a.model.startswith(("resnet", "bit_", "clip_")):
    c.model_kwargs.width = a.width
  elif a.model.startswith("vit"):
    # At 32 px the patch size is in the name: vit_ti4 is ViT-Ti on 8x8 patches of 4 px.
    c.model_kwargs.image_size = 32
  c.data = "builtin:digits"
  # Digits are 8x8: upsample to 32, small random shifts, no flips (digits are not symmetric).
  c.pp_train = "to_rgb|resize(36)|random_crop(32)|value_range(-1,1)"
  c.pp_eval = "to_rgb|resize(36)|central_crop(32)|value_range(-1,1)"
  c.batch_size = a.batch
  c.total_steps = a.steps
  config_lib.cadence(c, "mini")
  c.optimizer.update(
    name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, warmup_steps=20, schedule="cosine"
  )
  # Closed-form few-shot probes on frozen features, declared off: turn them on with
  # --config.evals.fewshot.data=builtin:digits (pp '' = pp_eval).
  c.evals.fewshot = evals.entry("fewshot_linear", data="")
  return c
