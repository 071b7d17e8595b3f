r"""Mini transfer to the built-in digits: offline, about a minute on 2 CPU cores.

  python -m big_transfer.finetune --config=configs/mini/finetune.py --workdir=/tmp/ft_scratch
  python -m big_transfer.finetune --config=configs/mini/finetune.py:pretrained=/tmp/mini_sup,protocol=lp,shots=5 \
      --workdir=/tmp/lp_5shot

Args: pretrained (a pre-training workdir; '' = from scratch), data, protocol (ft, lp, lp_ft,
zeroshot, wise_ft), shots (per class, or full), seed, epochs, lrs ('1e-3' or '3e-4;1e-3'),
model (for runs from scratch).
"""

from big_transfer import config_lib, finetune


def get_config(arg=None):
  a = config_lib.parse_arg(
    arg,
    pretrained="",
    data="builtin:digits",
    protocol="ft",
    shots="full",
    seed=0,
    epochs=10.0,
    lrs="1e-3",
    model="resnet18",
    width=0.25,
    batch=64,
  )
  c = finetune.transfer_config()
  c.pretrained = a.pretrained
  c.data = a.data
  c.protocol = a.protocol
  c.shots = a.shots
  c.seed = a.seed
  if not a.pretrained:  # from scratch: the mini pre-training configs' architecture
    c.model = a.model
    if a.model.startswith(("resnet", "bit_", "clip_")):
      c.model_kwargs.width = a.width
  c.lrs = tuple(float(x) for x in a.lrs.split(";"))
  c.total_epochs = a.epochs
  c.batch_size = a.batch
  # 8x8 digits at 32px, as the mini pre-training configs see images.
  c.pp_train = "to_rgb|resize(36)|random_crop(32)|value_range(-1, 1)"
  c.pp_eval = "to_rgb|resize(36)|central_crop(32)|value_range(-1, 1)"
  c.optimizer.update(name="adamw", weight_decay=0.05, warmup_steps=20, schedule="cosine")
  # Full-data runs train on the 90% of train left after the validation split (no refit on
  # train + val afterwards, which configs/finetune/default.py does): half the time.
  c.refit_full = False
  c.templates = "a handwritten {};a scan of a {};the character {} written by hand"
  config_lib.cadence(c, "mini", checkpoint_every=200)
  c.tensorboard = False
  return c
