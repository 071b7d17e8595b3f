r"""Entezari et al. (2023), "The Role of Pre-training Data in Transfer Learning", as a study.

  python -m big_transfer.study --config=configs/study/paper.py:root=/data --workdir=/runs/paper --check
  python -m big_transfer.study --config=configs/study/paper.py:root=/data --workdir=/runs/paper --dry_run
  python -m big_transfer.study --config=configs/study/paper.py:root=/data,paper_grid=true --workdir=/runs/paper_grid

Args: root (ROOT/<source>: the sources converted to ArrayRecord by big_transfer.data.convert,
docs/DATA.md says how for each; ROOT/checkpoints: the public ViT-B/32 CLIP checkpoints; TFDS
sets are read from tfds_data_dir, or $TFDS_DATA_DIR), seeds (e.g. 3), protocols ('ft;lp'),
paper_grid (run the authors' real grid — batch, epochs and learning rates from their results
log — with their best-over-epochs test selection recorded beside our validation-selected
numbers; the rest of their recipe is configs/finetune/default.py's default), test_subsample
(subsample few-shot test sets to k per class on the five sets where their code did),
vitb32_clip_norm (transfer the public ViT-B/32
checkpoints with CLIP's mean/std, which they were trained with; default: ImageNet's, as the
authors' code did), cassava (kaggle2020: the 2020 competition's images the authors used,
ROOT/cassava_2020, docs/DATA.md; tfds: TFDS's iCassava 2019).

Arms (docs/PAPER.md): CLIP on seven 2.7M-sample sources; the LAION and YFCC size sweeps (nested
subsets); supervised ImageNet-1K; ImageNet with web vs. template captions; SimCLR vs. CLIP on
CC-12M, RedCaps and Shutterstock (these also run LP-FT: the published SimCLR numbers are
LP-FT); from scratch; and the public ViT-B/32 CLIP checkpoints (OpenAI, LAION-400M, LAION-2B)
as transfer-only references. Downstream: CIFAR-100, DTD, Caltech-101, Pets, DomainNet-Real,
DomainNet-Clipart, EuroSAT (TFDS), Cassava (the 2020 Kaggle images, converted) and Caltech
Camera Traps (COCO annotations converted to ArrayRecord), at 1/5/10/20/full shots (CIFAR-100
also 100 and 200).

Full-data runs choose hyperparameters on 10% of the training split, then retrain on all of it
(refit_full); EuroSAT has no test split in TFDS: its last 20% is the test set, never in the pool.
"""

import ml_collections

from big_transfer import config_lib, finetune

SOURCES_2_7M = ("cc3m", "cc12m", "redcaps", "yfcc", "laion", "wit", "shutterstock")
LAION_SIZES = ("1M", "2.7M", "5M", "7.5M", "9.6M", "15M")
YFCC_SIZES = ("0.5M", "1M", "2.7M", "5M", "7.5M", "9.6M", "15M")


def _size_n(size: str) -> float:
  return float(size[:-1]) * 1e6


_TRANSFER = finetune.transfer_config()
TRAIN_PP, EVAL_PP = _TRANSFER.pp_train, _TRANSFER.pp_eval


def get_config(arg=None):
  a = config_lib.parse_arg(
    arg,
    root="/data",
    seeds=3,
    protocols="ft;lp",
    paper_grid=False,
    test_subsample=False,
    tfds_data_dir="",
    vitb32_clip_norm=False,
    cassava="kaggle2020",
  )
  if a.cassava not in ("kaggle2020", "tfds"):
    raise ValueError(f"configs/study/paper.py: cassava={a.cassava!r}: kaggle2020 or tfds")
  c = ml_collections.ConfigDict()
  c.name = "paper"
  arms = []

  def clip(name, data, size, epochs=16, group="", published="", batch=1024, **extra):
    n = 2.7e6 if size == "all" else _size_n(size)
    size_arg = "" if size == "all" else size
    arms.append(
      dict(
        name=name,
        method="clip",
        source=data.split("/")[-1].split("?")[0],
        size=size,
        group=group,
        published=published,
        num_examples=n,
        config=f"configs/pretrain/clip.py:data=arrayrecord:{a.root}/{data},size={size_arg},"
        f"epochs={epochs},batch={batch}",
        **extra,
      )
    )

  # The source comparison at 2.7M samples (CC-3M: all of it, at batch 512 as the log's runs).
  for src in SOURCES_2_7M:
    size = "all" if src == "cc3m" else "2.7M"
    clip(
      f"clip_{src}_2.7m" if src != "cc3m" else "clip_cc3m",
      src,
      size,
      group="sources" + {"laion": "+size", "yfcc": "+size_yfcc"}.get(src, ""),
      published="cc3m" if src == "cc3m" else f"{src}_2.7m",
      batch=512 if src == "cc3m" else 1024,
    )
  # Size sweeps (nested subsets; 32 epochs on small YFCC as published; LAION-1M at batch 512,
  # the batch of the log's runs behind every published LAION-1M cell).
  for size in LAION_SIZES:
    if size != "2.7M":
      clip(
        f"clip_laion_{size.lower()}",
        "laion",
        size,
        group="size",
        published=f"laion_{size.lower()}",
        batch=512 if size == "1M" else 1024,
      )
  for size in YFCC_SIZES:
    if size != "2.7M":
      clip(
        f"clip_yfcc_{size.lower()}",
        "yfcc",
        size,
        epochs=32 if _size_n(size) <= 2.7e6 else 16,
        group="size_yfcc",
        published=f"yfcc_{size.lower()}",
      )
  # Supervised ImageNet-1K, the reference line of the size plots.
  # The log gives it lr 0.05, batch 64, weight decay 0.1: SGD with weight decay 0.1 does not
  # train a ResNet-50 on ImageNet, so those look like placeholder fields (a public checkpoint);
  # ours is the standard recipe (SGD, 0.05 x batch/256, weight decay 1e-4, 90 epochs), and every
  # row of this arm says so (pretrain_note, listed by the report).
  arms.append(
    dict(
      name="supervised_in1k",
      method="supervised",
      source="imagenet2012",
      size="1.28M",
      group="reference",
      published="supervised_in1k",
      num_examples=1.28e6,
      config="configs/pretrain/supervised.py",
      overrides={"data_dir": a.tfds_data_dir} if a.tfds_data_dir else {},
      pretrain_note="pre-training not the log's lr 0.05 / batch 64 / weight decay "
      "0.1 (placeholders: SGD at weight decay 0.1 does not train), "
      "ours SGD at 0.05 x batch/256 and weight decay 1e-4",
    )
  )
  # Text quality: ImageNet images with web captions vs. class-name templates.
  clip(
    "clip_in1k_web_captions",
    "in1k_captions",
    "all",
    epochs=32,
    group="captions",
    published="in1k_web_captions",
  )
  clip(
    "clip_in1k_template_captions",
    "in1k_captions?captions=template",
    "all",
    epochs=90,
    group="captions",
    published="in1k_template_captions",
  )
  # Method: SimCLR vs. CLIP on the same 2.7M images; both also LP-FT (the published SimCLR
  # numbers are LP-FT, and the log has CLIP LP-FT few-shot runs on these sources).
  protocols = tuple(a.protocols.split(";"))
  for src in ("cc12m", "redcaps", "shutterstock"):
    arms.append(
      dict(
        name=f"simclr_{src}_2.7m",
        method="simclr",
        source=src,
        size="2.7M",
        group="method",
        published=f"simclr_{src}_2.7m",
        num_examples=2.7e6,
        protocols=protocols + ("lp_ft",),
        config=f"configs/pretrain/simclr.py:data=arrayrecord:{a.root}/{src},size=2.7M",
      )
    )
    for arm in arms:
      if arm["name"] == f"clip_{src}_2.7m":
        arm["group"] += "+method"
        arm["protocols"] = protocols + ("lp_ft", "zeroshot")
  # From scratch: CLIP's ResNet-50 trained on the downstream set alone.
  arms.append(
    dict(
      name="scratch",
      method="scratch",
      config="",
      model="clip_rn50",
      group="reference",
      published="scratch",
      protocols=("ft",),
      shots=("full",),
    )
  )
  # Public ViT-B/32 CLIP checkpoints (docs/DATA.md, "Reference checkpoints"), converted once
  # into workdirs by convert_checkpoint and transferred like the runs above.
  for name, source, size, fname, model, pub in (
    (
      "clip_vitb32_openai",
      "openai",
      "400M",
      "ViT-B-32.pt",
      "ViT-B-32-quickgelu",
      "openai_400m_vitb32",
    ),
    (
      "clip_vitb32_laion400m",
      "laion",
      "400M",
      "vit_b_32-quickgelu-laion400m_e32-46683a32.pt",
      "ViT-B-32-quickgelu",
      "laion_400m_vitb32",
    ),
    (
      "clip_vitb32_laion2b",
      "laion",
      "2B",
      "CLIP-ViT-B-32-laion2B-s34B-b79K.safetensors",
      "ViT-B-32",
      "laion_2b_vitb32",
    ),
  ):
    arms.append(
      dict(
        name=name,
        method="clip",
        source=source,
        size=size,
        model="vit_b32",
        group="vit_b32",
        published=pub,
        convert=["--from=openclip", f"{a.root}/checkpoints/{fname}", f"--model={model}"],
        # ImageNet mean/std as the authors' args.py used for every model;
        # vitb32_clip_norm: CLIP's own, which these weights were trained with.
        transfer_overrides={
          "pp_train": TRAIN_PP.replace("imagenet", "clip"),
          "pp_eval": EVAL_PP.replace("imagenet", "clip"),
        }
        if a.vitb32_clip_norm
        else {},
      )
    )
  c.pretrain = arms

  def ds(name, data, num_train, num_classes, test_split="test", val_split="", shots=None):
    d = dict(
      name=name,
      data=data,
      num_train=num_train,
      num_classes=num_classes,
      overrides={"test_split": test_split, "val_split": val_split},
    )
    if shots:
      d["shots"] = shots
    return d

  c.downstream = [
    ds("cifar100", "tfds:cifar100", 50000, 100, shots=("1", "5", "10", "20", "100", "200", "full")),
    ds("dtd", "tfds:dtd", 1880, 47, val_split="validation"),
    ds("caltech101", "tfds:caltech101", 3060, 102),
    ds("pets", "tfds:oxford_iiit_pet", 3680, 37),
    ds("domainnet_real", "tfds:domainnet/real", 120906, 345),
    ds("domainnet_clipart", "tfds:domainnet/clipart", 33525, 345),
    ds("eurosat", "tfds:eurosat/rgb:train[:80%]", 21600, 10, test_split="train[80%:]"),
    # The authors' Cassava: the 2020 Kaggle competition's images (docs/DATA.md); 'tfds':
    # TFDS's iCassava 2019, another dataset (the report names it on every row).
    ds("cassava", "tfds:cassava", 5656, 5, val_split="validation")
    if a.cassava == "tfds"
    else ds("cassava", f"arrayrecord:{a.root}/cassava_2020", 17118, 5),
    ds("caltech_camera_traps", f"arrayrecord:{a.root}/caltech_camera_traps", 13553, 15),
  ]
  c.transfer_config = "configs/finetune/default.py"
  # Class names as their lists say them ('aquarium_fish'), for the text heads.
  c.transfer_overrides = {"data_dir": a.tfds_data_dir, "class_names": "underscores"}
  if a.paper_grid:  # the authors' grid per downstream set
    for d in c.downstream:
      d["overrides"].update(paper_grid=d["name"])
  if a.test_subsample:
    for d in c.downstream:
      if d["name"] in (
        "domainnet_real",
        "domainnet_clipart",
        "eurosat",
        "cassava",
        "caltech_camera_traps",
      ):
        d["overrides"]["test_shots"] = True
  c.protocols = protocols + ("zeroshot",)
  c.shots = ("1", "5", "10", "20", "full")
  c.seeds = tuple(range(a.seeds))
  c.throughput = 3000.0  # images/s of a ResNet-50 train step on one modern GPU (estimate)
  # study --submit=slurm: the sbatch options of each pre-training job (one 8-GPU node, one JAX
  # process driving its GPUs); transfer workers take --slurm's options only.
  c.slurm_pretrain = {"nodes": 1, "ntasks_per_node": 1, "gpus_per_node": 8}
  return c
