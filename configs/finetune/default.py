r"""Transfer as the study ran it: AdamW (weight decay 0.1), cosine with 500 warm-up steps, batch
128, 128 epochs, lr grid {1e-4, 3e-4, 1e-3, 3e-3} chosen on a validation split carved from the
training data; 224px bicubic, timm 0.4.12's RandAugment (m9, mstd 0.5; with it on, timm applies
no colour jitter, so neither does this config), random erasing 0.25; evaluation at 256 -> centre
crop 224, ImageNet mean/std. CLIP heads start from the class names' prompt-ensembled text
embeddings, others at zero. Compute in float32 for training, as the authors trained (no
autocast in their loops), and in float16 for evaluation and frozen features, as their fp16
autocast did; ``--config.dtype=bfloat16`` / ``--config.eval_dtype=float32`` otherwise, recorded
in every row.

  python -m big_transfer.finetune \
      --config=configs/finetune/default.py:pretrained=/runs/clip_laion,data=tfds:cifar100,shots=5 \
      --workdir=/runs/clip_laion/transfer/cifar100_ft_5shot_s0

Args: pretrained, data (downstream source spec), protocol (ft, lp, lp_ft, zeroshot, wise_ft),
shots (per class, or full), seed, test_split, val_split ('' = carve 10% of train), lrs
('1e-4;3e-4;1e-3;3e-3'), epochs, bit (BiT-HyperRule instead of the study's schedule), results
(the study's results table to append to).
"""

from big_transfer import config_lib, finetune


def get_config(arg=None):
  a = config_lib.parse_arg(
    arg,
    pretrained="",
    data="tfds:cifar100",
    protocol="ft",
    shots="full",
    seed=0,
    test_split="test",
    val_split="",
    lrs="1e-4;3e-4;1e-3;3e-3",
    epochs=128.0,
    bit=False,
    results="",
    model="",
  )
  c = finetune.transfer_config()
  c.pretrained = a.pretrained
  c.model = a.model
  c.data = a.data
  c.protocol = a.protocol
  c.shots = a.shots
  c.seed = a.seed
  c.test_split = a.test_split
  c.val_split = a.val_split
  c.lrs = tuple(float(x) for x in a.lrs.split(";"))
  c.total_epochs = a.epochs
  c.results_file = a.results
  c.dtype = "float32"  # theirs: fp32 training
  c.eval_dtype = "float16"  # theirs: fp16 autocast in evaluation
  config_lib.cadence(c, "accelerator", log_every=50, checkpoint_every=1000)
  if a.bit:
    c.schedule_rule = "bit"
  return c
