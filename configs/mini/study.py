r"""The whole study in miniature, offline on built-in data: the main job's default.

  python -m big_transfer.study --config=configs/mini/study.py --workdir=runs/mini_study

Six pre-training runs — CLIP on three sources (glyphs: related to the downstream digits;
letters: glyphs of another alphabet; shapes: unrelated), CLIP on a 1k subset of glyphs (the size
contrast), SimCLR on glyphs (the method contrast) and supervised glyphs (the reference) — plus a
random-init reference, then transfer to two downstream sets (the real handwritten digits;
held-out letters) by linear probes at 1/5/10/full shots with two seeds, full fine-tuning on the
digits at 5 shots and with all the data (one seed), and CLIP zero-shot. Ends with the report
(runs/mini_study/report/report.md and its figures; the pre-training curves in TensorBoard:
tensorboard --logdir runs/mini_study/pretrain). About 10 minutes on 2 quiet CPU cores.

(The built-in shapes are not a downstream set here: at this scale every model's linear probe on
them stays at chance.)
"""

import ml_collections

STEPS = "steps=100,batch=64"
GLYPHS = "builtin:glyphs?n=4000"


def clip_arm(name, data, **tags):
  return dict(
    name=name,
    config=f"configs/mini/clip.py:{STEPS}",
    method="clip",
    overrides={"data": data, "evals.retrieval.data": "", "evals.zeroshot.data": ""},
    **tags,
  )


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.name = "mini"
  c.pretrain = [
    clip_arm("clip_glyphs", GLYPHS, source="glyphs", size="4000", group="sources+size+method"),
    clip_arm("clip_glyphs_1k", GLYPHS + "&size=1000", source="glyphs", size="1000", group="size"),
    clip_arm(
      "clip_letters",
      "builtin:glyphs?classes=letters&n=4000",
      source="letters",
      size="4000",
      group="sources",
    ),
    clip_arm("clip_shapes", "builtin:shapes?n=4000", source="shapes", size="4000", group="sources"),
    dict(
      name="simclr_glyphs",
      config=f"configs/mini/simclr.py:{STEPS}",
      method="simclr",
      source="glyphs",
      size="4000",
      group="method",
      overrides={"data": GLYPHS, "evals.fewshot.data": ""},
    ),
    dict(
      name="supervised_glyphs",
      config=f"configs/mini/supervised.py:{STEPS}",
      method="supervised",
      source="glyphs",
      size="4000",
      group="reference",
      overrides={"data": GLYPHS, "eval_data": "none"},
    ),
    dict(
      name="scratch",
      config="",
      method="scratch",
      model="resnet18",
      group="reference",
      protocols=("lp", "ft"),
    ),
  ]
  c.downstream = [
    dict(name="digits", data="builtin:digits", num_train=1437, num_classes=10),
    # Letters rendered with another seed than the pre-training glyphs (no shared images).
    dict(
      name="letters",
      data="builtin:glyphs?classes=letters&n=2600&seed=7",
      num_train=2600,
      num_classes=26,
    ),
  ]
  c.transfer_config = "configs/mini/finetune.py"
  c.protocols = ("lp", "ft", "zeroshot")  # zero-shot applies to the CLIP arms only
  # Full fine-tuning costs ~100x a probe on frozen features: digits only, 5 shots and all the
  # data, one seed, 150 steps whatever the shots (batch 64, or the shots' size), two learning
  # rates chosen on validation (at 1e-3, 150 steps barely move a CLIP text-initialised head).
  c.protocol_settings = {
    "ft": {
      "shots": ("5", "full"),
      "seeds": (0,),
      "downstream": ("digits",),
      "overrides": {"total_steps": 150, "total_epochs": 0.0, "lrs": (3e-3, 1e-2)},
    }
  }
  c.shots = ("1", "5", "10", "full")
  c.seeds = (0, 1)
  c.throughput = 500.0  # images/s of these small models on 2 CPU cores
  return c
