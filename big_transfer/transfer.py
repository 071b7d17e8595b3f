"""Transfer building blocks: pre-trained checkpoints restored by name, the classifier that
transfer trains, heads (zero, text-initialised, probe), the linear probe solvers, the
BiT-HyperRule, and the results table. The entrypoint that runs a protocol is finetune.py.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from big_transfer import checkpoint as ckpt_lib
from big_transfer import logging as log_lib
from big_transfer import methods, models, optim, paths
from big_transfer import state as state_lib
from big_transfer import workdir as workdir_lib
from big_transfer.data import pipeline, sources, tokenizer
from big_transfer.evaluators.fewshot_linear import ridge_fit_grid
from big_transfer.evaluators.zeroshot import templates_of
from big_transfer.methods import losses
from big_transfer.models.resnet import resample_grid_embedding
from big_transfer.sharding import path_name


class TransferError(ValueError):
  """A transfer config that cannot run; printed as one line."""


# Pre-training heads, dropped on transfer (a supervised head names the pre-training classes).
PRETRAINING_HEADS = ("head",)


# ----------------------------------------------------------------------------- checkpoints


@dataclasses.dataclass
class Pretrained:
  """A pre-training run's checkpoint and config, host-side."""

  path: str
  step: int
  workdir: str
  config: ml_collections.ConfigDict
  state: dict  # params, model_state (and ema_params), host numpy, string keys
  step_dir: str = ""  # checkpoints/<step> the state was read from

  @functools.cached_property
  def fingerprint(self) -> str:
    """What the weights are, for caches and run identities keyed by them: a hash of the array
    digest saved with the checkpoint (else of its CHECKSUMS.json; else, computed when asked,
    of its arrays)."""
    cheap = ckpt_lib.fingerprint(self.step_dir) if self.step_dir else None
    if cheap is not None:
      return cheap
    digest = hashlib.sha1()
    for name, value in sorted(flatten(self.state).items()):
      value = np.ascontiguousarray(value)
      digest.update(f"{name}:{value.dtype}:{value.shape}".encode())
      digest.update(value.tobytes())
    return digest.hexdigest()[:16]

  @property
  def method(self) -> str:
    return self.config.method

  @property
  def tower(self) -> str:
    return methods.traits(self.method).image_tower

  def params(self) -> dict:
    """The weights to transfer: the EMA weights when the run kept them."""
    return state_lib.eval_params(self.state)

  def tokenizer_path(self) -> str | None:
    spec = self.config.text.tokenizer if "text" in self.config else ""
    if not spec:
      return None
    if spec.startswith("train:"):
      return workdir_lib.Workdir(self.workdir).tokenizer
    return tokenizer.resolve(spec)


def workdir_of(checkpoints_dir: str) -> str:
  """The run's workdir of its checkpoints dir (or the path itself)."""
  return (
    os.path.dirname(checkpoints_dir)
    if os.path.basename(checkpoints_dir) == workdir_lib.CHECKPOINTS
    else checkpoints_dir
  )


def load_pretrained(path: str) -> Pretrained:
  """A pre-training workdir, its checkpoints/ dir or one checkpoints/<step> dir; of a workdir,
  the newest checkpoint that verifies and reads back."""
  directory, _ = ckpt_lib.find_checkpoint(path)
  workdir = workdir_of(directory)
  cfg_path = workdir_lib.Workdir(workdir).config
  if not paths.exists(cfg_path):
    raise ckpt_lib.CheckpointError(
      f"{path}: no config.json in {workdir} (the pre-training "
      f"run's config says which model and method made it)"
    )
  config = ml_collections.ConfigDict(paths.read_json(cfg_path)["config"])
  if config.method not in methods.METHODS:
    raise ckpt_lib.CheckpointError(
      f"{path}: method {config.method!r} has no image tower to "
      f"transfer (known: {', '.join(methods.known())})"
    )
  state, step = ckpt_lib.load_state(path)
  keep = {k: state[k] for k in ("params", "model_state", "ema_params") if k in state}
  return Pretrained(
    path=path,
    step=step,
    workdir=workdir,
    config=config,
    state=keep,
    step_dir=os.path.join(directory, str(step)),
  )


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = path_name(p)
    if prefix:
      if not name.startswith(prefix + "/"):
        continue
      name = name[len(prefix) + 1 :]
    out[name] = v
  return out


def _resample_positions(value: np.ndarray, shape: tuple) -> np.ndarray | None:
  """ViT/CLIP position embeddings at another resolution: (prefix + g*g, w) -> (prefix + h*h,
  w), bilinear on the grid. None when the shapes are not two such grids."""
  if value.ndim != 2 or len(shape) != 2 or value.shape[1] != shape[1]:
    return None
  for prefix in (1, 0):
    g, h = (value.shape[0] - prefix) ** 0.5, (shape[0] - prefix) ** 0.5
    if g == int(g) and h == int(h) and g > 0 and h > 0:
      return np.asarray(resample_grid_embedding(jnp.asarray(value), int(h), int(h), prefix))
  return None


def load_by_name(
  target: dict,
  source: dict,
  *,
  prefix: str = "",
  keep: Sequence[str] = (),
  what: str = "checkpoint",
) -> tuple[dict, list[str]]:
  """Fills ``target`` (a pure-dict tree, e.g. fresh parameters) from ``source[prefix/...]`` by
  name. Leaves named in ``keep`` (prefixes, e.g. the new head) keep their target value; position
  embeddings of another grid size are resampled. Returns (tree, resampled names); raises
  CheckpointError listing every name or shape that does not match, and every source weight
  that would be dropped."""
  src = flatten(source, prefix)
  used, problems, resampled = set(), [], []

  def fill(path, leaf):
    name = path_name(path)
    if any(name == k or name.startswith(k + "/") for k in keep):
      return leaf
    if name not in src:
      problems.append(f"{name}: not in the {what}")
      return leaf
    used.add(name)
    value = np.asarray(src[name])
    if value.shape != tuple(leaf.shape):
      if name.endswith("pos_embed"):
        r = _resample_positions(value, tuple(leaf.shape))
        if r is not None:
          resampled.append(f"{name} {value.shape} -> {tuple(leaf.shape)}")
          return r.astype(leaf.dtype)
      problems.append(f"{name}: {what} {value.shape} vs model {tuple(leaf.shape)}")
      return leaf
    return value.astype(leaf.dtype)

  out = jax.tree_util.tree_map_with_path(fill, target)
  dropped = sorted(
    n
    for n in set(src) - used
    if not any(n == h or n.startswith(h + "/") for h in PRETRAINING_HEADS)
  )
  problems += [f"{n}: in the {what}, not in this model" for n in dropped]
  if problems:
    more = f" (and {len(problems) - 12} more)" if len(problems) > 12 else ""
    raise ckpt_lib.CheckpointError(
      f"the {what} does not fit the model ({len(problems)} mismatches): "
      + "; ".join(problems[:12])
      + more
    )
  return out, resampled


# ----------------------------------------------------------------------------- the model


class Classifier(nnx.Module):
  """An image tower and a linear head on its features. CLIP image towers keep their projection
  to the shared embedding and L2-normalise it, so a head of (scaled) class-name text
  embeddings reproduces zero-shot classification exactly."""

  def __init__(
    self,
    backbone,
    num_classes: int,
    *,
    projection_dim: int = 0,
    normalize: bool = False,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    self.backbone = backbone
    width = backbone.num_features
    self.projection = nnx.Param(jnp.zeros((width, projection_dim))) if projection_dim else None
    self.normalize = normalize
    dim = projection_dim or width
    self.head = nnx.Linear(
      dim, num_classes, kernel_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs
    )
    self.num_features = dim

  def features(self, x, train: bool = False, rngs=None, mask=None):
    """``mask``: per-example weights of the backbone's batch statistics (a padded batch's
    padding 0), passed only when given (a backbone without batch statistics may not take it)."""
    extra = {} if mask is None else {"mask": mask}
    _, out = self.backbone(x, train=train, rngs=rngs, **extra)
    f = out["pre_logits"]
    if self.projection is not None:
      f = f @ self.projection.get_value().astype(f.dtype)
    if self.normalize:
      f = losses.l2_normalize(f).astype(f.dtype)
    return f

  def __call__(self, x, train: bool = False, rngs=None, mask=None):
    f = self.features(x, train, rngs, mask)
    return self.head(f), {"pre_logits": f}


def backbone_spec(model: str, model_kwargs: dict, pre: Pretrained | None) -> tuple[str, dict]:
  """(model name, kwargs) of the image tower: the pre-trained run's unless the transfer config
  names one (``model``); its ``model_kwargs`` override (e.g. a ViT's image_size)."""
  name = model or (pre.config.model if pre else "")
  if not name:
    raise ValueError("config.model: empty, and no pre-trained run to take it from")
  kwargs = dict(pre.config.model_kwargs) if pre and name == pre.config.model else {}
  kwargs.update(model_kwargs)
  if pre is not None and methods.has_text_tower(pre.method):
    if models.parse(name)[1].get("version") == "clip":
      kwargs.setdefault("embed_dim", pre.config.clip.embed_dim)
  return name, kwargs


FEATURE_NORMS = ("auto", "l2", "none")


def normalizes_features(feature_norm: str, pre_method: str | None) -> bool:
  """Whether the head sees L2-normalised features (``config.feature_norm``): 'auto' for
  CLIP/SLIP (their text head needs it) and SimCLR (the authors' zero head on normalised
  features), 'l2' always, 'none' never."""
  if feature_norm not in FEATURE_NORMS:
    raise ValueError(f"config.feature_norm={feature_norm!r}: one of {', '.join(FEATURE_NORMS)}")
  if feature_norm == "auto":
    return methods.traits(pre_method).normalized_features
  return feature_norm == "l2"


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def computing_in(model: nnx.Module, dtype) -> nnx.Module:
  """``model`` with every module computing in ``dtype`` (parameters as stored, cast where
  used: what an autocast does). Call inside the traced function that merged the model: the
  change is to that trace's copy, never to the stored graph."""
  for _, m in model.iter_modules():
    if getattr(m, "dtype", None) is not None:
      m.dtype = dtype
  return model


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
  """What a transfer run's classifier computes with, resolved once from its config at the
  run's entry (``session.resolve``; as ``train.RunSpec`` is for a run's length and cadence):
  the modules below it take these explicit values, never the config."""

  model: str  # '' = the pre-trained run's
  num_classes: int
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  dtype: str = "float32"  # training compute
  eval_dtype: str = ""  # evaluation and frozen features ('' = dtype)
  feature_norm: str = "auto"
  mixup_alpha: float = 0.0
  label_smoothing: float = 0.0

  @classmethod
  def of(cls, config) -> ClassifierSpec:
    """From a resolved transfer config (its class count filled in)."""
    return cls(
      model=config.model,
      num_classes=int(config.num_classes),
      model_kwargs=config.model_kwargs.to_dict(),
      dtype=config.dtype,
      eval_dtype=config.get("eval_dtype", ""),
      feature_norm=config.feature_norm,
      mixup_alpha=float(config.mixup_alpha),
      label_smoothing=float(config.label_smoothing),
    )


class TransferMethod(methods.Method):
  """Supervised fine-tuning of a Classifier (softmax cross-entropy, label smoothing, MixUp);
  plugs into the Trainer like a pre-training method. Built from a :class:`ClassifierSpec`."""

  name = "transfer"
  traits = methods.Traits(image_tower="backbone", needs_labels=True)
  batch_keys = ("image", "label")

  def __init__(self, spec: ClassifierSpec, pre: Pretrained | None):
    super().__init__({"dtype": spec.dtype}, {"num_classes": spec.num_classes})
    self.spec, self.pre, self.num_classes = spec, pre, spec.num_classes
    self.model_name, self.model_kwargs = backbone_spec(spec.model, spec.model_kwargs, pre)
    is_clip = pre is not None and methods.has_text_tower(pre.method)
    has_proj = is_clip and pre.params().get("image_projection") is not None
    self.projection_dim = pre.config.clip.embed_dim if has_proj else 0
    self.normalize = normalizes_features(spec.feature_norm, pre.method if pre else None)
    self.mixup = spec.mixup_alpha
    self.label_smoothing = spec.label_smoothing
    self.eval_dtype = COMPUTE_DTYPES[spec.eval_dtype] if spec.eval_dtype else self.dtype

  def program_key(self) -> tuple:
    """What the classifier's programs compute with (see methods.Method.program_key): every
    transfer run of an equal key in a process shares them."""
    kwargs = json.dumps(self.model_kwargs, sort_keys=True, default=str)
    return (
      "transfer",
      self.model_name,
      kwargs,
      self.projection_dim,
      self.normalize,
      self.num_classes,
      str(jnp.dtype(self.dtype)),
      str(jnp.dtype(self.eval_dtype)),
      self.mixup,
      self.label_smoothing,
    )

  def create_model(self, rngs: nnx.Rngs) -> Classifier:
    backbone = models.create(
      self.model_name, num_classes=0, rngs=rngs, dtype=self.dtype, **self.model_kwargs
    )
    return Classifier(
      backbone,
      self.num_classes,
      projection_dim=self.projection_dim,
      normalize=self.normalize,
      dtype=self.dtype,
      rngs=rngs,
    )

  def predictions(self):
    return {"metrics": self.eval_metrics, "features": self.features}

  def _evaluating(self, model):
    return model if self.eval_dtype == self.dtype else computing_in(model, self.eval_dtype)

  def features(self, model, images):
    """Frozen features (linear probes, LP-FT's probe, zero-shot), computed in ``eval_dtype``."""
    model = self._evaluating(model)
    return model.features(images.astype(self.eval_dtype)).astype(jnp.float32)

  def loss(self, model, batch, rngs=None):
    """Cross-entropy over the batch; a batch padded to a fixed shape (``_mask``: 1 for its real
    rows, 0 for padding) averages over its real rows, and its padding is left out of the
    backbone's batch statistics, so it trains as the batch of its real rows."""
    x, y = batch["image"].astype(self.dtype), jax.nn.one_hot(batch["label"], self.num_classes)
    mask = batch.get(pipeline.MASK)
    if self.label_smoothing:
      y = optax.smooth_labels(y, self.label_smoothing)
    if self.mixup and rngs is not None:  # MixUp (BiT: alpha 0.1): one lambda per batch
      lam = jax.random.beta(rngs.dropout(), self.mixup, self.mixup)
      x = (lam * x + (1 - lam) * x[::-1]).astype(self.dtype)
      y = lam * y + (1 - lam) * y[::-1]
    logits, _ = model(x, train=True, rngs=rngs, mask=mask)
    logits = logits.astype(jnp.float32)
    per = optax.softmax_cross_entropy(logits, y)
    correct = (logits.argmax(-1) == batch["label"]).astype(jnp.float32)
    if mask is None:
      return per.mean(), {"accuracy": correct.mean()}
    w = mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    return jnp.sum(per * w) / n, {"accuracy": jnp.sum(correct * w) / n}

  def eval_metrics(self, model, batch):
    model = self._evaluating(model)
    logits = model(batch["image"].astype(self.eval_dtype))[0].astype(jnp.float32)
    return {"accuracy": (logits.argmax(-1) == batch["label"]).astype(jnp.float32)}


def initial_weights(
  method: TransferMethod,
  params: dict,
  model_state: dict,
  head: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict, dict]:
  """Fresh (params, model_state) host trees with the pre-trained image tower loaded by name
  and the head set to ``head`` (kernel, bias) or left at zero."""
  pre = method.pre
  params = jax.tree.map(np.asarray, params)
  model_state = jax.tree.map(np.asarray, model_state)
  if pre is not None:
    source = pre.params()
    tower = pre.tower
    loaded, resampled = load_by_name(
      params["backbone"], source, prefix=tower, what=f"{pre.method} checkpoint {pre.path}"
    )
    params = {**params, "backbone": loaded}
    if method.projection_dim:
      params["projection"] = np.asarray(source["image_projection"], np.float32)
    if model_state.get("backbone"):
      ms, _ = load_by_name(
        model_state["backbone"],
        pre.state.get("model_state", {}),
        prefix=tower,
        what=f"{pre.method} checkpoint {pre.path} (statistics)",
      )
      model_state = {**model_state, "backbone": ms}
    if resampled:
      log_lib.info("resampled " + ", ".join(resampled))
  if head is not None:
    k, b = head
    params = {
      **params,
      "head": {"kernel": np.asarray(k, np.float32), "bias": np.asarray(b, np.float32)},
    }
  return params, model_state


def put_like(host_tree, like_tree):
  """Host arrays -> global arrays with the shardings of ``like_tree`` (every process holds the
  full host value, so this works across hosts)."""

  def put(h, like):
    h = np.asarray(h, like.dtype)
    return jax.make_array_from_callback(like.shape, like.sharding, lambda idx: h[idx])

  return jax.tree.map(put, host_tree, like_tree)


def restore_model(pre: Pretrained, tokenizer=None):
  """The pre-training run's whole model, host-side: (method, graphdef, params, model_state)
  (``nnx.merge(graphdef, params, model_state)`` is the module). ``tokenizer``: the run's, for
  image-text methods."""
  info = {
    "tokenizer": tokenizer,
    "num_classes": pre.config.get("num_classes") or 0,
    "class_names": None,
  }
  if methods.traits(pre.method).needs_labels and not info["num_classes"]:
    head = flatten(pre.params()).get("head/bias")
    info["num_classes"] = 0 if head is None else int(head.shape[0])
  method = methods.get(pre.method, pre.config, info)
  abstract = nnx.eval_shape(lambda: method.create_model(nnx.Rngs(0)))
  graphdef, abs_params, abs_rest = nnx.split(abstract, nnx.Param, ...)
  params, _ = load_by_name(abs_params.to_pure_dict(), pre.params(), what="checkpoint")
  rest = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abs_rest.to_pure_dict())
  if pre.state.get("model_state"):
    rest, _ = load_by_name(rest, pre.state["model_state"], what="checkpoint")
  return method, graphdef, params, rest


# ----------------------------------------------------------------------------- CLIP text head


def text_head(
  pre: Pretrained, class_names: Sequence[str], templates, underscores: bool = False
) -> tuple[np.ndarray, np.ndarray]:
  """CLIP's zero-shot classifier as a head: kernel (dim, classes) = logit_scale x the
  prompt-ensembled, normalised text embeddings of the class names; bias 0."""
  path = pre.tokenizer_path()
  if path is None:
    raise ValueError(f"{pre.path}: a {pre.method} run without a tokenizer")
  tok = tokenizer.load(path)
  method, graphdef, params, rest = restore_model(pre, tok)
  names = sources.prompt_names(class_names, underscores)
  temps = templates_of(templates)
  tokens = tok.tokenize([t.format(n) for n in names for t in temps], pre.config.text.context_length)

  @jax.jit
  def encode(params, rest, tokens):
    return method.encode_text(nnx.merge(graphdef, params, rest), tokens)

  emb = np.concatenate(
    [np.asarray(encode(params, rest, tokens[i : i + 256])) for i in range(0, len(tokens), 256)]
  )
  emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
  emb = emb.reshape(len(names), len(temps), -1).mean(1)
  emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
  scale = min(float(np.exp(params["logit_scale"])), float(pre.config.clip.logit_scale_max))
  return (scale * emb.T).astype(np.float32), np.zeros(len(names), np.float32)


# ----------------------------------------------------------------------------- linear probes


def ridge_probe(train_x, train_y, val_x, val_y, num_classes: int, l2_grid: Sequence[float]):
  """Closed-form ridge (+-1 targets, unpenalised bias) for each L2 in the grid, scaled by the
  features' mean squared norm (so one grid fits every model); picks the best on validation.
  Returns (kernel, bias, chosen l2, {l2: val accuracy})."""
  scale = float(np.mean(np.sum(np.asarray(train_x, np.float64) ** 2, -1))) or 1.0
  scores, fits = {}, {}
  solved = ridge_fit_grid(train_x, train_y, num_classes, [l2 * scale for l2 in l2_grid])
  for l2, (w, b) in zip(l2_grid, solved):  # one eigendecomposition serves the whole grid
    fits[l2] = (w, b)
    scores[l2] = float(np.mean(np.argmax(val_x @ w + b, -1) == val_y))
  best = max(l2_grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger regulariser
  w, b = fits[best]
  return w.astype(np.float32), b.astype(np.float32), best, scores


def sgd_probe(
  train_x,
  train_y,
  val_x,
  val_y,
  num_classes: int,
  wd_grid: Sequence[float],
  *,
  steps: int = 500,
  lr: float = 0.1,
  batch: int = 256,
  seed: int = 0,
):
  """Softmax regression on frozen features by SGD with momentum and a cosine schedule, one run
  per weight decay in the grid; picks the best on validation. Same return as ridge_probe."""
  x = jnp.asarray(train_x, jnp.float32)
  y = jnp.asarray(train_y)
  x_mean = x.mean(0)
  x_scale = jnp.sqrt(jnp.mean(jnp.sum((x - x_mean) ** 2, -1))) + 1e-12

  def fit(wd):
    tx = optax.chain(
      optax.add_decayed_weights(wd), optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=0.9)
    )
    p = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}

    def loss(p, xb, yb):
      logits = ((xb - x_mean) / x_scale) @ p["w"] + p["b"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def step(carry, key):
      p, s = carry
      idx = jax.random.randint(key, (min(batch, x.shape[0]),), 0, x.shape[0])
      g = jax.grad(loss)(p, x[idx], y[idx])
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), jax.random.split(jax.random.key(seed), steps))
    w = p["w"] / x_scale  # fold the standardisation into the head
    return w, p["b"] - x_mean @ w

  fit = jax.jit(fit)
  scores, fits = {}, {}
  for wd in wd_grid:
    w, b = (np.asarray(a) for a in fit(wd))
    fits[wd] = (w, b)
    scores[wd] = float(np.mean(np.argmax(np.asarray(val_x) @ w + b, -1) == val_y))
  best = max(wd_grid, key=lambda v: (scores[v], v))
  w, b = fits[best]
  return w.astype(np.float32), b.astype(np.float32), best, scores


def epoch_batches(n: int, batch: int, epochs: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, mask), each (steps, batch): ``epochs`` passes over ``n`` examples, each epoch a
  fresh seeded permutation cut into batches of ``batch`` (at most ``n``), the short last batch
  of an epoch padded and masked out; steps = round(epochs x ceil(n / batch))."""
  batch = max(1, min(int(batch), n))
  per_epoch = -(-n // batch)
  steps = max(1, int(round(float(epochs) * per_epoch)))
  rng = np.random.default_rng([seed, 41])
  order = np.concatenate([rng.permutation(n) for _ in range(-(-steps // per_epoch))])
  idx = np.zeros((steps, batch), np.int32)
  mask = np.zeros((steps, batch), np.float32)
  for s in range(steps):
    e, b = divmod(s, per_epoch)
    rows = order[e * n + b * batch : e * n + min((b + 1) * batch, n)]
    idx[s, : len(rows)], mask[s, : len(rows)] = rows, 1.0
  return idx, mask


def adamw_probe(
  train_x,
  train_y,
  val_x,
  val_y,
  num_classes: int,
  *,
  epochs: float,
  lr: float,
  batch: int,
  weight_decay: float,
  warmup_steps: int,
  clip_norm: float,
  seed: int = 0,
  init: tuple | None = None,
):
  """The authors' linear probe: a softmax head (weight and bias from ``init``, else zero; they
  start CLIP heads from the zero-shot classifier) on frozen
  features, trained by AdamW (decoupled weight decay on weight and bias) for ``epochs`` passes
  over the shuffled training set in batches of ``batch`` (the last one smaller), linear
  warm-up for ``warmup_steps`` (uncapped) then cosine to 0, the gradient clipped to
  ``clip_norm`` (0: off). Returns (kernel, bias, lr, {lr: val accuracy}) like ridge_probe."""
  x = np.asarray(train_x, np.float32)
  idx, mask = epoch_batches(len(x), batch, epochs, seed)
  steps, batch = idx.shape
  tx, _ = optim.build(
    ml_collections.ConfigDict(
      {
        "name": "adamw",
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "decay": "all",
        "grad_clip_norm": float(clip_norm),
        "warmup_steps": int(warmup_steps),
        "schedule": "cosine",
      }
    ),
    steps,
  )
  xs, ys = jnp.asarray(x), jnp.asarray(train_y)

  @jax.jit
  def fit(idx, mask, w0, b0):
    p = {"w": w0, "b": b0}

    def loss(p, xb, yb, mb):
      logits = xb @ p["w"] + p["b"]
      per = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
      return jnp.sum(per * mb) / jnp.sum(mb)

    def step(carry, sm):
      p, s = carry
      i, m = sm
      g = jax.grad(loss)(p, xs[i], ys[i], m)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), (idx, mask))
    return p["w"], p["b"]

  w0, b0 = (
    (np.asarray(init[0], np.float32), np.asarray(init[1], np.float32))
    if init is not None
    else (np.zeros((x.shape[1], num_classes), np.float32), np.zeros(num_classes, np.float32))
  )
  w, b = (
    np.asarray(a, np.float32)
    for a in fit(jnp.asarray(idx), jnp.asarray(mask), jnp.asarray(w0), jnp.asarray(b0))
  )
  score = float(np.mean(np.argmax(np.asarray(val_x) @ w + b, -1) == val_y))
  return w, b, float(lr), {float(lr): score}


# ----------------------------------------------------------------------------- BiT-HyperRule


def bit_hyperrule(num_examples: int, image_size: int | None = None) -> dict[str, Any]:
  """BiT's fine-tuning rule (Kolesnikov et al., 2020) from the training set's size and image
  size: SGD momentum 0.9, lr 0.003, batch 512, no weight decay, zero-init head; < 20k examples:
  500 steps (warm-up 100, /10 at 200, 300, 400); < 500k: 10k steps (warm-up 500, decays at 3k,
  6k, 9k); else 20k steps (decays at 6k, 12k, 18k); MixUp 0.1 from 20k examples; images below
  96x96 resized to 160 and cropped to 128, else 512 and 480."""
  if num_examples < 20_000:
    steps, warmup, bounds = 500, 100, (200, 300, 400)
  elif num_examples < 500_000:
    steps, warmup, bounds = 10_000, 500, (3000, 6000, 9000)
  else:
    steps, warmup, bounds = 20_000, 500, (6000, 12000, 18000)
  small = image_size is not None and image_size < 96
  return {
    "total_steps": steps,
    "batch_size": 512,
    "mixup_alpha": 0.1 if num_examples >= 20_000 else 0.0,
    "resize": 160 if small else 512,
    "crop": 128 if small else 480,
    "optimizer": {
      "name": "sgd",
      "lr": 0.003,
      "momentum": 0.9,
      "weight_decay": 0.0,
      "schedule": "step",
      "warmup_steps": warmup,
      "boundaries": bounds,
      "decay_factor": 0.1,
    },
  }


# ----------------------------------------------------------------------------- results


def append_results(rows: Sequence[dict], *files: str) -> None:
  """Appends JSON lines (one write per file, so concurrent runs do not interleave rows), each
  row once: rows whose ``row_id`` a file already holds are not written again. A file on an
  object store (no append) is rewritten whole with the new rows added: concurrent writers of
  one such file would lose rows, so runs that go on in parallel keep their own files (the
  study's per-run done.json, from which it derives its table)."""
  for path in files:
    if not path:
      continue
    old = paths.read_text(path) if paths.exists(path) else ""
    ids = {r.get("row_id") for r in _parse_rows(old.splitlines(), path) if isinstance(r, dict)}
    new = [r for r in rows if r.get("row_id") is None or r["row_id"] not in ids]
    if not new:
      continue
    text = "".join(json.dumps(r, sort_keys=True, default=paths.json_default) + "\n" for r in new)
    if paths.is_url(path):
      paths.write_text(path, old + text)
      continue
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
      f.write(text)


def read_results(path: str) -> list[dict]:
  rows = []
  if paths.isdir(path):
    files = [
      os.path.join(path, rel)
      for rel in paths.files_under(path)
      if paths.basename(rel).startswith("results") and rel.endswith(".jsonl")
    ]
  else:
    files = [path] if paths.exists(path) else []
  for fp in files:
    with paths.open(fp) as f:
      rows += _parse_rows(f, fp)
  return rows


def _parse_rows(lines, name: str) -> list[dict]:
  rows = []
  for i, line in enumerate(lines):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # a line cut by a crash: skip it, say where
        print(f"warning: {name}:{i + 1}: not JSON, skipped")
  return rows


def now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
