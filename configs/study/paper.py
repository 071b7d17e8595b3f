r"""Entezari et al. (2023), "The Role of Pre-training Data in Transfer Learning", as a study.

  python -m big_transfer.study --config=configs/study/paper.py:root=/data --workdir=/runs/paper --dry_run
  python -m big_transfer.study --config=configs/study/paper.py:root=/data --workdir=/runs/paper --print_commands

Args: root (where the converted sources live: ROOT/<source> as ArrayRecord written by
big_transfer.data.convert; ImageNet and most downstream sets come from TFDS), seeds (e.g. 3),
protocols ('ft;lp').

Arms (PAPER.md): CLIP on seven 2.7M-sample sources; the LAION and YFCC size sweeps (nested
subsets); supervised ImageNet-1K; ImageNet with web vs. template captions; SimCLR vs. CLIP on
CC-12M, RedCaps and Shutterstock; a from-scratch reference. Downstream: CIFAR-100, DTD,
Caltech-101, Pets, DomainNet-Real, DomainNet-Clipart, EuroSAT, Cassava (TFDS) and Caltech Camera
Traps (an image folder converted to ArrayRecord), at 1/5/10/20/full shots (CIFAR-100 also
100 and 200).
"""

import ml_collections

from big_transfer import config_lib

SOURCES_2_7M = ("cc3m", "cc12m", "redcaps", "yfcc", "laion", "wit", "shutterstock")
LAION_SIZES = ("1M", "2.7M", "5M", "7.5M", "9.6M", "15M")
YFCC_SIZES = ("0.5M", "1M", "2.7M", "5M", "7.5M", "9.6M", "15M")


def _size_n(size: str) -> float:
  return float(size[:-1]) * 1e6


def get_config(arg=None):
  a = config_lib.parse_arg(arg, root="/data", seeds=3, protocols="ft;lp")
  c = ml_collections.ConfigDict()
  c.name = "paper"
  arms = []

  def clip(name, data, size, epochs=16, group="", published="", **extra):
    n = 2.7e6 if size == "all" else _size_n(size)
    size_arg = "" if size == "all" else size
    arms.append(dict(
        name=name, method="clip", source=data.split("/")[-1].split("?")[0], size=size,
        group=group, published=published, num_examples=n,
        config=f"configs/pretrain/clip.py:data=arrayrecord:{a.root}/{data},size={size_arg},"
               f"epochs={epochs}", **extra))

  # The source comparison at 2.7M samples (CC-3M: all of it).
  for src in SOURCES_2_7M:
    size = "all" if src == "cc3m" else "2.7M"
    clip(f"clip_{src}_2.7m" if src != "cc3m" else "clip_cc3m", src, size,
         group="sources" + ("+size" if src == "laion" else ""),
         published="cc3m" if src == "cc3m" else f"{src}_2.7m")
  # Size sweeps (nested subsets; 32 epochs on small YFCC as published).
  for size in LAION_SIZES:
    if size != "2.7M":
      clip(f"clip_laion_{size.lower()}", "laion", size, group="size",
           published=f"laion_{size.lower()}")
  for size in YFCC_SIZES:
    if size != "2.7M":
      clip(f"clip_yfcc_{size.lower()}", "yfcc", size,
           epochs=32 if _size_n(size) <= 2.7e6 else 16, group="size_yfcc")
  # Supervised ImageNet-1K, the reference line of the size plots.
  arms.append(dict(name="supervised_in1k", method="supervised", source="imagenet2012",
                   size="1.28M", group="reference", published="supervised_in1k",
                   num_examples=1.28e6, config="configs/pretrain/supervised.py"))
  # Text quality: ImageNet images with web captions vs. class-name templates.
  clip("clip_in1k_web_captions", "in1k_captions", "all", epochs=32, group="captions")
  clip("clip_in1k_template_captions", "in1k_captions?captions=template", "all", epochs=90,
       group="captions")
  # Method: SimCLR vs. CLIP on the same 2.7M images.
  for src in ("cc12m", "redcaps", "shutterstock"):
    arms.append(dict(name=f"simclr_{src}_2.7m", method="simclr", source=src, size="2.7M",
                     group="method", published=f"simclr_{src}_2.7m", num_examples=2.7e6,
                     config=f"configs/pretrain/simclr.py:data=arrayrecord:{a.root}/{src},"
                            f"size=2.7M"))
    for arm in arms:
      if arm["name"] == f"clip_{src}_2.7m":
        arm["group"] += "+method"
  # From scratch: CLIP's ResNet-50 trained on the downstream set alone.
  arms.append(dict(name="scratch", method="scratch", config="", model="clip_rn50",
                   group="reference", published="scratch", protocols=("ft",), shots=("full",)))
  c.pretrain = arms

  def ds(name, data, num_train, num_classes, test_split="test", val_split="", shots=None):
    d = dict(name=name, data=data, num_train=num_train, num_classes=num_classes,
             overrides={"test_split": test_split, "val_split": val_split})
    if shots:
      d["shots"] = shots
    return d

  c.downstream = [
      ds("cifar100", "tfds:cifar100", 50000, 100,
         shots=("1", "5", "10", "20", "100", "200", "full")),
      ds("dtd", "tfds:dtd", 1880, 47, val_split="validation"),
      ds("caltech101", "tfds:caltech101", 3060, 102),
      ds("pets", "tfds:oxford_iiit_pet", 3680, 37),
      ds("domainnet_real", "tfds:domainnet/real", 120906, 345),
      ds("domainnet_clipart", "tfds:domainnet/clipart", 33525, 345),
      ds("eurosat", "tfds:eurosat/rgb:train[:80%]", 21600, 10, test_split="train[80%:]"),
      ds("cassava", "tfds:cassava", 5656, 5, val_split="validation"),
      ds("caltech_camera_traps", f"arrayrecord:{a.root}/caltech_camera_traps", 13553, 15),
  ]
  c.transfer_config = "configs/finetune/default.py"
  c.protocols = tuple(a.protocols.split(";")) + ("zeroshot",)
  c.shots = ("1", "5", "10", "20", "full")
  c.seeds = tuple(range(a.seeds))
  c.transfer_epochs = 128
  c.num_lrs = 4
  c.throughput = 3000.0  # images/s of a ResNet-50 train step on one modern GPU (estimate)
  return c
