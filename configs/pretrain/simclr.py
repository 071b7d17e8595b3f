r"""SimCLR pre-training as in the study (SLIP's recipe): CLIP's ResNet-50 backbone, projection
MLP 1024->4096->4096->256 with BatchNorm (synchronised: the step is jitted over the global
batch), NT-Xent at temperature 0.1, AdamW (beta2 0.98), batch 1024, 16 epochs.

  python -m big_transfer.train --config=configs/pretrain/simclr.py:data=arrayrecord:/data/redcaps,size=2.7M \
      --workdir=gs://BUCKET/runs/simclr_redcaps

Args: data (any image source; labels and captions unused), size (a nested subset), model, batch,
epochs, fewshot (a labelled source for the few-shot probe during training, '' = none), runlocal.
"""

from big_transfer import config_lib
from big_transfer.evaluators import common as evals

VIEW = (
  "inception_crop(224, area_min=0.08)|flip_lr|color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)"
  "|grayscale(p=0.2)|gaussian_blur(0.1, 2.0, p=0.5)|normalize(\"clip\")"
)
PP_EVAL = "decode|resize_small(224, method='bicubic')|central_crop(224)|normalize('clip')"


def get_config(arg=None):
  a = config_lib.parse_arg(
    arg,
    data="arrayrecord:/data/cc12m",
    size="",
    model="clip_rn50",
    batch=1024,
    epochs=16.0,
    fewshot="tfds:cifar100",
    runlocal=False,
  )
  c = config_lib.base_config()
  c.method = "simclr"
  c.model = a.model
  c.data = f"{a.data}{'&' if '?' in a.data else '?'}size={a.size}" if a.size else a.data
  c.eval_data = "none"
  c.pp_train = f"decode|two_views('{VIEW}')"
  c.pp_eval = PP_EVAL
  c.temperature = 0.1
  c.projection_dims = (4096, 4096, 256)
  c.batch_size = a.batch
  c.total_epochs = a.epochs
  c.optimizer.update(
    name="adamw",
    lr=1e-3,
    b1=0.9,
    b2=0.98,
    eps=1e-8,
    weight_decay=0.1,
    schedule="cosine",
    warmup_epochs=2.0,
  )
  c.dtype = "bfloat16"
  config_lib.cadence(c, "accelerator")
  c.keep_every = 20000
  # The transfer curve as it trains (big_vision's closed-form probe; '' = off).
  c.evals.fewshot = evals.entry(
    "fewshot_linear", data=a.fewshot, pp=PP_EVAL, shots=(1, 5, 10, 25), seeds=(0, 1, 2), every=10000
  )
  if a.runlocal:
    c.batch_size = 8
    c.total_epochs = None
    c.total_steps = 5
    c.optimizer.warmup_epochs = None
    c.optimizer.warmup_steps = 1
    c.log_every = 1
    c.evals.fewshot.data = ""
    c.dtype = "float32"
  return c
