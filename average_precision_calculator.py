"""Non-interpolated average precision (AP) in numpy.

As the original's average_precision_calculator.py (ap_at_n). For a ranked list of N
items with labels y_i (an item is positive when y_i > 0) and P positives in total,

  AP = sum_i [y_i > 0] * (positives among the first i items) / i * (1 / P).

With a cut-off n only the first min(N, n) items are scanned and P becomes
min(P, n). The result is non-interpolated AP, the quantity the YouTube-8M
GAP/MAP metrics are built on.

Tied scores: items are first put in a fixed pseudo-random order (the
permutation the starter code drew from Python's RNG seeded with 0) and then
stable-sorted by descending score, so ties are broken by that permutation. The
permutation is reproduced with a private `random.Random(0)`; unlike the
original, the global `random` state is left untouched. (It is the permutation
the original code yields under Python 3; Python 2 drew a different one.)
The permutation applies to the items in the order they are handed over: for
a calculator without top_n that is accumulation order, whereas the original
used the internal layout of its heap, so scores tied across a positive and a
negative may be ordered differently than there.

Example:
  calculator = AveragePrecisionCalculator()
  calculator.accumulate(scores_chunk, labels_chunk)
  ...
  ap = calculator.peek_ap_at_n()
"""

import functools
import heapq
import numbers
import random

import numpy as np

# Permutations up to this length are cached: per-class AP calls at the end of
# an evaluation repeat the same small lengths thousands of times.
_MAX_CACHED_PERMUTATION = 1 << 15


def _is_positive_int(value):
  return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value > 0)


def _make_tie_permutation(size):
  indices = list(range(size))
  random.Random(0).shuffle(indices)
  # The original drew `random.sample(range(size), size)` after seeding with 0.
  # For the same seed that sample is exactly the reverse of this shuffle (both
  # make the same draws and pick the same elements, filling the output from
  # opposite ends); the shuffle is the faster of the two.
  indices.reverse()
  permutation = np.array(indices, dtype=np.intp)
  permutation.flags.writeable = False
  return permutation


@functools.lru_cache(maxsize=128)
def _cached_tie_permutation(size):
  return _make_tie_permutation(size)


def _tie_permutation(size):
  """The fixed order applied to the items before sorting them by score."""
  if size <= _MAX_CACHED_PERMUTATION:
    return _cached_tie_permutation(size)
  return _make_tie_permutation(size)


def _rank(scores, positive, depth):
  """Ranking of the items (indices, best first) as defined in the module doc.

  Args:
    scores: 1-D float64 array.
    positive: 1-D bool array, same length.
    depth: number of leading ranks that will be read (>= 1).

  Returns:
    An index array ordering the items by descending score, ties broken by the
    fixed permutation.
  """
  order = np.argsort(-scores, kind="stable")
  ranked_scores = scores[order]
  ranked_positive = positive[order]
  # The permutation costs a Python-level loop over all items, so it is only
  # drawn when it can change the result: AP depends only on the sequence of
  # labels along the ranking, which tie order alters only inside a tie group
  # that mixes positives and negatives and reaches into the scanned ranks.
  tied = ranked_scores[1:] == ranked_scores[:-1]
  mixed = tied & (ranked_positive[1:] != ranked_positive[:-1])
  if depth < len(scores):
    group_ends = np.flatnonzero(~tied[depth - 1:])
    last = depth - 1 + group_ends[0] if group_ends.size else len(scores) - 1
    mixed = mixed[:last]
  if not mixed.any():
    return order
  permutation = _tie_permutation(len(scores))
  return permutation[np.argsort(-scores[permutation], kind="stable")]


class AveragePrecisionCalculator(object):
  """Accumulates (score, label) pairs chunk by chunk and computes their AP."""

  def __init__(self, top_n=None):
    """Creates a calculator.

    Args:
      top_n: None to keep every accumulated pair, or a positive integer: keep
        only the top_n highest-scoring pairs and report AP at n = top_n.

    Raises:
      ValueError: top_n is neither None nor a positive integer. (The original
        also accepted 0, which then crashed on the first accumulate.)
    """
    if top_n is not None and not _is_positive_int(top_n):
      raise ValueError("top_n must be a positive integer or None, got %r."
                       % (top_n,))
    self._top_n = top_n
    self.clear()

  @property
  def heap_size(self):
    """Number of (score, label) pairs currently kept."""
    if self._top_n is None:
      return self._size
    return len(self._heap)

  @property
  def num_accumulated_positives(self):
    """Running total of positives (given or counted) over all chunks."""
    return self._total_positives

  def accumulate(self, predictions, actuals, num_positives=None):
    """Adds a chunk of predictions and their ground-truth labels.

    Args:
      predictions: 1-D array-like of scores.
      actuals: array-like of labels, same shape; values > 0 are positives.
      num_positives: optional number of positives this chunk stands for. Use
        it when the chunk is a retrieved subset and some positives are missing
        from it (they must still count in the recall denominator). Without it
        the labels > 0 of the chunk are counted.

    Raises:
      ValueError: shapes differ, or num_positives is not a number >= 0.
    """
    predictions = np.asarray(predictions)
    actuals = np.asarray(actuals)
    if predictions.shape != actuals.shape:
      raise ValueError("predictions and actuals have different shapes: %s vs %s"
                       % (predictions.shape, actuals.shape))
    if num_positives is not None and (
        not isinstance(num_positives, numbers.Number) or num_positives < 0):
      raise ValueError("num_positives must be None or a number >= 0, got %r."
                       % (num_positives,))
    predictions = predictions.reshape(-1)
    actuals = actuals.reshape(-1)
    if num_positives is None:
      num_positives = int(np.count_nonzero(actuals > 0))
    self._total_positives += num_positives

    if self._top_n is None:
      # No cut-off: every pair is kept, so plain arrays replace the original
      # heap (its internal order only decided how ties were permuted).
      self._scores.append(np.array(predictions))
      self._labels.append(np.array(actuals))
      self._size += predictions.size
      return

    heap = self._heap
    if len(heap) >= self._top_n:
      # Once full, the heap minimum never decreases, so anything not above
      # the current minimum would be rejected anyway; drop it in bulk. (In
      # float64: numpy would round the Python-float minimum to float32 data.)
      keep = predictions.astype(np.float64) > heap[0][0]
      predictions = predictions[keep]
      actuals = actuals[keep]
    for score, label in zip(predictions.tolist(), actuals.tolist()):
      if len(heap) < self._top_n:
        heapq.heappush(heap, (score, label))
      elif score > heap[0][0]:
        # Strictly larger only: an item equal to the minimum does not enter.
        # Pop then push (not heapreplace) to keep the original's heap layout,
        # which is the order the tie permutation is applied to.
        heapq.heappop(heap)
        heapq.heappush(heap, (score, label))

  def clear(self):
    """Forgets every accumulated pair and the positive count."""
    self._heap = []
    self._scores = []
    self._labels = []
    self._size = 0
    self._total_positives = 0

  def is_empty(self):
    """True when no pair is kept."""
    return self.heap_size == 0

  def peek_ap_at_n(self):
    """AP (at n = top_n when set) of the kept pairs; 0.0 when none are kept."""
    if self.heap_size == 0:
      return 0.0
    if self._top_n is None:
      if len(self._scores) > 1:
        self._scores = [np.concatenate(self._scores)]
        self._labels = [np.concatenate(self._labels)]
      scores, labels = self._scores[0], self._labels[0]
    else:
      scores = np.array([item[0] for item in self._heap], dtype=np.float64)
      labels = np.array([item[1] for item in self._heap])
    return self.ap_at_n(scores, labels, n=self._top_n,
                        total_num_positives=self._total_positives)

  @staticmethod
  def ap(predictions, actuals):
    """Non-interpolated AP over all items (see ap_at_n with n=None)."""
    return AveragePrecisionCalculator.ap_at_n(predictions, actuals, n=None)

  @staticmethod
  def ap_at_n(predictions, actuals, n=20, total_num_positives=None):
    """Non-interpolated average precision at n.

    Args:
      predictions: 1-D array-like of scores.
      actuals: array-like of labels, same shape; values > 0 are positives.
      n: None (scan everything) or a positive integer: scan only the first n
        ranks and use min(P, n) as the number of positives.
      total_num_positives: P; defaults to the number of labels > 0. Pass it
        when the items are a retrieved subset of a larger pool.

    Returns:
      The AP as a float; 0.0 when P is 0.

    Raises:
      ValueError: shapes differ, n is not None or a positive integer, or
        total_num_positives is negative.
    """
    predictions = np.asarray(predictions)
    actuals = np.asarray(actuals)
    if predictions.shape != actuals.shape:
      raise ValueError("predictions and actuals have different shapes: %s vs %s"
                       % (predictions.shape, actuals.shape))
    if n is not None and not _is_positive_int(n):
      raise ValueError("n must be None or a positive integer, got %r." % (n,))
    if total_num_positives is not None and total_num_positives < 0:
      raise ValueError("total_num_positives must be >= 0, got %r."
                       % (total_num_positives,))

    scores = predictions.reshape(-1).astype(np.float64)
    positive = actuals.reshape(-1) > 0
    if total_num_positives is None:
      num_positives = int(np.count_nonzero(positive))
    else:
      num_positives = total_num_positives
    if num_positives == 0 or scores.size == 0:
      return 0.0
    depth = scores.size
    if n is not None:
      num_positives = min(num_positives, n)
      depth = min(depth, n)

    order = _rank(scores, positive, depth)
    hit_ranks = np.flatnonzero(positive[order[:depth]]) + 1.0
    if hit_ranks.size == 0:
      return 0.0
    delta_recall = 1.0 / num_positives
    hits_so_far = np.arange(1, hit_ranks.size + 1, dtype=np.float64)
    # Same per-term arithmetic as the sequential definition, and cumsum adds
    # left to right, so the result is bit-identical to a plain Python loop.
    terms = hits_so_far / hit_ranks * delta_recall
    return float(np.cumsum(terms)[-1])
