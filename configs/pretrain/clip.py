r"""CLIP pre-training as in the study: CLIP's ResNet-50 and text transformer, AdamW, batch 1024,
16 epochs (32 on ImageNet web captions and small YFCC, 90 on ImageNet template captions).

  python -m big_transfer.train --config=configs/pretrain/clip.py:data=arrayrecord:/data/laion,size=2.7M \
      --workdir=gs://BUCKET/runs/clip_laion_2.7M
  python -m big_transfer.train --config=configs/pretrain/clip.py:data=arrayrecord:/data/in1k,captions=template,epochs=90 ...

Args: data (a source spec with captions, e.g. a webdataset converted with
big_transfer.data.convert), size (a nested subset: 2.7M, 15M; '' = all), captions (raw|template),
model (clip_rn50, vit_b32, ...), batch (global), epochs, loss (softmax|sigmoid), vocab ('clip':
OpenAI's 49,408-token BPE from the open_clip_torch package; a merges file; or train:SIZE),
zeroshot (a labelled source for zero-shot evaluation during training, '' = none), runlocal (a
few steps at batch 8: a smoke run of the real pipeline on a workstation).
"""

from big_transfer import config_lib
from big_transfer.evaluators import common as evals
from big_transfer.models.vit import CLIP_VIT_KWARGS

PP_TRAIN = "decode|inception_crop(224, area_min=0.9, method='bicubic')|normalize('clip')|tokenize"
PP_EVAL = "decode|resize_small(224, method='bicubic')|central_crop(224)|normalize('clip')"


def with_options(spec: str, **options) -> str:
  """spec?k=v&... for the options that are set."""
  opts = "&".join(f"{k}={v}" for k, v in options.items() if v not in ("", None))
  if not opts:
    return spec
  return spec + ("&" if "?" in spec else "?") + opts


def get_config(arg=None):
  a = config_lib.parse_arg(
    arg,
    data="arrayrecord:/data/cc12m",
    size="",
    captions="",
    model="clip_rn50",
    batch=1024,
    epochs=16.0,
    loss="softmax",
    vocab="clip",
    zeroshot="tfds:imagenet2012",
    runlocal=False,
  )
  c = config_lib.base_config()
  c.method = "clip"
  c.model = a.model
  if a.model.startswith("vit_"):  # CLIP's ViT form (ln_pre, no patch bias): exports to OpenCLIP
    c.model_kwargs.update(CLIP_VIT_KWARGS)
  c.data = with_options(a.data, size=a.size, captions=a.captions)
  c.eval_data = "none"
  c.pp_train = PP_TRAIN
  c.pp_eval = PP_EVAL
  c.text.update(tokenizer=a.vocab, context_length=77, width=512, layers=12, heads=8)
  c.clip.update(loss=a.loss, embed_dim=1024 if a.model.startswith("clip_rn") else 512)
  c.batch_size = a.batch
  c.total_epochs = a.epochs
  c.optimizer.update(
    name="adamw",
    lr=1e-3,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.1,
    schedule="cosine",
    warmup_steps=5000,
  )
  c.dtype = "bfloat16"
  config_lib.cadence(c, "accelerator")
  c.keep_every = 20000
  # ImageNet zero-shot with CLIP's 7-prompt ensemble, as OpenCLIP reports it ('' = off).
  c.evals.zeroshot = evals.entry(
    "zeroshot", data=a.zeroshot, split="validation", pp=PP_EVAL, templates="clip7"
  )
  if a.runlocal:
    c.batch_size = 8
    c.total_epochs = None
    c.total_steps = 5
    c.optimizer.warmup_steps = 1
    c.log_every = 1
    c.evals.zeroshot.data = ""
    c.dtype = "float32"
  return c
