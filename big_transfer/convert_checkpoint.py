"""Public checkpoints -> this codebase's Orbax checkpoints; runs back out to OpenCLIP and timm.

  python -m big_transfer.convert_checkpoint --from=openclip ViT-B-32.pt --model=ViT-B-32-quickgelu --out=DIR
  python -m big_transfer.convert_checkpoint --from=bit BiT-M-R50x1.npz --out=DIR
  python -m big_transfer.convert_checkpoint --from=timm model.safetensors --model=vit_base_patch16_224 --out=DIR
  python -m big_transfer.convert_checkpoint --from=big_vision augreg.npz --out=DIR
  python -m big_transfer.convert_checkpoint --to=openclip RUN_WORKDIR --out=model.pt
  python -m big_transfer.convert_checkpoint --to=timm RUN_WORKDIR --out=model.safetensors

DIR is a workdir like a pre-training run's (``config.json`` + ``checkpoints/0``): give it to
``finetune`` as ``pretrained=DIR`` or to ``train`` as ``--config.init_from=DIR``. The
architecture is read from the tensors where they say it; ``--model`` names it otherwise (timm)
and is checked against them. OpenAI's CLIP weights use QuickGELU: ``--model=RN50-quickgelu`` /
``ViT-B-32-quickgelu`` (OpenCLIP's names) or ``--act=quick_gelu``. Exports write the OpenCLIP
state dict (``.pt`` with torch installed, else ``.safetensors``) and ``<out>.json``, the
``open_clip.CLIP(**cfg)`` model config. ``--to=timm`` exports the image tower of any run —
supervised, SimCLR, CLIP/SLIP ViTs (with the projection as the head), or a fine-tuning run
with its classifier — where timm has the architecture (resnetD, BiT, ViT) and writes
``<out>.json``: ``timm.create_model(architecture, pretrained=True,
pretrained_cfg_overlay=pretrained_cfg, **kwargs)`` builds it with these weights.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import types
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from big_transfer import checkpoint as ckpt_lib
from big_transfer import cli, config_lib, interop, methods, paths, transfer
from big_transfer import state as state_lib
from big_transfer.app import write_config
from big_transfer.checkpoint import CheckpointError
from big_transfer.data import ops, tokenizer
from big_transfer.interop import ConversionError, Spec
from big_transfer.sharding import path_name
from big_transfer.workdir import Workdir


def _model_shapes(spec: Spec):
  """(config, {name: shape} of params, {name: shape} of model_state, abstract pure dicts)."""

  config = config_lib.base_config()
  config.method = spec.method
  config.model = spec.model
  config.model_kwargs = ml_collections.ConfigDict(spec.model_kwargs)
  config.num_classes = spec.num_classes
  info: dict[str, Any] = {"num_classes": spec.num_classes, "class_names": None}
  if methods.has_text_tower(spec.method):
    config.text.update(spec.text)
    config.clip.embed_dim = spec.embed_dim
    # Shapes only: the vocabulary size is the embedding's; CLIP's end-of-text id is its last.
    info["tokenizer"] = types.SimpleNamespace(
      vocab_size=spec.vocab_size, eot_id=spec.vocab_size - 1
    )
  method = methods.get(spec.method, config, info)
  abstract = nnx.eval_shape(lambda: method.create_model(nnx.Rngs(0)))
  _, params, rest = nnx.split(abstract, nnx.Param, ...)
  trees = {"params": params.to_pure_dict(), "model_state": rest.to_pure_dict()}
  shapes = {
    part: {path_name(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    for part, tree in trees.items()
  }
  return config, shapes, trees


def _nest(tree, flat: dict[str, np.ndarray]):
  return jax.tree_util.tree_map_with_path(lambda p, _: flat[path_name(p)], tree)


def _rule_and_spec(fmt: str, sd: dict, model: str | None, act: str | None):
  """(spec, rule, source dict) for a source format."""
  if fmt == "openclip":
    ours, name_act = interop.resolve_openclip_name(model)
    spec = interop.openclip_spec(sd, act or name_act or "quick_gelu")
    _check_model(ours, spec)
    return spec, interop.openclip_rule, sd
  if fmt == "bit":
    sd = interop.strip_prefix(sd, ("params/", "opt/target/"))
    if "resnet/root_block/standardized_conv2d/kernel" not in sd:
      raise ConversionError("not a BiT .npz (no resnet/root_block/standardized_conv2d/kernel)")
    spec = interop.bit_spec(sd)
    _check_model(model, spec)
    return spec, interop.bit_rule, sd
  if fmt == "big_vision":
    sd = interop.unstack_scan(interop.strip_prefix(sd, ("opt/target/", "params/img/", "params/")))
    if "embedding/kernel" not in sd:
      raise ConversionError("not a big_vision ViT .npz (no embedding/kernel)")
    spec, layout, heads = interop.big_vision_spec(sd)
    if act:
      spec.model_kwargs["act"] = act
    _check_model(model, spec)
    return spec, interop.big_vision_rule(layout, spec.model_kwargs["pool"], heads), sd
  if fmt == "timm":
    if not model:
      raise ConversionError(
        "--from=timm needs --model (e.g. resnet50, vit_base_patch16_224, resnetv2_50x1_bit)"
      )
    spec, kind = interop.timm_spec(sd, model)
    if act:
      spec.model_kwargs["act"] = act
    return spec, interop.timm_rule(kind), sd
  raise ConversionError(f"--from={fmt!r}: one of {', '.join(interop.FORMATS)}")


def _check_model(model: str | None, spec: Spec):
  if model and model != spec.model:
    raise ConversionError(
      f"--model={model}, but the checkpoint's tensors are a {spec.model} ({spec.model_kwargs})"
    )


def convert(
  fmt: str, src: str, out: str, *, model: str | None = None, act: str | None = None
) -> dict[str, Any]:
  """Converts ``src`` into the workdir ``out``; returns a summary (spec, tensors, params)."""
  sd = interop.read_source(src)
  spec, rule, sd = _rule_and_spec(fmt, sd, model, act)
  config, shapes, trees = _model_shapes(spec)
  names = {**shapes["params"], **shapes["model_state"]}
  flat = interop.convert(names, sd, rule, what=f"{fmt} checkpoint", path=src)
  state = {part: _nest(trees[part], flat) for part in ("params", "model_state") if shapes[part]}
  n_params = sum(int(np.prod(s)) for s in shapes["params"].values())
  summary = {
    "from": fmt,
    "source": paths.resolve(src),
    "model": spec.model,
    "model_kwargs": spec.model_kwargs,
    "method": spec.method,
    "num_classes": spec.num_classes,
    "tensors": len(flat),
    "params": n_params,
  }
  write(out, config, state, summary)
  return summary


def write(out: str, config, state: dict, summary: dict):
  """A workdir finetune/train accept: config.json + checkpoints/0/state (Orbax)."""
  if paths.exists(Workdir(out).checkpoints):
    raise ConversionError(f"--out={out}: already holds checkpoints; choose a new directory")
  write_config(config, out, {"converted_from": summary})
  ckptr = ckpt_lib.Checkpointer(out, keep=1, async_save=False)
  ckptr.save(0, state)
  ckptr.close()


def export_openclip(workdir: str, out: str) -> dict[str, Any]:
  """A CLIP run of ours -> an OpenCLIP state dict (+ ``out``.json, its model config)."""
  pre = transfer.load_pretrained(workdir)
  if not methods.has_text_tower(pre.method):
    raise ConversionError(f"{workdir}: a {pre.method} run; only CLIP runs export to OpenCLIP")
  c = pre.config
  tok_path = pre.tokenizer_path()
  vocab = tokenizer.load(tok_path).vocab_size if tok_path else None
  flat = {**transfer.flatten(pre.params()), **transfer.flatten(pre.state.get("model_state", {}))}
  flat = {k: v for k, v in flat.items() if not k.startswith("ssl_projection/")}
  if "logit_bias" in flat:
    raise ConversionError(
      "a SigLIP run (logit_bias): OpenCLIP's CLIP class has no bias; use "
      "its CustomTextCLIP/SigLIP configs by hand"
    )
  spec = Spec(
    "clip",
    c.model,
    c.model_kwargs.to_dict(),
    text=c.text.to_dict(),
    embed_dim=c.clip.embed_dim,
    vocab_size=vocab or int(flat["text/token_embed/embedding"].shape[0]),
  )
  cfg = interop.openclip_config(spec)
  sd = _with_batchnorm_counters(interop.export(flat, interop.openclip_rule, what="OpenCLIP"))
  save_state_dict(sd, out)
  with open(os.path.splitext(out)[0] + ".json", "w") as f:
    json.dump(cfg, f, indent=1)
  return {"to": "openclip", "out": out, "tensors": len(sd), "config": cfg}


def _image_mean_std(config) -> dict[str, Any]:
  """timm's mean/std (0..1 units) from the run's evaluation preprocessing: its trailing
  value_range / normalize ops as x * scale + shift on 0..255 pixels."""
  try:
    _, affines = ops.split_device_affine(config.get("pp_eval") or config.get("pp_train") or "")
  except ops.PreprocessError:
    return {}
  scale, shift = np.ones(3), np.zeros(3)
  for key, a, b in affines:
    if key == "image":
      scale, shift = scale * np.asarray(a, np.float64), shift * np.asarray(a, np.float64) + b
  if not affines:
    return {}
  std = 1.0 / (255.0 * scale)
  mean = -shift * std
  # float32 affines give 0.49999997 for 0.5: the preset they were made from, where one is.
  presets = [*ops.MEAN_STD.values(), ((0.5,) * 3, (0.5,) * 3), ((0.0,) * 3, (1.0,) * 3)]
  for m, sd in presets:
    if np.allclose(mean, m, atol=1e-5) and np.allclose(std, sd, atol=1e-5):
      return {"mean": list(m), "std": list(sd)}
  return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}


def export_timm(workdir: str, out: str) -> dict[str, Any]:
  """Any run's image tower (pre-training of any method, or a fine-tuning run with its head)
  -> a timm state dict (``out``: .safetensors, or .pt with torch) and ``<out>.json``: the
  ``timm.create_model`` architecture and arguments and the pretrained_cfg (file, mean/std)."""
  directory, _ = ckpt_lib.find_checkpoint(workdir)
  run_dir = transfer.workdir_of(directory)
  config = _run_config(run_dir)
  if config is None:
    raise ConversionError(
      f"{workdir}: no config.json in {run_dir} (it says which model made the checkpoint)"
    )
  state, step = ckpt_lib.load_state(workdir)
  params = state_lib.eval_params(state)
  model_state = state.get("model_state", {})
  flat_p, flat_s = transfer.flatten(params), transfer.flatten(model_state)
  if "pretrained" in config:  # a fine-tuning run: Classifier(backbone, head)
    if "projection" in params and params["projection"] is not None:
      raise ConversionError(
        f"{workdir}: a classifier on normalised CLIP embeddings (projection "
        f"+ L2 norm); timm's models have no such head"
      )
    # The backbone's name and kwargs as fine-tuning resolved them: from the pre-training run's
    # config where it is still there.
    pc = _run_config(transfer.workdir_of(config.pretrained)) if config.pretrained else None
    pre = types.SimpleNamespace(config=pc, method=pc.method) if pc is not None else None
    model, kwargs = transfer.backbone_spec(config.model, config.model_kwargs.to_dict(), pre)
    tower = "backbone"
    extra = {f"head/{k}": v for k, v in transfer.flatten(params.get("head", {})).items()}
  else:
    if config.method not in methods.METHODS:
      raise ConversionError(f"{workdir}: method {config.method!r} has no image tower")
    model, kwargs = config.model, config.model_kwargs.to_dict()
    tower = methods.traits(config.method).image_tower
    extra = {}
    if "image_projection" in flat_p:
      # CLIP's projection as timm's head (bias 0): the model outputs the image embedding.
      proj = np.asarray(flat_p["image_projection"])
      extra = {"head/kernel": proj, "head/bias": np.zeros(proj.shape[1], proj.dtype)}
  strip = lambda flat: (
    {k[len(tower) + 1 :]: v for k, v in flat.items() if k.startswith(tower + "/")}
    if tower
    else dict(flat)
  )
  flat = {**strip(flat_p), **strip(flat_s), **extra}
  flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  num_classes = int(flat["head/kernel"].shape[-1]) if "head/kernel" in flat else 0
  arch, args, kind = interop.timm_config(model, kwargs, num_classes)
  sd = _with_batchnorm_counters(interop.export(flat, interop.timm_rule(kind), what="timm"))
  save_state_dict(sd, out)
  pretrained_cfg = {
    "file": paths.resolve(out),
    "num_classes": num_classes,
    **_image_mean_std(config),
  }
  if kind == "vit":
    pretrained_cfg["input_size"] = [3, args["img_size"], args["img_size"]]
  meta = {
    "architecture": arch,
    "kwargs": args,
    "pretrained_cfg": pretrained_cfg,
    "source": paths.resolve(directory),
    "step": step,
    "model": model,
    "model_kwargs": kwargs,
    "usage": "timm.create_model(architecture, pretrained=True, "
    "pretrained_cfg_overlay=pretrained_cfg, **kwargs)",
  }
  paths.write_json(os.path.splitext(out)[0] + ".json", meta, indent=1)
  return {
    "to": "timm",
    "out": out,
    "tensors": len(sd),
    "architecture": arch,
    "kwargs": args,
    "num_classes": num_classes,
  }


def _with_batchnorm_counters(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A PyTorch state dict with each BatchNorm's step counter, which strict loading expects."""
  for k in list(sd):
    if k.endswith(".running_mean"):
      sd[k[: -len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
  return sd


def _run_config(run_dir: str) -> ml_collections.ConfigDict | None:
  path = Workdir(run_dir).config
  if not paths.exists(path):
    return None
  return ml_collections.ConfigDict(paths.read_json(path)["config"])


def save_state_dict(sd: dict[str, np.ndarray], out: str):
  """Writes a state dict file (.safetensors or .pt); to a URL through a local file uploaded
  whole."""
  if paths.is_url(out):
    with tempfile.TemporaryDirectory() as tmp:
      local = os.path.join(tmp, paths.basename(out))
      save_state_dict(sd, local)
      paths.write_bytes(out, paths.read_bytes(local))
    return
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if out.endswith(".safetensors"):
    from safetensors.numpy import save_file

    save_file(sd, out)
    # safetensors writes through a private temp file (0600): give the export the mode any file
    # written here gets (0666 less the umask), so others who may read the directory can read it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)
    return
  try:
    import torch
  except ImportError:
    raise ConversionError(
      f"--out={out}: writing .pt needs torch; use a .safetensors name"
    ) from None
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, out)


def command() -> cli.Command:
  c = cli.Command(
    "big_transfer.convert_checkpoint",
    __doc__,
    args=[cli.Arg("src", "checkpoint file (or, with --to, a run's workdir)")],
    usage="SRC (--from=FORMAT | --to=FORMAT) --out=OUT [flags]",
  )
  c.enum(
    "from",
    None,
    interop.FORMATS,
    "import a checkpoint file of this format into a workdir",
    dest="fmt",
  )
  c.enum(
    "to",
    None,
    ("openclip", "timm"),
    "export a run: openclip (a CLIP model), timm (any image tower timm has)",
  )
  c.string(
    "model",
    None,
    "ours (vit_b16, resnet50, bit_r50x1, clip_rn50) or the source's name "
    "(ViT-B-32-quickgelu, vit_base_patch16_224, resnetv2_50x1_bit)",
  )
  c.enum(
    "act",
    None,
    ("gelu", "gelu_tanh", "quick_gelu"),
    "override the transformer activation (not stored in checkpoints)",
  )
  c.string(
    "out",
    None,
    "a new workdir (--from), or the exported file (--to: .pt or .safetensors; "
    "<out>.json is written beside it)",
    required=True,
  )
  c.check(
    lambda a: (
      "one of --from=FORMAT (import) or --to=FORMAT (export) is needed"
      if (a.fmt is None) == (a.to is None)
      else None
    )
  )
  return c


def main(argv=None) -> int:
  args = command().parse(argv)
  try:
    if args.to:
      export = export_openclip if args.to == "openclip" else export_timm
      summary = export(args.src, args.out)
    else:
      with paths.local_copy(args.src) as src:  # a checkpoint file in a bucket: read locally
        summary = convert(args.fmt, src, args.out, model=args.model, act=args.act)
      summary["source"] = paths.resolve(args.src)
  except (ConversionError, CheckpointError, OSError, paths.URLPathError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(summary, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
