"""Tests of the numpy metrics: AP, per-class AP, Hit@1, PERR, GAP, accumulation.

Expected values are either worked out by hand (in the comments) or produced
by the deliberately naive reference implementations below, which loop over
sorted Python pairs as the original's average_precision_calculator.py and
eval_util.py compute them.
"""

import heapq
import random

import numpy as np
import pytest

import average_precision_calculator as apc
import eval_util
import mean_average_precision_calculator as mapc

AP = apc.AveragePrecisionCalculator


# --------------------------------------------------------------------------
# Reference implementations (plain Python, written from the spec).


def reference_ap(predictions, actuals, n=None, total_num_positives=None):
  """AP by the book: fixed permutation, stable descending sort, loop."""
  items = list(zip([float(p) for p in predictions], list(actuals)))
  # The original's permutation: random.sample of all indices, seed 0.
  permutation = random.Random(0).sample(range(len(items)), len(items))
  items = [items[i] for i in permutation]
  items = sorted(items, key=lambda item: item[0], reverse=True)
  if total_num_positives is None:
    total_num_positives = sum(1 for _, label in items if label > 0)
  if total_num_positives == 0:
    return 0.0
  if n is not None:
    total_num_positives = min(total_num_positives, n)
    items = items[:n]
  ap, hits = 0.0, 0
  for rank, (_, label) in enumerate(items, start=1):
    if label > 0:
      hits += 1
      ap += hits / rank * (1.0 / total_num_positives)
  return ap


def reference_top_k(scores_row, k):
  """Indices of the k largest scores (no tie at the k-th score)."""
  return sorted(range(len(scores_row)), key=lambda c: -scores_row[c])[:k]


def reference_gap_and_aps(predictions, labels, top_k):
  """GAP and per-class APs from per-video top-k lists, by plain loops."""
  num_videos, num_classes = predictions.shape
  k = min(top_k, num_classes)
  per_class = [([], []) for _ in range(num_classes)]
  for v in range(num_videos):
    for c in reference_top_k(predictions[v].tolist(), k):
      per_class[c][0].append(float(predictions[v, c]))
      per_class[c][1].append(int(labels[v, c]))
  positives = [int(sum(1 for v in range(num_videos) if labels[v, c] > 0))
               for c in range(num_classes)]
  all_scores = [s for scores, _ in per_class for s in scores]
  all_labels = [l for _, class_labels in per_class for l in class_labels]
  gap = reference_ap(all_scores, all_labels,
                     total_num_positives=sum(positives))
  aps = [reference_ap(per_class[c][0], per_class[c][1],
                      total_num_positives=positives[c])
         for c in range(num_classes)]
  return gap, aps


def reference_perr(predictions, labels):
  total, count = 0.0, 0
  for v in range(predictions.shape[0]):
    k = int(sum(1 for y in labels[v] if y > 0))
    if k == 0:
      continue
    top = reference_top_k(predictions[v].tolist(), k)
    correct = sum(1 for c in top if labels[v, c] > 0 and predictions[v, c] > 0)
    total += correct / k
    count += 1
  return total / count


def random_batch(rng, num_videos, num_classes, label_rate=0.1):
  predictions = rng.random((num_videos, num_classes)).astype(np.float32)
  labels = (rng.random((num_videos, num_classes)) < label_rate).astype(np.int64)
  return predictions, labels


def tied_batch(rng, num_videos, num_classes, top_k, label_rate=0.3):
  """Scores from eight values: ties within and across videos, positive and negative.

  Each video's top_k classes score one of four high values, the others one of four low
  values, so the top-k sets are known and only the ranking of the retained pairs meets ties
  (the classes np.argpartition picks among ties at the cut are arbitrary).
  """
  k = min(top_k, num_classes)
  predictions = rng.integers(0, 4, size=(num_videos, num_classes)) / 8.0
  for v in range(num_videos):
    predictions[v, rng.choice(num_classes, k, replace=False)] += 0.5
  labels = (rng.random((num_videos, num_classes)) < label_rate).astype(np.int64)
  return predictions.astype(np.float32), labels


# --------------------------------------------------------------------------
# AveragePrecisionCalculator.ap / ap_at_n


def test_ap_hand_computed():
  # Ranked labels 1 0 1 0 1: hits at ranks 1, 3, 5, P = 3.
  # AP = (1/1 + 2/3 + 3/5) / 3 = (15 + 10 + 9) / 45 = 34/45.
  predictions = [0.6, 0.9, 0.5, 0.8, 0.7]
  actuals = [0, 1, 1, 0, 1]
  assert AP.ap(predictions, actuals) == pytest.approx(34 / 45, abs=1e-15)
  assert AP.ap_at_n(predictions, actuals, n=None) == pytest.approx(34 / 45, abs=1e-15)
  # All positives ranked first: AP = 1.
  assert AP.ap([0.3, 0.2, 0.1], [1, 1, 0]) == 1.0
  # Only negatives or nothing at all: 0.
  assert AP.ap([0.3, 0.2], [0, 0]) == 0.0
  assert AP.ap([], []) == 0.0
  # Labels are positive when > 0 (2 counts, -1 does not).
  assert AP.ap([0.9, 0.8], [-1, 2]) == 0.5


def test_ap_at_n_hand_computed():
  predictions = [0.6, 0.9, 0.5, 0.8, 0.7]  # ranked labels 1 0 1 0 1
  actuals = [0, 1, 1, 0, 1]
  # n=1: one hit at rank 1, P = min(3, 1) = 1 -> 1.
  assert AP.ap_at_n(predictions, actuals, n=1) == 1.0
  # n=2: hit at rank 1 only, P = min(3, 2) = 2 -> (1/1) / 2.
  assert AP.ap_at_n(predictions, actuals, n=2) == 0.5
  # n=3: hits at ranks 1 and 3, P = 3 -> (1 + 2/3) / 3 = 5/9.
  assert AP.ap_at_n(predictions, actuals, n=3) == pytest.approx(5 / 9,
                                                                abs=1e-15)
  # n larger than the list: no cut-off (P = min(3, 20) = 3) -> 34/45 as above.
  assert AP.ap_at_n(predictions, actuals) == pytest.approx(34 / 45, abs=1e-15)
  # Explicit P = 10 (7 positives were not retrieved): 34/15 / 10.
  assert AP.ap_at_n(predictions, actuals, n=None,
                    total_num_positives=10) == pytest.approx(34 / 150,
                                                             abs=1e-15)
  # P given as 10 but n = 2 caps it at 2: (1/1) / 2.
  assert AP.ap_at_n(predictions, actuals, n=2, total_num_positives=10) == 0.5
  assert AP.ap_at_n(predictions, actuals, total_num_positives=0) == 0.0
  # Positives exist but none was retrieved.
  assert AP.ap_at_n([], [], n=None, total_num_positives=3) == 0.0


def test_ap_input_validation():
  with pytest.raises(ValueError):
    AP.ap([0.1, 0.2], [1])
  for bad_n in (0, -1, 1.5, "3", True):
    with pytest.raises(ValueError):
      AP.ap_at_n([0.1], [1], n=bad_n)
  with pytest.raises(ValueError):
    AP.ap_at_n([0.1], [1], total_num_positives=-1)
  # numpy integers are accepted as n.
  assert AP.ap_at_n([0.1], [1], n=np.int64(3)) == 1.0


def test_tie_order_hand_computed_and_global_rng_untouched():
  # Permutation of 4 items (random.sample(range(4), 4) after seed 0) is
  # [3, 1, 0, 2]; a stable sort keeps it for equal scores, so the ranked
  # labels are y3 y1 y0 y2.
  random.seed(1234)
  state = random.getstate()
  # y = 1 0 0 1 -> ranked 1 0 1 0: (1/1 + 2/3) / 2 = 5/6.
  assert AP.ap([0.5] * 4, [1, 0, 0, 1]) == pytest.approx(5 / 6, abs=1e-15)
  # y = 0 1 1 0 -> ranked 0 1 0 1: (1/2 + 2/4) / 2 = 1/2.
  assert AP.ap([0.5] * 4, [0, 1, 1, 0]) == 0.5
  # Permutation of 5 is [3, 4, 0, 1, 2]; scores .9 .5 .5 .5 .1 with labels
  # 0 1 0 0 1 rank as item 0, then tied items 3, 1, 2, then item 4:
  # labels 0 0 1 0 1 -> (1/3 + 2/5) / 2 = 11/30.
  assert AP.ap([0.9, 0.5, 0.5, 0.5, 0.1],
               [0, 1, 0, 0, 1]) == pytest.approx(11 / 30, abs=1e-15)
  assert random.getstate() == state
  # Deterministic.
  assert AP.ap([0.5] * 4, [1, 0, 0, 1]) == AP.ap([0.5] * 4, [1, 0, 0, 1])


def test_tie_permutation_matches_original_construction():
  state = random.getstate()
  try:
    for size in (0, 1, 2, 3, 4, 5, 17, 1000, 70000):
      random.seed(0)
      expected = random.sample(range(size), size)
      assert apc._tie_permutation(size).tolist() == expected
  finally:
    random.setstate(state)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [None, 1, 7, 50, 1000])
def test_ap_at_n_matches_reference_on_random_data(ties, n):
  rng = np.random.default_rng(0 if ties else 1)
  for size in (1, 2, 10, 100, 500):
    if ties:
      predictions = rng.integers(0, 5, size=size) / 4.0
    else:
      predictions = rng.random(size)
    actuals = (rng.random(size) < 0.3).astype(int)
    expected = reference_ap(predictions, actuals, n=n)
    # Exact: same terms, added in the same order.
    assert AP.ap_at_n(predictions, actuals, n=n) == expected
    total = int(actuals.sum()) + 3
    assert AP.ap_at_n(predictions, actuals, n=n,
                      total_num_positives=total) == reference_ap(
                          predictions, actuals, n=n, total_num_positives=total)


def test_ap_ties_beyond_cutoff_and_float32_inputs():
  # A mixed tie group straddling the cut-off must follow the permutation.
  predictions = np.array([0.9, 0.4, 0.4, 0.4, 0.4, 0.4, 0.1], np.float32)
  actuals = np.array([1, 0, 1, 0, 1, 1, 0])
  for n in (1, 2, 3, 4, 6, 7):
    assert AP.ap_at_n(predictions, actuals, n=n) == reference_ap(
        predictions, actuals, n=n)


# --------------------------------------------------------------------------
# AveragePrecisionCalculator accumulation


def test_calculator_accumulates_chunks():
  calculator = AP()
  assert calculator.is_empty() and calculator.heap_size == 0
  assert calculator.peek_ap_at_n() == 0.0
  calculator.accumulate([0.6, 0.9], [0, 1])
  calculator.accumulate(np.array([0.5, 0.8, 0.7]), np.array([1, 0, 1]))
  assert calculator.heap_size == 5
  assert calculator.num_accumulated_positives == 3
  # Same five pairs as test_ap_hand_computed: 34/45.
  assert calculator.peek_ap_at_n() == pytest.approx(34 / 45, abs=1e-15)
  calculator.clear()
  assert calculator.is_empty() and calculator.num_accumulated_positives == 0


def test_calculator_num_positives_running_total():
  calculator = AP()
  calculator.accumulate([0.9, 0.1], [1, 0], num_positives=4)
  # Ranked 1 0 with P = 4: (1/1) / 4.
  assert calculator.peek_ap_at_n() == 0.25
  calculator.accumulate([0.5], [1])  # counted from the labels: P = 5
  # Ranked 1 1 0: (1/1 + 2/2) / 5.
  assert calculator.peek_ap_at_n() == 0.4
  assert calculator.num_accumulated_positives == 5
  with pytest.raises(ValueError):
    calculator.accumulate([0.5], [1], num_positives=-1)
  with pytest.raises(ValueError):
    calculator.accumulate([0.5], [1], num_positives="2")
  with pytest.raises(ValueError):
    calculator.accumulate([0.5, 0.4], [1])


def test_top_n_heap_semantics():
  for bad in (0, -2, 2.0, True):
    with pytest.raises(ValueError):
      AP(top_n=bad)
  calculator = AP(top_n=2)
  calculator.accumulate([0.9, 0.2], [0, 0])
  # 0.2 equals the heap minimum: it does not enter (strictly larger only).
  calculator.accumulate([0.2], [1])
  assert calculator.heap_size == 2
  # Kept: 0.9/0, 0.2/0; P = min(1, 2) = 1; no hit -> 0.
  assert calculator.peek_ap_at_n() == 0.0
  # 0.3 > 0.2 replaces the minimum: kept 0.9/0, 0.3/1; P = min(2, 2) = 2;
  # hit at rank 2 -> (1/2) / 2.
  calculator.accumulate([0.3], [1])
  assert calculator.peek_ap_at_n() == 0.25

  # Among equal scores the heap evicts the smaller (score, label) tuple.
  calculator = AP(top_n=2)
  calculator.accumulate([0.2, 0.2], [1, 0])
  calculator.accumulate([0.9], [0])
  # Kept 0.9/0, 0.2/1; P = min(1, 2) = 1; hit at rank 2 -> 1/2.
  assert calculator.peek_ap_at_n() == 0.5


def test_top_n_compares_mixed_precision_scores_exactly():
  calculator = AP(top_n=1)
  calculator.accumulate(np.array([0.1]), [0])
  # float32(0.1) is 0.10000000149... > 0.1: it must replace the minimum.
  calculator.accumulate(np.array([0.1], np.float32), [1])
  assert calculator.peek_ap_at_n() == 1.0


def test_top_n_matches_reference_heap():
  rng = np.random.default_rng(7)
  calculator = AP(top_n=7)
  heap, total = [], 0
  for _ in range(20):
    size = int(rng.integers(0, 12))
    predictions = (rng.integers(0, 6, size=size) / 5.0).astype(np.float32)
    actuals = (rng.random(size) < 0.4).astype(int)
    calculator.accumulate(predictions, actuals)
    # The original algorithm, item by item.
    total += int(np.sum(actuals > 0))
    for p, a in zip(predictions, actuals):
      if len(heap) < 7:
        heapq.heappush(heap, (p, a))
      elif p > heap[0][0]:
        heapq.heappop(heap)
        heapq.heappush(heap, (p, a))
  assert calculator.heap_size == 7
  expected = reference_ap([p for p, _ in heap], [a for _, a in heap], n=7,
                          total_num_positives=total)
  assert calculator.peek_ap_at_n() == expected


# --------------------------------------------------------------------------
# MeanAveragePrecisionCalculator


def test_map_calculator_without_and_with_num_positives():
  with pytest.raises(ValueError):
    mapc.MeanAveragePrecisionCalculator(0)
  mapc.MeanAveragePrecisionCalculator(1)

  calculator = mapc.MeanAveragePrecisionCalculator(3)
  assert calculator.is_empty()
  predictions = [[0.9, 0.2, 0.6], [0.3, 0.8], []]
  actuals = [[1, 0, 1], [1, 0], []]
  # The original crashed here (no num_positives).
  calculator.accumulate(predictions, actuals)
  # Class 0 ranks 1 1 0 -> 1; class 1 ranks 0 1 -> (1/2) / 1; class 2 empty.
  assert calculator.peek_map_at_n() == [1.0, 0.5, 0.0]
  assert not calculator.is_empty()
  calculator.accumulate([[0.1], [], [0.7]], [[1], [], [1]])
  # Class 0 ranks 1 1 0 1, P = 3: (1 + 1 + 3/4) / 3 = 11/12; class 2 -> 1.
  aps = calculator.peek_map_at_n()
  assert aps[0] == pytest.approx(11 / 12, abs=1e-15)
  assert aps[1:] == [0.5, 1.0]

  calculator.clear()
  assert calculator.is_empty()
  calculator.accumulate(predictions, actuals, num_positives=[4, 1, 3])
  # Class 0: (1/1 + 2/2) / 4; class 1: (1/2) / 1; class 2 has positives but
  # nothing retrieved -> 0.
  assert calculator.peek_map_at_n() == [0.5, 0.5, 0.0]

  with pytest.raises(ValueError):
    calculator.accumulate(predictions[:2], actuals[:2])
  with pytest.raises(ValueError):
    calculator.accumulate(predictions, actuals, num_positives=[1, 2])


# --------------------------------------------------------------------------
# Hit@1, PERR, top-k, GAP


def test_hit_at_one_ties_go_to_lowest_index():
  predictions = np.array([[0.5, 0.5, 0.1],   # tie -> class 0, label 0
                          [0.2, 0.7, 0.7],   # tie -> class 1, label 1
                          [0.3, 0.1, 0.2]])  # class 0, label 1
  labels = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0]])
  assert eval_util.calculate_hit_at_one(predictions, labels) == pytest.approx(
      2 / 3, abs=1e-15)
  with pytest.raises(ValueError):
    eval_util.calculate_hit_at_one(predictions, labels[:2])


def test_perr_hand_computed_with_label_less_video():
  predictions = np.array([
      [0.9, 0.8, 0.1, 0.3],    # k=2: top {0, 1}, one positive -> 1/2
      [0.2, 0.6, 0.4, 0.0],    # k=2: top {1, 2}, both positive -> 1
      [0.9, 0.1, 0.1, 0.1],    # no label: excluded (original: 0, counted)
      [0.0, -1.0, -2.0, -3.0], # k=1: top {0} positive but score 0 -> 0
  ])
  labels = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
  # (1/2 + 1 + 0) / 3; the original reported 1.5 / 4.
  assert eval_util.calculate_precision_at_equal_recall_rate(
      predictions, labels) == 0.5
  assert eval_util.calculate_precision_at_equal_recall_rate(
      predictions[2:3], labels[2:3]) == 0.0


def test_perr_matches_reference():
  rng = np.random.default_rng(3)
  predictions, labels = random_batch(rng, 60, 25, label_rate=0.15)
  predictions -= 0.2  # some top scores are <= 0
  assert eval_util.calculate_precision_at_equal_recall_rate(
      predictions, labels) == reference_perr(predictions, labels)


def test_top_k_by_class():
  predictions = np.array([[0.1, 0.5, 0.3], [0.6, 0.2, 0.4]])
  labels = np.array([[0, 1, 1], [0, 0, 1]])
  scores, kept, positives = eval_util.top_k_by_class(predictions, labels, k=2)
  # Video 0 keeps classes 1, 2; video 1 keeps classes 0, 2.
  assert [s.tolist() for s in scores] == [[0.6], [0.5], [0.3, 0.4]]
  assert [l.tolist() for l in kept] == [[0], [1], [1, 1]]
  assert positives == [0, 1, 2]
  # k above the number of classes keeps everything, in video order.
  scores, kept, positives = eval_util.top_k_by_class(predictions, labels, k=10)
  assert [s.tolist() for s in scores] == [[0.1, 0.6], [0.5, 0.2], [0.3, 0.4]]
  assert [l.tolist() for l in kept] == [[0, 0], [1, 0], [1, 1]]
  # Positive counts cover the whole batch, retained or not.
  _, _, positives = eval_util.top_k_by_class(predictions, labels, k=1)
  assert positives == [0, 1, 2]
  assert eval_util.flatten([[1, 2], [], [3]]) == [1, 2, 3]
  for bad in (0, -1, 2.5):
    with pytest.raises(ValueError):
      eval_util.top_k_by_class(predictions, labels, k=bad)


def test_gap_hand_computed():
  predictions = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1]])
  labels = np.array([[1, 0, 1], [0, 0, 1]])
  # top_k=1 retrieves 0.9/1 and 0.8/0; P = 3 labels in total -> (1/1) / 3.
  assert eval_util.calculate_gap(predictions, labels, top_k=1) == (
      pytest.approx(1 / 3, abs=1e-15))
  # top_k=2 adds 0.2/1 and 0.3/0: ranked 1 0 0 1 -> (1/1 + 2/4) / 3 = 1/2.
  assert eval_util.calculate_gap(predictions, labels, top_k=2) == 0.5
  assert eval_util.calculate_gap(predictions, np.zeros_like(labels)) == 0.0


def test_gap_matches_reference():
  rng = np.random.default_rng(4)
  predictions, labels = random_batch(rng, 80, 40)
  for top_k in (1, 5, 20, 40, 100):
    expected_gap, _ = reference_gap_and_aps(predictions, labels, top_k)
    assert eval_util.calculate_gap(predictions, labels, top_k) == expected_gap


def test_gap_with_tied_scores_matches_reference():
  rng = np.random.default_rng(7)
  for top_k in (1, 5, 20, 40):
    predictions, labels = tied_batch(rng, 80, 40, top_k)
    assert len(np.unique(predictions)) <= 8  # many ties
    expected_gap, _ = reference_gap_and_aps(predictions, labels, top_k)
    assert eval_util.calculate_gap(predictions, labels, top_k) == expected_gap


# --------------------------------------------------------------------------
# EvaluationMetrics


def _feed(metrics, predictions, labels, losses, sizes):
  start = 0
  for size in sizes:
    metrics.accumulate(predictions[start:start + size],
                       labels[start:start + size], losses[start:start + size])
    start += size
  assert start == len(predictions)
  return metrics.get()


@pytest.mark.parametrize("ties", [False, True])
def test_evaluation_metrics_batches_equal_one_shot(ties):
  rng = np.random.default_rng(5)
  num_classes, top_k = 30, 5
  if ties:
    predictions, labels = tied_batch(rng, 200, num_classes, top_k, label_rate=0.1)
  else:
    predictions, labels = random_batch(rng, 200, num_classes)
  labels[:7] = 0  # a few label-less videos
  losses = rng.random(200).astype(np.float32)

  state = random.getstate()
  one_shot = _feed(eval_util.EvaluationMetrics(num_classes, top_k),
                   predictions, labels, losses, [200])
  batched = _feed(eval_util.EvaluationMetrics(num_classes, top_k),
                  predictions, labels, losses, [1, 37, 62, 100])
  assert random.getstate() == state
  assert batched == one_shot

  assert one_shot["num_examples"] == 200
  assert one_shot["gap"] == eval_util.calculate_gap(predictions, labels, top_k)
  assert one_shot["avg_hit_at_one"] == eval_util.calculate_hit_at_one(
      predictions, labels)
  assert one_shot["avg_perr"] == (
      eval_util.calculate_precision_at_equal_recall_rate(predictions, labels))
  assert one_shot["avg_loss"] == pytest.approx(
      np.mean(losses, dtype=np.float64), rel=1e-12)
  assert one_shot["map"] == float(np.mean(one_shot["aps"]))
  assert len(one_shot["aps"]) == num_classes

  # Per-class APs equal the MAP calculator fed batch by batch.
  calculator = mapc.MeanAveragePrecisionCalculator(num_classes)
  for start, size in ((0, 50), (50, 150)):
    calculator.accumulate(*eval_util.top_k_by_class(
        predictions[start:start + size], labels[start:start + size], top_k))
  assert calculator.peek_map_at_n() == one_shot["aps"]

  expected_gap, expected_aps = reference_gap_and_aps(predictions, labels, top_k)
  assert one_shot["gap"] == expected_gap
  assert one_shot["aps"] == expected_aps
  if not ties:  # PERR cuts each video at its number of labels, where ties are arbitrary
    assert one_shot["avg_perr"] == reference_perr(predictions, labels)


def test_evaluation_metrics_batch_values_and_clear():
  predictions = np.array([[0.9, 0.8, 0.1, 0.3],
                          [0.9, 0.1, 0.1, 0.1]])
  labels = np.array([[1, 0, 0, 1], [0, 0, 0, 0]])
  metrics = eval_util.EvaluationMetrics(4, 2)
  with pytest.raises(ValueError):
    metrics.get()
  batch = metrics.accumulate(predictions, labels, np.array([1.0, 3.0]))
  # Hit@1: video 0 top class 0 is positive, video 1 has none -> 1/2.
  # PERR: video 0 only (video 1 is label-less) -> 1/2. Loss mean 2.
  assert batch == {"hit_at_one": 0.5, "perr": 0.5, "loss": 2.0}
  result = metrics.get()
  assert result["avg_hit_at_one"] == 0.5
  assert result["avg_perr"] == 0.5
  assert result["avg_loss"] == 2.0
  # Top-2: video 0 -> 0.9/1 (class 0), 0.8/0 (class 1); video 1 -> 0.9/0
  # (class 0) and one of its tied 0.1 scores. Class 0 ranks 0.9/1, 0.9/0
  # ... by the tie permutation of 2 items, [1, 0]: video 1's 0.9/0 first.
  # Class 0 AP = (1/2) / 1; class 3 has a positive never retrieved -> 0.
  assert result["aps"][0] == 0.5
  assert result["aps"][1:] == [0.0, 0.0, 0.0]
  assert result["map"] == 0.125
  with pytest.raises(ValueError):
    metrics.accumulate(predictions[:, :3], labels[:, :3], [0.0, 0.0])
  metrics.clear()
  with pytest.raises(ValueError):
    metrics.get()
  # A scalar loss counts as the batch mean.
  metrics.accumulate(predictions, labels, 4.0)
  assert metrics.get()["avg_loss"] == 4.0


def test_evaluation_metrics_top_k_larger_than_classes():
  rng = np.random.default_rng(6)
  predictions, labels = random_batch(rng, 30, 4, label_rate=0.3)
  losses = np.zeros(30)
  capped = _feed(eval_util.EvaluationMetrics(4, 50), predictions, labels,
                 losses, [10, 20])
  exact = _feed(eval_util.EvaluationMetrics(4, 4), predictions, labels,
                losses, [30])
  assert capped == exact
  expected_gap, expected_aps = reference_gap_and_aps(predictions, labels, 4)
  assert capped["gap"] == expected_gap
  assert capped["aps"] == expected_aps
  with pytest.raises(ValueError):
    eval_util.EvaluationMetrics(4, 0)
