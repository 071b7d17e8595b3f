"""Contrastive losses over the global batch.

The training step is jitted over global, sharded arrays, so these functions see every
device's (and every host's) embeddings: the similarity matrices below are global, XLA inserts
the all-gathers, and gradients flow through them exactly as on one device. Nothing here calls
a collective by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def l2_normalize(x, eps: float = 1e-6):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def nt_xent(z1, z2, temperature: float = 0.1):
  """SimCLR's NT-Xent: each of the 2N views must find its partner among the other 2N - 1.

  Returns (loss, accuracy of finding the partner)."""
  z = l2_normalize(jnp.concatenate([z1, z2], axis=0))
  n = z1.shape[0]
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)  # never oneself
  partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(0, n)])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, partner).mean()
  acc = (jnp.argmax(logits, axis=-1) == partner).mean()
  return loss, acc


def clip_softmax(image_emb, text_emb, logit_scale):
  """CLIP's symmetric cross-entropy: image i matches text i among all N texts, and back.

  ``logit_scale`` is the (already exponentiated, clamped) inverse temperature."""
  img, txt = l2_normalize(image_emb), l2_normalize(text_emb)
  logits = logit_scale * img @ txt.T
  labels = jnp.arange(img.shape[0])
  li = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  lt = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  acc = 0.5 * ((jnp.argmax(logits, -1) == labels).mean() + (jnp.argmax(logits, 0) == labels).mean())
  return 0.5 * (li + lt), acc


def siglip_sigmoid(image_emb, text_emb, logit_scale, logit_bias):
  """SigLIP's pairwise sigmoid loss: every pair is a binary problem (matching or not),
  summed over pairs and averaged over images."""
  img, txt = l2_normalize(image_emb), l2_normalize(text_emb)
  logits = logit_scale * img @ txt.T + logit_bias
  n = img.shape[0]
  signs = 2.0 * jnp.eye(n) - 1.0
  loss = -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / n
  acc = (jnp.argmax(logits, -1) == jnp.arange(n)).mean()
  return loss, acc
