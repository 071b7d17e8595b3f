"""The field's public checkpoints in and out: OpenAI CLIP / OpenCLIP, BiT, timm and big_vision.

Every format is one *name translation*: a function from one of our parameter names (as
``sharding.path_name`` writes them, e.g. ``image/stages/0/1/conv2/kernel``) to a rule — the
source tensor(s) it comes from and how to lay them out (PyTorch OIHW convolutions become HWIO,
linear weights are transposed, big_vision's per-head attention kernels are fused into one qkv).
Conversion walks *our* model's names, so a source tensor no rule asked for is a leftover and is
reported, like a name the source lacks or a shape that differs: nothing is silently dropped.
The same rules run backwards to export: a CLIP model as an OpenCLIP state dict, any image
tower timm has (ResNet v1.5, BiT, ViT) as a timm state dict.

Which network a checkpoint is (depth, width, heads, patch, image size, text tower) is inferred
from its tensors where the tensors say it (OpenCLIP, BiT, big_vision), from ``--model``
otherwise (timm); a ``--model`` that disagrees with the tensors is an error.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from big_transfer.models.resnet import DEPTHS
from big_transfer.models.vit import CLIP_VIT_KWARGS, VARIANTS

FORMATS = ("openclip", "bit", "timm", "big_vision")


class ConversionError(ValueError):
  pass


# ----------------------------------------------------------------------------- reading sources


def _unwrap(sd: dict) -> dict:
  for key in ("state_dict", "model", "module"):
    if key in sd and isinstance(sd[key], dict) and len(sd) <= 4:
      sd = sd[key]
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module.") :]: v for k, v in sd.items()}
  return sd


def read_source(path: str) -> dict[str, np.ndarray]:
  """A checkpoint file as {name: float32/int numpy array}: .npz, .safetensors, or a PyTorch
  .pt/.pth/.bin (a state dict, a dict holding one, or OpenAI's TorchScript archive)."""
  if not os.path.exists(path):
    raise ConversionError(f"{path}: no such file")
  lower = path.lower()
  try:
    if lower.endswith(".npz"):
      with np.load(path, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}
    if lower.endswith(".safetensors"):
      from safetensors.numpy import load_file

      return dict(load_file(path))
  except ConversionError:
    raise
  except Exception as e:  # noqa: BLE001  (zip/header errors: one line naming the file)
    raise ConversionError(
      f"{path}: not a readable {os.path.splitext(path)[1]} file ({type(e).__name__}: {e})"
    ) from None
  try:
    import torch
  except ImportError:
    raise ConversionError(
      f"{path}: reading a PyTorch checkpoint needs torch (pip install -r "
      f"requirements-dev.txt), or convert it to .safetensors"
    ) from None
  try:
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError as e:
      if "TorchScript" not in str(e) and "jit" not in str(e).lower():
        raise
      obj = torch.jit.load(path, map_location="cpu").state_dict()  # OpenAI's .pt archives
  except Exception as e:  # noqa: BLE001
    raise ConversionError(
      f"{path}: not a readable PyTorch checkpoint "
      f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    ) from None
  if not isinstance(obj, dict):
    raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  out = {}
  for k, v in _unwrap(obj).items():
    if hasattr(v, "detach"):
      v = v.detach().cpu()
      out[k] = (v.float() if v.is_floating_point() else v).numpy()
  return out


def strip_prefix(sd: dict, prefixes: Sequence[str]) -> dict:
  for p in prefixes:
    if any(k.startswith(p) for k in sd):
      return {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
  return sd


# ----------------------------------------------------------------------------- rules


@dataclasses.dataclass
class Rule:
  """Our tensor from source tensors ``src``: ``fwd(*arrays) -> ours``, ``inv(ours) -> arrays``
  (the export direction; None where the format is import-only)."""

  src: tuple[str, ...]
  fwd: Callable
  inv: Callable | None = None


def _same(name):
  return Rule((name,), lambda a: a, lambda a: (a,))


def _conv(name):  # PyTorch OIHW <-> our HWIO
  return Rule((name,), lambda a: a.transpose(2, 3, 1, 0), lambda a: (a.transpose(3, 2, 0, 1),))


def _linear(name):  # PyTorch (out, in) <-> our (in, out)
  return Rule((name,), lambda a: a.T, lambda a: (np.ascontiguousarray(a.T),))


_TORCH_LEAF = {
  "kernel": "weight",
  "scale": "weight",
  "bias": "bias",
  "mean": "running_mean",
  "var": "running_var",
  "embedding": "weight",
}


def _torch_leaf(module: str, leaf: str, ndim: int) -> Rule:
  name = f"{module}.{_TORCH_LEAF[leaf]}"
  if leaf == "kernel":
    return _conv(name) if ndim == 4 else _linear(name)
  return _same(name)


def _torch_block(prefix: str, rest: str, leaf: str, ndim: int, fmt: str) -> Rule | None:
  """A transformer block's tensors: OpenCLIP (ln_1, attn.in_proj_*, attn.out_proj, mlp.c_fc)
  or timm (norm1, attn.qkv, attn.proj, mlp.fc1)."""
  if fmt == "openclip":
    if rest == "attn/qkv":
      return (
        _linear(f"{prefix}.attn.in_proj_weight")
        if leaf == "kernel"
        else _same(f"{prefix}.attn.in_proj_bias")
      )
    module = {
      "norm1": "ln_1",
      "norm2": "ln_2",
      "attn/proj": "attn.out_proj",
      "mlp/fc1": "mlp.c_fc",
      "mlp/fc2": "mlp.c_proj",
    }.get(rest)
  else:
    module = rest.replace("/", ".")
  return None if module is None else _torch_leaf(f"{prefix}.{module}", leaf, ndim)


def _resnet_torch(name: str, ndim: int, *, style: str) -> Rule | None:
  """Our ResNet names -> torchvision/timm v1.5 (style 'tv'), OpenCLIP's ModifiedResNet ('clip')
  or timm's ResNetV2 ('timm_v2')."""
  parts = name.split("/")
  leaf = parts[-1]
  if parts[0] == "stem":
    i = int(parts[1])
    return _torch_leaf("stem.conv" if style == "timm_v2" else f"conv{i + 1}", leaf, ndim)
  if parts[0] == "stem_norms":
    return _torch_leaf(f"bn{int(parts[1]) + 1}", leaf, ndim)
  if parts[0] == "stages":
    i, j, what = int(parts[1]), int(parts[2]), parts[3]
    base = f"stages.{i}.blocks.{j}" if style == "timm_v2" else f"layer{i + 1}.{j}"
    if what.startswith("conv"):
      return _torch_leaf(f"{base}.{what}", leaf, ndim)
    if what == "norms":
      k = int(parts[4])
      return _torch_leaf(f"{base}.{'norm' if style == 'timm_v2' else 'bn'}{k + 1}", leaf, ndim)
    if what == "proj":
      return _torch_leaf(f"{base}.downsample.{'conv' if style == 'timm_v2' else '0'}", leaf, ndim)
    if what == "proj_norm":
      return _torch_leaf(f"{base}.downsample.1", leaf, ndim)
  if parts[0] == "final_norm":
    return _torch_leaf("norm", leaf, ndim)
  if parts[0] == "attnpool":
    if leaf == "pos_embed":
      return _same("attnpool.positional_embedding")
    return _torch_leaf(f"attnpool.{parts[1]}_proj", leaf, ndim)
  if parts[0] == "head":
    if style == "timm_v2":  # a 1x1 conv (classes, C, 1, 1)
      if leaf == "bias":
        return _same("head.fc.bias")
      return Rule(
        ("head.fc.weight",),
        lambda a: a[:, :, 0, 0].T,
        lambda a: (np.ascontiguousarray(a.T)[:, :, None, None],),
      )
    return _torch_leaf("fc", leaf, ndim)
  return None


def _vit_torch(name: str, ndim: int, *, fmt: str) -> Rule | None:
  """Our ViT names -> OpenCLIP's VisionTransformer ('openclip') or timm's ('timm')."""
  parts = name.split("/")
  leaf = parts[-1]
  oc = fmt == "openclip"
  if parts[0] == "patch_embed":
    return _torch_leaf("conv1" if oc else "patch_embed.proj", leaf, ndim)
  if parts[0] == "cls_token":
    return (
      Rule(("class_embedding",), lambda a: a.reshape(1, 1, -1), lambda a: (a.reshape(-1),))
      if oc
      else _same("cls_token")
    )
  if parts[0] == "pos_embed":
    return (
      _same("positional_embedding")
      if oc
      else Rule(("pos_embed",), lambda a: a[0], lambda a: (a[None],))
    )
  if parts[0] == "ln_pre":
    return _torch_leaf("ln_pre", leaf, ndim)
  if parts[0] == "blocks":
    prefix = f"transformer.resblocks.{parts[1]}" if oc else f"blocks.{parts[1]}"
    return _torch_block(prefix, "/".join(parts[2:-1]), leaf, ndim, fmt)
  if parts[0] == "norm":
    return _torch_leaf("ln_post" if oc else "norm", leaf, ndim)
  if parts[0] == "head" and not oc:
    return _torch_leaf("head", leaf, ndim)
  return None


def openclip_rule(name: str, ndim: int) -> Rule | None:
  """Our CLIPModel's names -> an OpenCLIP / OpenAI CLIP state dict."""
  parts = name.split("/")
  if name == "logit_scale":
    return _same("logit_scale")
  if name == "image_projection":
    return _same("visual.proj")
  if parts[0] == "image":
    rest = "/".join(parts[1:])
    rule = (
      _vit_torch(rest, ndim, fmt="openclip")
      if _is_vit_name(rest)
      else _resnet_torch(rest, ndim, style="clip")
    )
    return None if rule is None else _prefixed(rule, "visual.")
  if parts[0] == "text":
    rest, leaf = parts[1:], parts[-1]
    if rest[0] == "token_embed":
      return _same("token_embedding.weight")
    if rest[0] == "pos_embed":
      return _same("positional_embedding")
    if rest[0] == "projection":
      return _same("text_projection")
    if rest[0] == "norm":
      return _torch_leaf("ln_final", leaf, ndim)
    if rest[0] == "blocks":
      return _torch_block(
        f"transformer.resblocks.{rest[1]}", "/".join(rest[2:-1]), leaf, ndim, "openclip"
      )
  return None


def _is_vit_name(rest: str) -> bool:
  return rest.split("/")[0] in ("patch_embed", "cls_token", "pos_embed", "ln_pre", "blocks", "norm")


def _prefixed(rule: Rule, prefix: str) -> Rule:
  return dataclasses.replace(rule, src=tuple(prefix + s for s in rule.src))


def timm_rule(kind: str) -> Callable[[str, int], Rule | None]:
  if kind == "vit":
    return lambda name, ndim: _vit_torch(name, ndim, fmt="timm")
  style = "timm_v2" if kind == "v2" else "tv"
  return lambda name, ndim: _resnet_torch(name, ndim, style=style)


def bit_rule(name: str, ndim: int) -> Rule | None:
  """Our v2 ResNet names -> BiT's .npz (TF layout, already HWIO)."""
  parts = name.split("/")
  leaf = parts[-1]
  gn = {"scale": "gamma", "bias": "beta"}
  flat = lambda n: Rule((n,), lambda a: a.reshape(-1), lambda a: (a,))
  if parts[0] == "stem":
    return _same("resnet/root_block/standardized_conv2d/kernel")
  if parts[0] == "final_norm":
    return flat(f"resnet/group_norm/{gn[leaf]}")
  if parts[0] == "head":
    if leaf == "bias":
      return flat("resnet/head/conv2d/bias")
    return Rule(
      ("resnet/head/conv2d/kernel",),
      lambda a: a.reshape(a.shape[-2], a.shape[-1]),
      lambda a: (a[None, None],),
    )
  if parts[0] == "stages":
    unit = f"resnet/block{int(parts[1]) + 1}/unit{int(parts[2]) + 1:02d}"
    what = parts[3]
    if what.startswith("conv"):
      return _same(f"{unit}/{'abc'[int(what[4:]) - 1]}/standardized_conv2d/kernel")
    if what == "norms":
      return flat(f"{unit}/{'abc'[int(parts[4])]}/group_norm/{gn[leaf]}")
    if what == "proj":
      return _same(f"{unit}/a/proj/standardized_conv2d/kernel")
  return None


def big_vision_rule(layout: str, pool: str, heads: int) -> Callable[[str, int], Rule | None]:
  """Our ViT names -> a big_vision (``layout='bv'``) or original vit_jax (``'vit_jax'``) ViT
  .npz (the stacked 'Transformer/encoderblock' of scanned models is unstacked by the reader).
  The inverse writes that layout (tests read it back with timm's own .npz loader)."""
  mha, mlp, ln2 = (0, 0, 1) if layout == "bv" else (1, 3, 2)

  def split_heads(a):  # (D, D) -> (D, heads, D / heads)
    return a.reshape(a.shape[0], heads, -1)

  def pos_rule():
    if layout == "vit_jax":
      return Rule(
        ("Transformer/posembed_input/pos_embedding",), lambda a: a[0], lambda a: (a[None],)
      )
    if pool == "gap":
      return Rule(("pos_embedding",), lambda a: a[0], lambda a: (a[None],))

    # big_vision adds position embeddings to the patches only, before the class token is
    # prepended: a zero row for the class token is the same network.
    def inv(a):
      if np.any(a[0] != 0):
        raise ConversionError(
          "pos_embed: big_vision has no position embedding for the class "
          "token, and this model's is not zero"
        )
      return (a[None, 1:],)

    return Rule(
      ("pos_embedding",), lambda a: np.concatenate([np.zeros((1, a.shape[-1]), a.dtype), a[0]]), inv
    )

  def rule(name: str, ndim: int) -> Rule | None:
    parts = name.split("/")
    leaf = parts[-1]
    if parts[0] == "patch_embed":
      return _same(f"embedding/{leaf}")
    if parts[0] == "cls_token":
      return _same("cls")
    if parts[0] == "pos_embed":
      return pos_rule()
    if parts[0] == "norm":
      return _same(f"Transformer/encoder_norm/{leaf}")
    if parts[0] == "head":
      return _same(f"head/{leaf}")
    if parts[0] != "blocks":
      return None
    b = f"Transformer/encoderblock_{parts[1]}"
    rest = "/".join(parts[2:-1])
    if rest == "norm1":
      return _same(f"{b}/LayerNorm_0/{leaf}")
    if rest == "norm2":
      return _same(f"{b}/LayerNorm_{ln2}/{leaf}")
    if rest in ("mlp/fc1", "mlp/fc2"):
      return _same(f"{b}/MlpBlock_{mlp}/Dense_{int(rest[-1]) - 1}/{leaf}")
    att = f"{b}/MultiHeadDotProductAttention_{mha}"
    if rest == "attn/qkv":
      names = tuple(f"{att}/{n}/{leaf}" for n in ("query", "key", "value"))
      if leaf == "kernel":  # three (D, heads, head_dim) <-> (D, 3 * D)
        return Rule(
          names,
          lambda q, k, v: np.concatenate([t.reshape(t.shape[0], -1) for t in (q, k, v)], axis=1),
          lambda a: tuple(split_heads(t) for t in np.split(a, 3, axis=1)),
        )
      return Rule(
        names,
        lambda q, k, v: np.concatenate([t.reshape(-1) for t in (q, k, v)]),
        lambda a: tuple(t.reshape(heads, -1) for t in np.split(a, 3)),
      )
    if rest == "attn/proj":
      if leaf == "kernel":  # (heads, head_dim, D) <-> (D, D)
        return Rule(
          (f"{att}/out/kernel",),
          lambda a: a.reshape(-1, a.shape[-1]),
          lambda a: (a.reshape(heads, -1, a.shape[-1]),),
        )
      return _same(f"{att}/out/bias")
    return None

  return rule


# ----------------------------------------------------------------------------- applying rules

# Source tensors that carry no weights: BatchNorm step counters, OpenAI's int buffers, masks.
IGNORED = re.compile(
  r"(^|\.)(num_batches_tracked|attn_mask)$|^(input_resolution|context_length"
  r"|vocab_size)$"
)


def convert(
  ours: dict[str, tuple],
  source: dict[str, np.ndarray],
  rule_of: Callable[[str, int], Rule | None],
  *,
  what: str = "source",
  path: str = "",
) -> dict[str, np.ndarray]:
  """{our name: array} for every name in ``ours`` ({name: shape}) from ``source`` by the rules.
  Raises ConversionError listing every name without a rule, missing source tensor, shape
  mismatch and unused source tensor."""
  out, used, problems = {}, set(), []
  for name, shape in sorted(ours.items()):
    rule = rule_of(name, len(shape))
    if rule is None:
      problems.append(f"{name}: no {what} tensor maps to it")
      continue
    missing = [s for s in rule.src if s not in source]
    if missing:
      problems.append(f"{name}: {what} has no {', '.join(missing)}")
      continue
    used.update(rule.src)
    value = np.asarray(rule.fwd(*[source[s] for s in rule.src]))
    if tuple(value.shape) != tuple(shape):
      shapes = ", ".join(f"{s} {tuple(source[s].shape)}" for s in rule.src)
      problems.append(f"{name}: model {tuple(shape)} vs {what} {shapes}")
      continue
    out[name] = value.astype(np.float32) if value.dtype.kind == "f" else value
  leftovers = sorted(k for k in source if k not in used and not IGNORED.search(k))
  problems += [
    f"{k} {tuple(np.shape(source[k]))}: in the {what}, not in this model" for k in leftovers
  ]
  if problems:
    more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
    raise ConversionError(
      f"{path + ': ' if path else ''}the {what} does not fit the model "
      f"({len(problems)} mismatches):\n  " + "\n  ".join(problems[:40]) + more
    )
  return out


def export(
  ours: dict[str, np.ndarray], rule_of: Callable[[str, int], Rule | None], what: str = "export"
) -> dict[str, np.ndarray]:
  """The reverse of ``convert``: {source name: array}."""
  out, problems = {}, []
  for name, value in sorted(ours.items()):
    rule = rule_of(name, np.ndim(value))
    if rule is None or rule.inv is None:
      problems.append(f"{name}: the {what} format has no place for it")
      continue
    for src, v in zip(rule.src, rule.inv(np.asarray(value))):
      out[src] = np.array(v, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
  if problems:
    raise ConversionError(f"cannot export ({len(problems)} tensors): " + "; ".join(problems[:20]))
  return out


# ----------------------------------------------------------------------------- architectures


@dataclasses.dataclass
class Spec:
  """What a converted checkpoint is, as this codebase's config keys."""

  method: str  # 'supervised' or 'clip'
  model: str
  model_kwargs: dict[str, Any]
  num_classes: int = 0
  text: dict[str, Any] | None = None  # config.text keys (clip)
  embed_dim: int | None = None  # config.clip.embed_dim
  vocab_size: int | None = None


def _count(sd: dict, pattern: str) -> int:
  rx = re.compile(pattern)
  return len({m.group(1) for k in sd if (m := rx.match(k))})


def _vit_name(width: int, depth: int, mlp: int, heads: int, patch: int) -> tuple[str, dict]:
  for v, (w, d, m, h) in VARIANTS.items():
    if (w, d, m) == (width, depth, mlp) and h == heads:
      return f"vit_{v}{patch}", {}
  for v, (w, _d, _m, _h) in VARIANTS.items():  # an off-grid ViT: spell out its dimensions
    if w == width:
      return f"vit_{v}{patch}", dict(depth=depth, mlp_dim=mlp, heads=heads)
  return f"vit_b{patch}", dict(width=width, depth=depth, mlp_dim=mlp, heads=heads)


def _resnet_depth(blocks: tuple[int, ...], bottleneck: bool = True) -> int:
  for depth, (b, bn) in DEPTHS.items():
    if tuple(b) == tuple(blocks) and bn == bottleneck:
      return depth
  raise ConversionError(
    f"a ResNet with {blocks} blocks per stage is not one of ours "
    f"({', '.join(f'resnet{d}' for d in DEPTHS)})"
  )


OPENCLIP_NAMES = {
  "RN50": "clip_rn50",
  "RN101": "clip_rn101",
  "ViT-B-32": "vit_b32",
  "ViT-B-16": "vit_b16",
  "ViT-L-14": "vit_l14",
}


def openclip_spec(sd: dict, act: str) -> Spec:
  """OpenAI's build_model logic: the architecture from the state dict's shapes."""
  if "visual.proj" in sd:  # ViT
    width = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    depth = _count(sd, r"visual\.transformer\.resblocks\.(\d+)\.")
    mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    grid = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    model, kwargs = _vit_name(width, depth, mlp, width // 64, patch)
    kwargs.update(CLIP_VIT_KWARGS, act=act, image_size=grid * patch)
    embed = sd["visual.proj"].shape[1]
  elif "visual.attnpool.c_proj.weight" in sd:  # ModifiedResNet
    blocks = tuple(_count(sd, rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5))
    model = f"clip_rn{_resnet_depth(blocks)}"
    width = sd["visual.layer1.0.conv1.weight"].shape[0]
    embed = sd["visual.attnpool.c_proj.weight"].shape[0]
    grid = int(round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5))
    kwargs = dict(image_size=grid * 32)
    if width != 64:
      kwargs["width"] = width / 64
  else:
    raise ConversionError(
      "not an OpenCLIP/OpenAI CLIP state dict (no visual.proj and no visual.attnpool)"
    )
  t_width = sd["ln_final.weight"].shape[0]
  text = dict(
    width=int(t_width),
    heads=int(t_width // 64),
    layers=_count(sd, r"transformer\.resblocks\.(\d+)\."),
    context_length=int(sd["positional_embedding"].shape[0]),
    act=act,
    tokenizer="clip",
  )
  return Spec(
    "clip",
    model,
    kwargs,
    text=text,
    embed_dim=int(embed),
    vocab_size=int(sd["token_embedding.weight"].shape[0]),
  )


def bit_spec(sd: dict) -> Spec:
  blocks = tuple(_count(sd, rf"resnet/block{i}/unit(\d+)/") for i in range(1, 5))
  width = sd["resnet/root_block/standardized_conv2d/kernel"].shape[-1] // 64
  head = sd.get("resnet/head/conv2d/kernel")
  return Spec(
    "supervised",
    f"bit_r{_resnet_depth(blocks)}x{width}",
    {},
    num_classes=0 if head is None else int(head.shape[-1]),
  )


def big_vision_spec(sd: dict) -> tuple[Spec, str, int]:
  layout = "vit_jax" if "Transformer/posembed_input/pos_embedding" in sd else "bv"
  kernel = sd["embedding/kernel"]
  patch, width = kernel.shape[0], kernel.shape[-1]
  depth = _count(sd, r"Transformer/encoderblock_(\d+)/")
  mha = 0 if layout == "bv" else 1
  mlp_key = 0 if layout == "bv" else 3
  heads = sd[f"Transformer/encoderblock_0/MultiHeadDotProductAttention_{mha}/query/kernel"].shape[1]
  mlp = sd[f"Transformer/encoderblock_0/MlpBlock_{mlp_key}/Dense_0/kernel"].shape[1]
  if "MAPHead_0/probe" in sd:
    raise ConversionError(
      "big_vision ViT with a MAP head (pool_type='map'): not supported "
      "here (our ViTs pool by class token or average)"
    )
  pool = "tok" if "cls" in sd else "gap"
  pos = sd["Transformer/posembed_input/pos_embedding" if layout == "vit_jax" else "pos_embedding"]
  grid = int(round((pos.shape[1] - (1 if layout == "vit_jax" and pool == "tok" else 0)) ** 0.5))
  model, kwargs = _vit_name(width, depth, mlp, heads, patch)
  # Flax's nn.gelu is the tanh approximation: big_vision's ViTs were trained with it.
  kwargs.update(pool=pool, image_size=grid * patch, act="gelu_tanh")
  head = sd.get("head/kernel")
  return (
    Spec("supervised", model, kwargs, num_classes=0 if head is None else int(head.shape[-1])),
    layout,
    heads,
  )


def unstack_scan(sd: dict) -> dict:
  """big_vision's scanned encoder ('Transformer/encoderblock/...' with a leading depth axis)
  as per-block names."""
  stacked = {k: v for k, v in sd.items() if k.startswith("Transformer/encoderblock/")}
  if not stacked:
    return sd
  out = {k: v for k, v in sd.items() if k not in stacked}
  for k, v in stacked.items():
    for i in range(v.shape[0]):
      out[k.replace("encoderblock/", f"encoderblock_{i}/", 1)] = v[i]
  return out


# Our ViT variant letters and timm's size names, both directions.
_TIMM_VIT_SIZE = {"ti": "tiny", "s": "small", "m": "medium", "b": "base", "l": "large", "h": "huge"}
_OUR_VIT_VARIANT = {size: v for v, size in _TIMM_VIT_SIZE.items()}

TIMM_NAMES = (
  (r"resnet(\d+)(\.\w+)?", lambda m: f"resnet{m[1]}", "v1.5"),
  (r"resnetv2_(\d+)x(\d+)_bit(\.\w+)?", lambda m: f"bit_r{m[1]}x{m[2]}", "v2"),
  (
    r"vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)(\.\w+)?",
    lambda m: f"vit_{_OUR_VIT_VARIANT[m[1]]}{m[2]}",
    "vit",
  ),
)


def _vit_dims(kw: dict[str, Any]) -> tuple[int, int, int, int]:
  """(width, depth, mlp_dim, heads) of a ViT's kwargs: the variant's, overridden where given."""
  w, depth, mlp, heads = VARIANTS[kw["variant"]]
  return (
    kw.get("width") or w,
    kw.get("depth") or depth,
    kw.get("mlp_dim") or mlp,
    kw.get("heads") or heads,
  )


def timm_spec(sd: dict, model: str) -> tuple[Spec, str]:
  """timm's state dicts name tensors but not heads or depth: ``model`` (ours, or a timm name
  such as vit_base_patch16_224 / resnetv2_50x1_bit / resnet50) says which network."""
  from big_transfer import models

  kwargs: dict[str, Any] = {}
  for pattern, ours, kind in TIMM_NAMES:
    m = re.fullmatch(pattern, model)
    if m:
      model = ours(m)
      if kind == "vit":
        kwargs["image_size"] = int(m[3])
      break
  cls, defaults = models.parse(model)
  if "variant" in defaults and "patch_embed.proj.weight" in sd:
    # The tensors say the patch (and, with pos_embed, the resolution): they win over the name,
    # so the registered name an export writes (vit_tiny_patch16_224 for a ViT-Ti/4 at 32px,
    # its dimensions in the .json's arguments) reads back as the network it holds.
    patch = int(sd["patch_embed.proj.weight"].shape[-1])
    if patch != defaults["patch"]:
      model = f"vit_{defaults['variant']}{patch}"
      cls, defaults = models.parse(model)
      kwargs.pop("image_size", None)
  if kind is None:
    raise ConversionError(f"--model={model}: timm checkpoints are resnetD, bit_rDxW or vit_*")
  head = sd.get(
    "head.fc.weight" if kind == "v2" else "fc.weight" if kind == "v1.5" else "head.weight"
  )
  if kind == "vit":
    grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5)) if "pos_embed" in sd else 14
    if "pos_embed" in sd:
      kwargs["image_size"] = grid * defaults["patch"]
    kwargs.setdefault("image_size", grid * defaults["patch"])
    # Depth and widths are in the tensors (an off-grid ViT: spelt out); heads are not.
    w, depth, mlp, _ = VARIANTS[defaults["variant"]]
    found = {
      "depth": _count(sd, r"blocks\.(\d+)\."),
      "width": sd["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in sd else w,
      "mlp_dim": sd["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in sd else mlp,
    }
    kwargs.update(
      {
        k: int(v)
        for k, v in found.items()
        if v and v != {"depth": depth, "width": w, "mlp_dim": mlp}[k]
      }
    )
  return Spec(
    "supervised", model, kwargs, num_classes=0 if head is None else int(head.shape[0])
  ), kind


def resolve_openclip_name(model: str | None) -> tuple[str | None, str | None]:
  """An OpenCLIP model name ('ViT-B-32', 'RN50-quickgelu') -> (our model, act)."""
  if not model:
    return None, None
  base, quick = (
    (model[: -len("-quickgelu")], True) if model.endswith("-quickgelu") else (model, False)
  )
  if base in OPENCLIP_NAMES:
    return OPENCLIP_NAMES[base], "quick_gelu" if quick else "gelu"
  return model, None


# ----------------------------------------------------------------------------- timm export

# timm's BiT names (StdConv2d with eps 1e-8 is in their model definitions, not expressible as
# create_model arguments, so only these widths and depths can leave).
TIMM_BIT = {(50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4)}
# Registered timm ViT names; any other size is built from one of these (which supplies the
# LayerNorm: eps 1e-6, or 1e-5 for the CLIP form) with every dimension given as an argument.
_TIMM_VITS = {
  "vit_tiny_patch16_224",
  "vit_tiny_patch16_384",
  "vit_small_patch16_224",
  "vit_small_patch32_224",
  "vit_small_patch16_384",
  "vit_small_patch32_384",
  "vit_base_patch16_224",
  "vit_base_patch32_224",
  "vit_base_patch16_384",
  "vit_base_patch32_384",
  "vit_large_patch16_224",
  "vit_large_patch32_384",
  "vit_large_patch16_384",
  "vit_huge_patch14_224",
}
_TIMM_CLIP_VITS = {
  "vit_base_patch32_clip_224",
  "vit_base_patch16_clip_224",
  "vit_large_patch14_clip_224",
  "vit_huge_patch14_clip_224",
  "vit_base_patch32_clip_384",
  "vit_base_patch16_clip_384",
  "vit_large_patch14_clip_336",
}


def timm_config(
  model: str, model_kwargs: dict[str, Any], num_classes: int
) -> tuple[str, dict[str, Any], str]:
  """(timm architecture, ``timm.create_model`` keyword arguments, rule kind) of an image tower
  of ours; a ConversionError where timm has no such network."""
  from big_transfer import models

  _, d = models.parse(model)
  kw = {**d, **model_kwargs}
  if "variant" in kw:
    w, depth, mlp, heads = _vit_dims(kw)
    eps, ln_pre = kw.get("eps", 1e-6), kw.get("ln_pre", False)
    if kw.get("patch_bias", True) == ln_pre:
      raise ConversionError(
        f"{model}: timm's ViT has a patch-embedding bias exactly when it "
        f"has no pre-norm; this one has patch_bias={kw.get('patch_bias', True)}"
        f", ln_pre={ln_pre}"
      )
    if eps not in (1e-6, 1e-5):
      raise ConversionError(f"{model}: LayerNorm eps {eps}; timm's ViTs use 1e-6 (or 1e-5, CLIP)")
    size = _TIMM_VIT_SIZE[kw["variant"]]
    image = kw.get("image_size", 224)
    pool = kw.get("pool", "tok")
    clip = eps == 1e-5
    name = f"vit_{size}_patch{kw['patch']}_{'clip_' if clip else ''}{image}"
    known = _TIMM_CLIP_VITS if clip else _TIMM_VITS
    same_size = f"vit_{size}_patch16_{'clip_' if clip else ''}224"
    arch = (
      name
      if name in known
      else same_size
      if same_size in known
      else ("vit_base_patch16_clip_224" if clip else "vit_base_patch16_224")
    )
    args = dict(
      img_size=image,
      patch_size=kw["patch"],
      embed_dim=w,
      depth=depth,
      num_heads=heads,
      mlp_ratio=mlp / w,
      class_token=pool == "tok",
      global_pool="token" if pool == "tok" else "avg",
      fc_norm=False,
      pre_norm=ln_pre,
      act_layer=kw.get("act", "gelu"),
      num_classes=num_classes,
    )
    return arch, args, "vit"
  version = kw.get("version")
  if version == "clip":
    raise ConversionError(
      f"{model}: timm has no CLIP ModifiedResNet; export the whole CLIP model with --to=openclip"
    )
  if version == "v2":
    width = kw.get("width", 1)
    if (kw["depth"], width) not in TIMM_BIT:
      raise ConversionError(
        f"{model}: timm's BiT ResNets are "
        + ", ".join(f"bit_r{a}x{b}" for a, b in sorted(TIMM_BIT))
      )
    return f"resnetv2_{kw['depth']}x{width}_bit", {"num_classes": num_classes}, "v2"
  if kw.get("width", 1.0) != 1.0 or kw.get("stem_width") not in (None, 64):
    raise ConversionError(
      f"{model}: timm's resnet{kw['depth']} has width 1 and a 64-channel "
      f"stem; this one has width={kw.get('width')}, "
      f"stem_width={kw.get('stem_width')}"
    )
  return f"resnet{kw['depth']}", {"num_classes": num_classes}, "v1.5"


# ----------------------------------------------------------------------------- OpenCLIP export


def openclip_config(spec: Spec) -> dict[str, Any]:
  """OpenCLIP's model config (``open_clip.CLIP(**cfg)``) for a CLIP spec of ours."""
  from big_transfer import models

  cls, d = models.parse(spec.model)
  kw = {**d, **spec.model_kwargs}
  act = spec.text["act"]
  if "variant" in kw:
    for k, v in CLIP_VIT_KWARGS.items():
      if kw.get(k, {"eps": 1e-6, "patch_bias": True, "ln_pre": False}[k]) != v:
        raise ConversionError(
          f"OpenCLIP's ViT has {k}={v}; this model has {k}={kw.get(k)} "
          f"(train with model_kwargs {CLIP_VIT_KWARGS} to export)"
        )
    if kw.get("act", "gelu") != act:
      raise ConversionError(
        f"OpenCLIP uses one activation for both towers; image {kw.get('act', 'gelu')} vs text {act}"
      )
    w, depth, mlp, heads = _vit_dims(kw)
    if heads != w // 64 and w >= 64:
      raise ConversionError(f"OpenCLIP's ViT has width/64 heads; this one has {heads}")
    vision = dict(
      layers=depth,
      width=w,
      patch_size=kw["patch"],
      mlp_ratio=mlp / w,
      image_size=kw.get("image_size", 224),
      head_width=w // heads,
    )
    if kw.get("pool", "tok") != "tok":
      raise ConversionError("OpenCLIP's ViT pools by class token; this one by average")
  elif kw.get("version") == "clip":
    blocks, _ = DEPTHS[kw["depth"]]
    width = int(64 * kw.get("width", 1.0))
    vision = dict(
      layers=list(blocks), width=width, image_size=kw.get("image_size", 224), head_width=64
    )
    if kw.get("attn_heads") not in (None, width * 32 // 64):
      raise ConversionError("OpenCLIP's ModifiedResNet has width*32/64 attention-pool heads")
  else:
    raise ConversionError(
      f"{spec.model}: OpenCLIP has CLIP ViTs and CLIP ResNets (clip_rnD), not this image tower"
    )
  t = spec.text
  text = dict(
    context_length=t["context_length"],
    vocab_size=spec.vocab_size,
    width=t["width"],
    heads=t["heads"],
    layers=t["layers"],
  )
  return dict(
    embed_dim=spec.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=act == "quick_gelu"
  )
