r"""Mini CLIP pre-training on built-in glyphs and their captions: offline, ~2 minutes on 2 CPU
cores. Zero-shot on the real handwritten digits (a related, never-seen source) and retrieval on
held-out glyphs are measured as it trains.

  python -m big_transfer.train --config=configs/mini/clip.py --workdir=/tmp/mini_clip
  python -m big_transfer.train --config=configs/mini/clip.py:loss=sigmoid --workdir=...  # SigLIP
  python -m big_transfer.train --config=configs/mini/clip.py:method=slip --workdir=...

Args: model, steps, batch, data (any source with captions), loss (softmax|sigmoid), method
(clip|slip), vocab (BPE size learnt from the captions).
"""

from big_transfer import config_lib
from big_transfer.evaluators import common as evals

IMAGE = "to_rgb|resize(36)|random_crop(32)|value_range(-1, 1)"
EVAL_IMAGE = "to_rgb|resize(36)|central_crop(32)|value_range(-1, 1)"
VIEW = "resize(36)|inception_crop(32, area_min=0.4)|color_jitter(0.4, 0.4, 0, 0, p=0.8)|value_range(-1, 1)"


def get_config(arg=None):
  a = config_lib.parse_arg(
    arg,
    model="resnet18",
    steps=300,
    batch=128,
    width=0.25,
    data="builtin:glyphs?n=6000",
    loss="softmax",
    method="clip",
    vocab=1000,
  )
  c = config_lib.base_config()
  c.method = a.method
  c.model = a.model
  if a.model.startswith(("resnet", "bit_", "clip_")):
    c.model_kwargs.width = a.width
  elif a.model.startswith("vit"):
    # At 32 px the patch size is in the name: vit_ti4 is ViT-Ti on 8x8 patches of 4 px.
    c.model_kwargs.image_size = 32
  if a.model.startswith("clip_"):
    c.model_kwargs.image_size = 32
  c.data = a.data
  c.eval_data = "none"  # zero-shot and retrieval below measure the model
  c.pp_train = f"{IMAGE}|tokenize"
  if a.method == "slip":
    # CLIP's view under 'image', SimCLR's two views of a copy under 'image1'/'image2'.
    c.pp_train = f"tokenize|copy(raw='image')|{IMAGE}|two_views('to_rgb|{VIEW}', key='raw')"
    c.projection_dims = (128, 128, 64)
  c.text.update(
    tokenizer=f"train:{a.vocab}", context_length=16, width=64, layers=2, heads=4, max_captions=2000
  )
  c.clip.update(loss=a.loss, embed_dim=64)
  c.batch_size = a.batch
  c.total_steps = a.steps
  config_lib.cadence(c, "mini")
  c.optimizer.update(
    name="adamw", lr=2e-3, b2=0.98, weight_decay=0.1, warmup_steps=20, schedule="cosine"
  )
  c.evals.zeroshot = evals.entry(
    "zeroshot",
    data="builtin:digits",
    pp=EVAL_IMAGE,
    templates="a handwritten {};a scan of a {};the character {} written by hand",
  )
  c.evals.retrieval = evals.entry(
    "retrieval", data=a.data, pp=f"{EVAL_IMAGE}|tokenize", max_examples=500
  )
  return c
