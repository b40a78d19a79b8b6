"""Evaluation metrics of the YouTube-8M challenge, in numpy (the original's eval_util.py).

Hit@1, PERR (precision at equal recall rate), GAP (global average precision
over each video's top-k predictions) and per-class AP/MAP, as per-batch
functions and as the EvaluationMetrics accumulator used by eval.py.

Inputs are 'batch' x 'num_classes' matrices of scores and 0/1 labels; a label
counts as positive when it is > 0.
"""

import numbers

import numpy as np

import average_precision_calculator


def flatten(l):
  """Concatenates a sequence of sequences into one list."""
  return [item for sublist in l for item in sublist]


def _as_matrices(predictions, actuals):
  predictions = np.asarray(predictions)
  actuals = np.asarray(actuals)
  if predictions.ndim != 2 or predictions.shape != actuals.shape:
    raise ValueError("predictions and actuals must be matrices of the same "
                     "shape, got %s and %s"
                     % (predictions.shape, actuals.shape))
  return predictions, actuals


def _check_positive_int(name, value):
  if (not isinstance(value, numbers.Integral) or isinstance(value, bool) or
      value <= 0):
    raise ValueError("%s must be a positive integer, got %r." % (name, value))


def _sequential_sum(values, start=0.0):
  """start + v0 + v1 + ... added left to right (batch-split invariant)."""
  if len(values) == 0:
    return float(start)
  return float(np.cumsum(np.concatenate([[start], values]))[-1])


def _hits_at_one(predictions, actuals):
  # np.argmax returns the lowest index among tied maxima.
  top_prediction = np.argmax(predictions, axis=1)
  return actuals[np.arange(actuals.shape[0]), top_prediction]


def calculate_hit_at_one(predictions, actuals):
  """Mean over videos of the label of the top-scoring class.

  Args:
    predictions: 'batch' x 'num_classes' scores.
    actuals: 'batch' x 'num_classes' labels.

  Returns:
    float; tied top scores resolve to the lowest class index. 0.0 for an
    empty batch.
  """
  predictions, actuals = _as_matrices(predictions, actuals)
  if actuals.shape[0] == 0:
    return 0.0
  return float(np.average(_hits_at_one(predictions, actuals)))


def _perr_per_video(predictions, actuals):
  """Precision at equal recall rate of each video that has a positive label.

  Returns:
    (precisions, labelled): float64 array of the precisions, in video order,
    of the videos selected by the boolean mask `labelled`.
  """
  positive = actuals > 0
  num_labels = np.count_nonzero(positive, axis=1)
  precision = np.zeros(actuals.shape[0])
  # Rows are grouped by their number of labels k so that one argpartition
  # call serves the whole group; it selects the same k classes per row as a
  # row-by-row argpartition (the original's choice among ties at the cut).
  for k in np.unique(num_labels[num_labels > 0]):
    rows = np.flatnonzero(num_labels == k)
    top = np.argpartition(predictions[rows], -k, axis=1)[:, -k:]
    correct = (np.take_along_axis(positive[rows], top, axis=1) &
               (np.take_along_axis(predictions[rows], top, axis=1) > 0))
    precision[rows] = np.count_nonzero(correct, axis=1) / k
  labelled = num_labels > 0
  return precision[labelled], labelled


def calculate_precision_at_equal_recall_rate(predictions, actuals):
  """Mean PERR over the videos that have at least one positive label.

  For a video with k positive labels, its k highest-scoring classes are taken
  (ties at the cut are resolved by np.argpartition); its precision is the
  fraction of them that are positive and have a score > 0.

  Fixed defect: the original scored a video without positive labels 0 and
  still counted it in the average, so label-less videos dragged PERR down.
  They are excluded here (PERR is undefined for them). A batch without any
  labelled video yields 0.0.

  Args:
    predictions: 'batch' x 'num_classes' scores.
    actuals: 'batch' x 'num_classes' labels.

  Returns:
    float, the average PERR of the labelled videos.
  """
  predictions, actuals = _as_matrices(predictions, actuals)
  precisions, _ = _perr_per_video(predictions, actuals)
  if precisions.size == 0:
    return 0.0
  return _sequential_sum(precisions) / precisions.size


def _top_k_pairs(predictions, actuals, k):
  """Each video's k best (class, score, label) triples, video-major, flat."""
  top = np.argpartition(predictions, -k, axis=1)[:, -k:]
  scores = np.take_along_axis(predictions, top, axis=1)
  labels = np.take_along_axis(actuals, top, axis=1)
  return top.reshape(-1), scores.reshape(-1), labels.reshape(-1)


def _group_by_class(classes, *columns):
  """Stable regrouping of flat columns by class (video order kept per class)."""
  order = np.argsort(classes, kind="stable")
  return tuple(column[order] for column in columns)


def top_k_by_class(predictions, labels, k=20):
  """Keeps each video's top k predictions and regroups them by class.

  Args:
    predictions: 'batch' x 'num_classes' scores.
    labels: 'batch' x 'num_classes' labels.
    k: positive integer; min(k, num_classes) predictions are kept per video
      (chosen by np.argpartition, so ties at the cut are arbitrary but fixed).

  Returns:
    (class_predictions, class_labels, class_positives): two lists of
    num_classes 1-D arrays holding, for each class, the retained scores and
    their labels in video order, and a list of num_classes ints, the number
    of positive labels of each class over the WHOLE batch (retained or not),
    which the recall of AP must count.

  Raises:
    ValueError: k is not a positive integer or the inputs are not matrices of
      the same shape.
  """
  _check_positive_int("k", k)
  predictions, labels = _as_matrices(predictions, labels)
  num_classes = predictions.shape[1]
  classes, scores, kept_labels = _top_k_pairs(
      predictions, labels, min(k, num_classes))
  scores, kept_labels = _group_by_class(classes, scores, kept_labels)
  bounds = np.cumsum(np.bincount(classes, minlength=num_classes))[:-1]
  positives = np.count_nonzero(labels > 0, axis=0)
  return (np.split(scores, bounds), np.split(kept_labels, bounds),
          positives.tolist())


def calculate_gap(predictions, actuals, top_k=20):
  """Global average precision of the batch's per-video top_k predictions.

  All retained (score, label) pairs of all classes form one ranked list; the
  number of positives P is the total number of positive labels in the batch,
  retrieved or not.

  Args:
    predictions: 'batch' x 'num_classes' scores.
    actuals: 'batch' x 'num_classes' labels.
    top_k: positive integer, predictions kept per video.

  Returns:
    float, the GAP (0.0 when the batch has no positive label).
  """
  _check_positive_int("top_k", top_k)
  predictions, actuals = _as_matrices(predictions, actuals)
  classes, scores, labels = _top_k_pairs(
      predictions, actuals, min(top_k, predictions.shape[1]))
  # Class-major order (as the original flattened its per-class lists); it
  # only matters for how tied scores are permuted.
  scores, labels = _group_by_class(classes, scores, labels)
  return average_precision_calculator.AveragePrecisionCalculator.ap_at_n(
      scores, labels, n=None,
      total_num_positives=int(np.count_nonzero(actuals > 0)))


class EvaluationMetrics(object):
  """Accumulates Hit@1, PERR, loss, per-class AP and GAP over many batches.

  Only each video's top_k (class, score, label) triples and the per-class
  positive counts are stored; the APs are computed once, in get(). The
  result does not depend on how the videos were split into batches: the
  pairs are ranked in the same class-major, video-ordered sequence as a
  single calculate_gap / top_k_by_class call over all the videos.
  """

  def __init__(self, num_class, top_k):
    """Creates an empty accumulator.

    Args:
      num_class: positive integer, the number of classes.
      top_k: positive integer, predictions per video used by GAP and MAP
        (capped at num_class).

    Raises:
      ValueError: num_class or top_k is not a positive integer.
    """
    _check_positive_int("num_class", num_class)
    _check_positive_int("top_k", top_k)
    self.num_class = int(num_class)
    self.top_k = int(top_k)
    self.clear()

  def accumulate(self, predictions, labels, loss):
    """Adds one batch.

    Args:
      predictions: 'batch' x num_class scores.
      labels: 'batch' x num_class labels.
      loss: per-example losses of the batch (or their mean as a scalar).

    Returns:
      dict with the batch's "hit_at_one", "perr" (over its labelled videos,
      0.0 if none) and "loss" (mean).

    Raises:
      ValueError: the inputs are not 'batch' x num_class matrices.
    """
    predictions, labels = _as_matrices(predictions, labels)
    if predictions.shape[1] != self.num_class:
      raise ValueError("expected %d classes, got %d."
                       % (self.num_class, predictions.shape[1]))
    batch_size = labels.shape[0]
    if batch_size == 0:
      return {"hit_at_one": 0.0, "perr": 0.0, "loss": 0.0}

    hits = _hits_at_one(predictions, labels).astype(np.float64)
    precisions, _ = _perr_per_video(predictions, labels)
    loss = np.asarray(loss, dtype=np.float64)
    mean_loss = float(np.mean(loss))

    # Running sums are extended value by value so that they (and the
    # averages) come out identical whatever the batch split.
    self.sum_hit_at_one = _sequential_sum(hits, self.sum_hit_at_one)
    self.sum_perr = _sequential_sum(precisions, self.sum_perr)
    if loss.size == batch_size:
      self.sum_loss = _sequential_sum(loss.reshape(-1), self.sum_loss)
    else:
      self.sum_loss += mean_loss * batch_size
    self.num_examples += batch_size
    self.num_labelled_examples += precisions.size

    classes, scores, kept_labels = _top_k_pairs(
        predictions, labels, min(self.top_k, self.num_class))
    self._classes.append(classes.astype(np.int32))
    self._scores.append(scores)
    self._positive.append(kept_labels > 0)
    self._num_positives += np.count_nonzero(labels > 0, axis=0)

    return {
        "hit_at_one": float(np.average(hits)),
        "perr": (_sequential_sum(precisions) / precisions.size
                 if precisions.size else 0.0),
        "loss": mean_loss,
    }

  def get(self):
    """Metrics over everything accumulated since the last clear().

    Returns:
      dict with "avg_hit_at_one", "avg_perr" (over the videos that have a
      positive label), "avg_loss", "aps" (list of num_class per-class APs),
      "map" (mean of aps over ALL num_class classes, as the original: classes
      without positives or predictions count as 0, which deflates MAP),
      "gap" and "num_examples".

    Raises:
      ValueError: nothing was accumulated.
    """
    if self.num_examples <= 0:
      raise ValueError("no examples were accumulated.")
    if len(self._classes) > 1:
      self._classes = [np.concatenate(self._classes)]
      self._scores = [np.concatenate(self._scores)]
      self._positive = [np.concatenate(self._positive)]
    classes = self._classes[0]
    scores, positive = _group_by_class(
        classes, self._scores[0], self._positive[0])

    ap_at_n = average_precision_calculator.AveragePrecisionCalculator.ap_at_n
    gap = ap_at_n(scores, positive, n=None,
                  total_num_positives=int(self._num_positives.sum()))
    bounds = np.concatenate(
        [[0], np.cumsum(np.bincount(classes, minlength=self.num_class))])
    aps = []
    for c in range(self.num_class):
      start, end = bounds[c], bounds[c + 1]
      if start == end or self._num_positives[c] == 0:
        aps.append(0.0)
      else:
        aps.append(ap_at_n(scores[start:end], positive[start:end], n=None,
                           total_num_positives=int(self._num_positives[c])))

    return {
        "avg_hit_at_one": self.sum_hit_at_one / self.num_examples,
        "avg_perr": (self.sum_perr / self.num_labelled_examples
                     if self.num_labelled_examples else 0.0),
        "avg_loss": self.sum_loss / self.num_examples,
        "aps": aps,
        "map": float(np.mean(aps)),
        "gap": gap,
        "num_examples": self.num_examples,
    }

  def clear(self):
    """Resets the accumulator."""
    self.sum_hit_at_one = 0.0
    self.sum_perr = 0.0
    self.sum_loss = 0.0
    self.num_examples = 0
    self.num_labelled_examples = 0
    self._classes = []
    self._scores = []
    self._positive = []
    self._num_positives = np.zeros(self.num_class, dtype=np.int64)
