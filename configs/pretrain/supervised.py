r"""Supervised pre-training as in the study: ResNet-50 on ImageNet-1K, 90 epochs, SGD.

  python -m big_transfer.train --config=configs/pretrain/supervised.py --workdir=gs://BUCKET/runs/sup_in1k
  python -m big_transfer.train --config=configs/pretrain/supervised.py:model=vit_b16,batch=4096 ...

Args: data (a source spec; default TFDS imagenet2012, which you prepare with `tfds build`),
model, batch (global), epochs, runlocal (a few steps at batch 8, for a smoke run of the real
pipeline on a workstation).
The learning rate follows the study's "0.05 scaled to batch": 0.05 x batch / 256.
"""

from big_transfer import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(
    arg, data="tfds:imagenet2012", model="resnet50", batch=1024, epochs=90.0, runlocal=False
  )
  c = config_lib.base_config()
  c.method = "supervised"
  c.model = a.model
  c.data = a.data
  c.train_split = "train"
  c.eval_split = "validation"
  c.pp_train = "decode|inception_crop(224)|flip_lr|normalize('imagenet')"
  c.pp_eval = "decode|resize_small(256)|central_crop(224)|normalize('imagenet')"
  c.batch_size = a.batch
  c.total_epochs = a.epochs
  c.optimizer.update(
    name="sgd",
    lr=0.05 * a.batch / 256,
    momentum=0.9,
    weight_decay=1e-4,
    schedule="cosine",
    warmup_epochs=5.0,
  )
  c.label_smoothing = 0.0
  c.dtype = "bfloat16"
  config_lib.cadence(c, "accelerator", checkpoint_every=5000, eval_every=5000)
  c.keep_every = 50000
  if a.runlocal:
    c.batch_size = 8
    c.total_epochs = None
    c.total_steps = 5
    c.log_every = 1
    c.eval_data = "none"
    c.dtype = "float32"
  return c
