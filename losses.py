"""Losses on predicted probabilities, selectable with --label_loss (the original's losses.py).

All take predictions in [0, 1] (the models expose probabilities, not logits) and float labels
[B, V] and return the mean over the batch of a per-video loss. Optional label_weights [B, V]
(segment-rated data: 1 for the rated classes of a segment, 0 for the unknown others) weigh
each class's term, so that unrated classes are not pushed towards 0.
"""
import tensorflow as tf

from utils import InputError


class BaseLoss:
  def calculate_loss(self, predictions, labels, **unused_params):
    raise NotImplementedError


class CrossEntropyLoss(BaseLoss):
  """WILLOW's loss: mean_b sum_c -2 [a y ln(p + eps) + (1 - a)(1 - y) ln(1 - p + eps)].

  eps is 1e-5 (the original wrote 10e-6); alpha = 0.5 is the ordinary binary cross entropy
  summed over classes.
  """

  def __init__(self, alpha: float = 0.5):
    self.alpha = float(alpha)

  def calculate_loss(self, predictions, labels, label_weights=None, **unused_params):
    epsilon = 1e-5
    labels = tf.cast(labels, predictions.dtype)
    cross_entropy = (self.alpha * labels * tf.math.log(predictions + epsilon)
                     + (1 - self.alpha) * (1 - labels) * tf.math.log(1 - predictions + epsilon))
    return tf.reduce_mean(tf.reduce_sum(-2 * _weighted(cross_entropy, label_weights), axis=1))


def _weighted(per_class, label_weights):
  if label_weights is None:
    return per_class
  return per_class * tf.cast(label_weights, per_class.dtype)


class HingeLoss(BaseLoss):
  """The starter code's hinge loss: sum_c max(0, b - (2y - 1) p), averaged over the batch."""

  def __init__(self, b: float = 1.0):
    self.b = float(b)

  def calculate_loss(self, predictions, labels, label_weights=None, **unused_params):
    signed_labels = 2 * tf.cast(labels, predictions.dtype) - 1
    hinge = tf.maximum(0.0, self.b - signed_labels * predictions)
    return tf.reduce_mean(tf.reduce_sum(_weighted(hinge, label_weights), axis=1))


class SoftmaxLoss(BaseLoss):
  """The starter code's softmax loss: cross entropy between the labels normalized to sum 1
  and softmax(predictions) (the predictions taken as logits, as the starter did). With label
  weights, the softmax runs over the rated classes only."""

  def calculate_loss(self, predictions, labels, label_weights=None, **unused_params):
    labels = tf.cast(labels, predictions.dtype)
    if label_weights is not None:
      rated = tf.cast(label_weights, predictions.dtype) > 0
      labels = tf.where(rated, labels, tf.zeros([], labels.dtype))
      # exp(-1e9) is an exact 0 in the softmax; a row without rated classes has no labels.
      predictions = tf.where(rated, predictions, tf.constant(-1e9, predictions.dtype))
    label_sums = tf.maximum(tf.reduce_sum(labels, axis=1, keepdims=True), 1e-7)
    log_softmax = tf.nn.log_softmax(predictions)
    return tf.reduce_mean(-tf.reduce_sum(labels / label_sums * log_softmax, axis=1))


LOSSES = {cls.__name__: cls for cls in (CrossEntropyLoss, HingeLoss, SoftmaxLoss)}


def get_loss(name: str, alpha: float = 0.5) -> BaseLoss:
  if name not in LOSSES:
    raise InputError("unknown --label_loss %r; valid: %s" % (name, ", ".join(sorted(LOSSES))))
  return CrossEntropyLoss(alpha) if name == "CrossEntropyLoss" else LOSSES[name]()
