r"""Mini SimCLR pre-training on the built-in shapes: offline, a couple of minutes on 2 CPU cores.

  python -m big_transfer.train --config=configs/mini/simclr.py --workdir=/tmp/mini_simclr

Args: model, steps, batch, data (any source; labels are not used).
"""

from big_transfer import config_lib
from big_transfer.evaluators import common as evals

VIEW = (
  "inception_crop(32, area_min=0.25)|flip_lr|color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)"
  "|grayscale(p=0.2)|value_range(-1, 1)"
)


def get_config(arg=None):
  a = config_lib.parse_arg(
    arg, model="resnet18", steps=200, batch=128, width=0.25, data="builtin:shapes?n=4000"
  )
  c = config_lib.base_config()
  c.method = "simclr"
  c.model = a.model
  if a.model.startswith(("resnet", "bit_", "clip_")):
    c.model_kwargs.width = a.width
  c.data = a.data
  c.eval_data = "none"  # transfer is measured by the few-shot evaluators (issue 5)
  c.pp_train = f"decode|to_rgb|two_views('{VIEW}')"
  c.pp_eval = "decode|to_rgb|value_range(-1, 1)"
  c.batch_size = a.batch
  c.total_steps = a.steps
  c.temperature = 0.2
  c.projection_dims = (256, 256, 64)
  config_lib.cadence(c, "mini")
  c.optimizer.update(
    name="adamw", lr=2e-3, b2=0.98, weight_decay=0.1, warmup_steps=20, schedule="cosine"
  )
  # The transfer curve as it trains: 1/5/10/25-shot linear probes on the real digits (probes
  # on held-out shapes stay near chance: these augmentations leave colour and background
  # texture, not the shape, as what tells two images apart).
  c.evals.fewshot = evals.entry(
    "fewshot_linear",
    data="builtin:digits",
    pp="to_rgb|resize(36)|central_crop(32)|value_range(-1, 1)",
    every=100,
  )
  return c
