"""Per-class average precision, the building block of the MAP metric.

One AveragePrecisionCalculator (no top_n cut-off) per class. Inputs are
class-major: row c of `predictions` / `actuals` holds the scores and labels
given to class c (rows may have different lengths). peek_map_at_n() returns the
per-class APs; the caller averages them (the original's eval_util.py divides by all V classes).

Example:
  calculator = MeanAveragePrecisionCalculator(num_class)
  calculator.accumulate(class_major_scores, class_major_labels, positives)
  aps = calculator.peek_map_at_n()
"""

import numbers

import average_precision_calculator


class MeanAveragePrecisionCalculator(object):
  """Accumulates class-major predictions and reports one AP per class."""

  def __init__(self, num_class):
    """Creates num_class empty per-class calculators.

    Args:
      num_class: positive integer, the number of classes. (The original
        rejected 1 despite asking for a positive integer; 1 is accepted.)

    Raises:
      ValueError: num_class is not a positive integer.
    """
    if (not isinstance(num_class, numbers.Integral) or
        isinstance(num_class, bool) or num_class <= 0):
      raise ValueError("num_class must be a positive integer, got %r."
                       % (num_class,))
    self._num_class = int(num_class)
    self._ap_calculators = [
        average_precision_calculator.AveragePrecisionCalculator()
        for _ in range(self._num_class)]

  def accumulate(self, predictions, actuals, num_positives=None):
    """Adds one chunk of class-major predictions and labels.

    Args:
      predictions: sequence of num_class 1-D array-likes of scores, one per
        class.
      actuals: sequence of num_class label array-likes matching predictions;
        values > 0 are positives.
      num_positives: optional sequence of num_class numbers, the positives of
        each class in the chunk including those missing from its row (e.g.
        not retrieved in a top-k). Without it each class counts the labels > 0
        in its row. (The original crashed on this path: it iterated over an
        integer to build the missing list.)

    Raises:
      ValueError: the number of rows is not num_class, or a row's predictions
        and labels differ in shape, or a positive count is invalid.
    """
    if len(predictions) != self._num_class or len(actuals) != self._num_class:
      raise ValueError("expected %d class rows, got %d predictions and %d "
                       "actuals." % (self._num_class, len(predictions),
                                     len(actuals)))
    if num_positives is None:
      num_positives = [None] * self._num_class
    elif len(num_positives) != self._num_class:
      raise ValueError("expected %d positive counts, got %d."
                       % (self._num_class, len(num_positives)))
    for calculator, scores, labels, positives in zip(
        self._ap_calculators, predictions, actuals, num_positives):
      calculator.accumulate(scores, labels, positives)

  def clear(self):
    """Resets every per-class calculator."""
    for calculator in self._ap_calculators:
      calculator.clear()

  def is_empty(self):
    """True when no class holds any prediction."""
    return all(calculator.is_empty() for calculator in self._ap_calculators)

  def peek_map_at_n(self):
    """List of num_class non-interpolated APs (0.0 for an empty class)."""
    return [calculator.peek_ap_at_n() for calculator in self._ap_calculators]
