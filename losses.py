"""Losses on predicted probabilities, selectable with --label_loss (SPEC.md 6).

All take predictions in [0, 1] (the models expose probabilities, not logits) and float labels
[B, V] and return the mean over the batch of a per-video loss.
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

  def calculate_loss(self, predictions, labels, **unused_params):
    epsilon = 1e-5
    labels = tf.cast(labels, predictions.dtype)
    cross_entropy = (self.alpha * labels * tf.math.log(predictions + epsilon)
                     + (1 - self.alpha) * (1 - labels) * tf.math.log(1 - predictions + epsilon))
    return tf.reduce_mean(tf.reduce_sum(-2 * cross_entropy, axis=1))


class HingeLoss(BaseLoss):
  """The starter code's hinge loss on scores mapped to [-1, 1]."""

  def __init__(self, b: float = 1.0, **unused):
    self.b = float(b)

  def calculate_loss(self, predictions, labels, **unused_params):
    labels = tf.cast(labels, predictions.dtype)
    signed_labels = 2 * labels - 1
    signed_predictions = 2 * predictions - 1
    hinge = tf.maximum(0.0, self.b - signed_labels * signed_predictions)
    return tf.reduce_mean(tf.reduce_sum(hinge, axis=1))


class SoftmaxLoss(BaseLoss):
  """The starter code's softmax loss: cross entropy against the label distribution
  (labels normalized to sum 1), with the predictions normalized to sum 1."""

  def calculate_loss(self, predictions, labels, **unused_params):
    epsilon = 1e-7
    labels = tf.cast(labels, predictions.dtype)
    label_sums = tf.maximum(tf.reduce_sum(labels, axis=1, keepdims=True), epsilon)
    norm_labels = labels / label_sums
    softmax_predictions = predictions / tf.maximum(
        tf.reduce_sum(predictions, axis=1, keepdims=True), epsilon)
    return tf.reduce_mean(-tf.reduce_sum(norm_labels * tf.math.log(softmax_predictions + epsilon),
                                         axis=1))


LOSSES = {cls.__name__: cls for cls in (CrossEntropyLoss, HingeLoss, SoftmaxLoss)}


def get_loss(name: str, alpha: float = 0.5) -> BaseLoss:
  if name not in LOSSES:
    raise InputError("unknown --label_loss %r; valid: %s" % (name, ", ".join(sorted(LOSSES))))
  return CrossEntropyLoss(alpha) if name == "CrossEntropyLoss" else LOSSES[name]()
