"""GAP, MAP and hit@1 of prediction CSVs and of their weighted blends, against known labels.

A prediction CSV (what inference.py and file_averaging.py write) lists a few (label, score)
pairs per video. Its metrics are those of a submission: each video's top_k pairs by score
(equal scores: the smaller class first, as file_averaging.py orders them) are pooled and ranked
as eval_util.calculate_gap ranks them (class-major order, then average_precision_calculator's
fixed order among tied scores, then by score), and the number of positives is the number of
true labels of all the videos, predicted or not.

`BlendScorer` computes the GAP of a weighted blend of several CSVs exactly as
file_averaging.py blends them (sum over the inputs of weight * score, a pair an input lacks
counting 0, divided by the total weight; an input of weight 0 is left out) without writing
anything: the union of the inputs' (video, label) pairs is built once, after which a blend is
a few vector operations, each video's top_k one partition, and GAP one sort. That is what lets
fit_ensemble_weights.py try hundreds of weight vectors in seconds.

Free of TensorFlow: labels come as {video id (bytes): label array}, from
readers.read_video_labels (records) or read_labels_csv (a `VideoId,Labels` CSV).
"""
import dataclasses
import functools
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

import average_precision_calculator
from willow.fileio import InputError

LABELS_CSV_HEADER = "VideoId,Labels"
# file_averaging.py's scores are integer millionths when they were written with "%.6f".
_MICRO = 10**6


# ---------------------------------------------------------------------------------------------
# Labels.


def read_labels_csv(path: str, num_classes: int) -> Dict[bytes, np.ndarray]:
  """{video id: sorted distinct labels} of a ground-truth CSV `VideoId,Labels`.

  Labels are space-separated class indices (make_synthetic_data.py writes such files); a row
  may have none. Raises InputError naming the file, the line and the problem.
  """
  try:
    with open(path, "rb") as f:
      lines = f.read().decode("utf-8", "replace").splitlines()
  except OSError as e:
    raise InputError("%s: cannot read the labels CSV: %s" % (path, e.strerror or e))
  if not lines or lines[0].strip() != LABELS_CSV_HEADER:
    raise InputError("%s: line 1: expected the header %r" % (path, LABELS_CSV_HEADER))
  labels = {}
  for number, line in enumerate(lines[1:], 2):
    if not line.strip():
      continue
    video_id, comma, text = line.partition(",")
    if not comma or "," in text or not video_id:
      raise InputError("%s: line %d: expected '<video id>,<label> <label> ...'" % (path, number))
    try:
      values = np.array(text.split(), dtype=np.int64)
    except ValueError:
      raise InputError("%s: line %d: labels must be integers, got %r" % (path, number, text))
    bad = values[(values < 0) | (values >= num_classes)]
    if len(bad):
      raise InputError("%s: line %d: label %d is outside [0, %d) (check --num_classes)"
                       % (path, number, bad[0], num_classes))
    key = video_id.encode()
    if key in labels:
      raise InputError("%s: line %d: video %s appears twice" % (path, number, video_id))
    labels[key] = np.unique(values).astype(np.int32)
  if not labels:
    raise InputError("%s: no videos" % path)
  return labels


# ---------------------------------------------------------------------------------------------
# The pairs of several inputs.


@dataclasses.dataclass
class PairTable:
  """Every (video, label) pair that any input predicts, with each input's scores of them.

  Videos are numbered in order of first appearance across the inputs (file_averaging.py's
  output order), then come labelled videos that no input predicts (`extra_videos`, which
  only count as misses). Pairs are sorted by video, then label.
  """
  video_ids: np.ndarray  # bytes ('S'), (V,)
  video_positives: np.ndarray  # int64 (V,): true labels of each video
  pair_videos: np.ndarray  # int64 (P,)
  pair_labels: np.ndarray  # int64 (P,)
  pair_positive: np.ndarray  # bool (P,)
  input_pairs: List[np.ndarray]  # per input: the pair index of each of its pairs
  input_scores: List[np.ndarray]  # per input: float64 scores, each exactly float(token)
  paths: List[str]
  num_classes: int

  @property
  def num_videos(self) -> int:
    return len(self.video_ids)

  def subset(self, videos: np.ndarray) -> "PairTable":
    """The table restricted to the videos where the boolean mask `videos` is True."""
    new_video = np.cumsum(videos) - 1
    keep = videos[self.pair_videos]
    new_pair = np.cumsum(keep) - 1
    input_pairs, input_scores = [], []
    for pairs, scores in zip(self.input_pairs, self.input_scores):
      kept = keep[pairs]
      input_pairs.append(new_pair[pairs[kept]])
      input_scores.append(scores[kept])
    return PairTable(
        video_ids=self.video_ids[videos], video_positives=self.video_positives[videos],
        pair_videos=new_video[self.pair_videos[keep]], pair_labels=self.pair_labels[keep],
        pair_positive=self.pair_positive[keep], input_pairs=input_pairs,
        input_scores=input_scores, paths=self.paths, num_classes=self.num_classes)


def _scores_as_floats(parsed) -> np.ndarray:
  # The same division file_averaging.py does, so that blends agree to the last bit.
  return parsed.scores / _MICRO if parsed.scores_are_micro else parsed.scores.astype(np.float64)


def _labels_of(video_ids: np.ndarray, labels: Dict[bytes, np.ndarray], paths: Sequence[str],
               first_file: np.ndarray, labels_source: str) -> List[np.ndarray]:
  found = [labels.get(bytes(v)) for v in video_ids]
  missing = [i for i, l in enumerate(found) if l is None]
  if missing:
    first = missing[0]
    raise InputError("%s: video %s%s has no labels in %s" % (
        paths[first_file[first]], video_ids[first].decode("utf-8", "replace"),
        " (and %d other videos)" % (len(missing) - 1) if len(missing) > 1 else "",
        labels_source))
  return found


def build_pair_table(parsed_files: Sequence, labels: Dict[bytes, np.ndarray], num_classes: int,
                     labels_source: str = "the labels",
                     include_unpredicted: bool = False) -> PairTable:
  """The PairTable of parsed CSVs (file_averaging.parse_prediction_file) against labels.

  Every predicted video must have labels (InputError naming the file and the video
  otherwise). With include_unpredicted, labelled videos that no input predicts are kept as
  videos without pairs (misses); otherwise they are left out.
  """
  ids = np.concatenate([p.video_ids for p in parsed_files])
  codes, unique_ids = pd.factorize(pd.Series(ids, dtype=object), sort=False)
  unique_ids = np.asarray(unique_ids, dtype=ids.dtype)
  file_of_row = np.repeat(np.arange(len(parsed_files)), [len(p.video_ids) for p in parsed_files])
  first_file = file_of_row[np.unique(codes, return_index=True)[1]]  # names each video first
  paths = [p.path for p in parsed_files]
  video_labels = _labels_of(unique_ids, labels, paths, first_file, labels_source)
  if include_unpredicted:
    predicted = set(bytes(v) for v in unique_ids)
    extra = [v for v in labels if v not in predicted]
    if extra:
      unique_ids = np.concatenate([unique_ids, np.array(extra, dtype=ids.dtype)])
      video_labels += [labels[v] for v in extra]
  video_positives = np.array([len(l) for l in video_labels], np.int64)
  true_keys = (np.repeat(np.arange(len(unique_ids), dtype=np.int64), video_positives)
               * num_classes + np.concatenate(video_labels + [np.zeros(0, np.int64)]))

  row_start = 0
  keys = []
  for parsed in parsed_files:
    rows = codes[row_start:row_start + len(parsed.video_ids)]
    row_start += len(parsed.video_ids)
    keys.append(np.repeat(rows.astype(np.int64), parsed.pair_counts) * num_classes
                + parsed.labels)
  pair_keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
  bounds = np.cumsum([len(k) for k in keys])[:-1]
  return PairTable(
      video_ids=unique_ids, video_positives=video_positives,
      pair_videos=pair_keys // num_classes, pair_labels=pair_keys % num_classes,
      pair_positive=np.isin(pair_keys, true_keys, assume_unique=True),
      input_pairs=np.split(inverse.reshape(-1), bounds),
      input_scores=[_scores_as_floats(p) for p in parsed_files],
      paths=paths, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# Scoring blends.


@functools.lru_cache(maxsize=16)
def _tie_ranks(size: int) -> np.ndarray:
  """Each item's place in average_precision_calculator's fixed order among tied scores.

  That module caches the order only for small sizes; a pool of top-k pairs is drawn at the
  same size over and over, and drawing it costs a Python loop over all the items.
  """
  permutation = average_precision_calculator._tie_permutation(size)  # pylint: disable=protected-access
  ranks = np.empty(size, np.int64)
  ranks[permutation] = np.arange(size)
  return ranks


def pooled_average_precision(scores: np.ndarray, positive: np.ndarray,
                             num_positives: int) -> float:
  """AP of items listed in eval_util's class-major order, exactly as ap_at_n(n=None) gives it.

  ap_at_n ranks by score and, where equal scores mix positives and negatives, by the items'
  places in a fixed order. Only the sequence of labels along the ranking matters, so one
  (unstable) sort by score suffices, followed by reordering those mixed groups; the sum is
  formed with ap_at_n's arithmetic, so the result is identical.
  """
  if num_positives == 0 or len(scores) == 0:
    return 0.0
  order = np.argsort(-scores)
  ranked = scores[order]
  hits = positive[order]
  tied = ranked[1:] == ranked[:-1]
  if tied.any():
    group = np.concatenate([[0], np.cumsum(~tied)])
    size = np.bincount(group)
    group_hits = np.bincount(group, weights=hits)
    mixed = np.flatnonzero(((group_hits > 0) & (group_hits < size))[group])
    if len(mixed):
      items = order[mixed]
      order[mixed] = items[np.lexsort((_tie_ranks(len(scores))[items], group[mixed]))]
      hits = positive[order]
  hit_ranks = np.flatnonzero(hits) + 1.0
  if hit_ranks.size == 0:
    return 0.0
  hits_so_far = np.arange(1, hit_ranks.size + 1, dtype=np.float64)
  return float(np.cumsum(hits_so_far / hit_ranks * (1.0 / num_positives))[-1])


class BlendScorer:
  """GAP@top_k of weighted blends of the inputs of a PairTable (see the module doc)."""

  # Videos with more than top_k pairs are grouped by their number of pairs, rounded up to a
  # multiple of this: each group is one (videos, width) grid, padded with absent cells.
  _WIDTH_STEP = 8

  def __init__(self, table: PairTable, top_k: int):
    if top_k <= 0:
      raise InputError("top_k must be positive, got %d" % top_k)
    self.table, self.top_k = table, top_k
    num_pairs = len(table.pair_videos)
    counts = np.bincount(table.pair_videos, minlength=table.num_videos)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # Pairs of videos with at most top_k pairs are all kept (when some input has them).
    self._few = np.flatnonzero(counts[table.pair_videos] <= top_k)
    self._grids = []
    many = np.flatnonzero(counts > top_k)
    widths = -(-counts[many] // self._WIDTH_STEP) * self._WIDTH_STEP
    for width in np.unique(widths):
      videos = many[widths == width]
      columns = np.arange(width)
      # Cells past a video's last pair point at index num_pairs, the absent score. Columns are
      # in label order, so among equal scores the leftmost cells are the smaller classes.
      cells = starts[videos, None] + columns
      cells[columns >= counts[videos, None]] = num_pairs
      self._grids.append(cells)
    # eval_util's pool order: class-major, video order within a class.
    self._class_major = np.lexsort((table.pair_videos, table.pair_labels))
    self.total_positives = int(table.video_positives.sum())
    self._entry_pairs = np.concatenate(table.input_pairs)
    self._entry_scores = np.concatenate(table.input_scores)
    # Reused from blend to blend: a fresh array this large is mapped and page-faulted anew.
    self._contributions = np.empty(len(self._entry_scores))
    ends = np.cumsum([len(pairs) for pairs in table.input_pairs])
    self._input_entries = [slice(end - len(pairs), end)
                           for end, pairs in zip(ends, table.input_pairs)]

  @property
  def num_inputs(self) -> int:
    return len(self.table.input_pairs)

  def blend(self, weights: Sequence[float]) -> np.ndarray:
    """Blended score of every pair (-inf: no input of positive weight has it), then one -inf.

    The arithmetic is file_averaging.py's: weight * score per input, summed in input order
    (bincount adds the entries in array order, from 0), divided by Python's sum of the
    weights.
    """
    weights = [float(w) for w in weights]
    if len(weights) != self.num_inputs:
      raise ValueError("expected %d weights, got %d" % (self.num_inputs, len(weights)))
    num_pairs = len(self.table.pair_videos)
    contributions = self._contributions
    for weight, entries in zip(weights, self._input_entries):
      np.multiply(self._entry_scores[entries], weight, out=contributions[entries])
    sums = np.bincount(self._entry_pairs, contributions, minlength=num_pairs + 1)
    sums /= sum(weights)
    if min(weights) <= 0:
      present = np.zeros(num_pairs + 1, bool)
      for weight, pairs in zip(weights, self.table.input_pairs):
        if weight > 0:
          present[pairs] = True
      sums[~present] = -np.inf
    sums[num_pairs] = -np.inf
    return sums

  def top_k_pairs(self, scores: np.ndarray) -> np.ndarray:
    """Boolean mask of the pairs in their video's top_k (file_averaging.py's choice)."""
    top_k = self.top_k
    chosen = np.zeros(len(scores), bool)
    chosen[self._few] = scores[self._few] > -np.inf
    for cells in self._grids:
      grid = scores[cells]
      width = grid.shape[1]
      kth = np.partition(grid, width - top_k, axis=1)[:, width - top_k, None]
      keep = (grid >= kth) & (grid > -np.inf)
      tied = np.flatnonzero(np.count_nonzero(keep, axis=1) > top_k)
      if len(tied):  # equal scores straddle the cut: the smaller classes (leftmost) win
        above = grid[tied] > kth[tied]
        at_cut = grid[tied] == kth[tied]
        room = top_k - np.count_nonzero(above, axis=1)
        keep[tied] = above | (at_cut & (np.cumsum(at_cut, axis=1) <= room[:, None]))
      chosen[cells[keep]] = True
    chosen[-1] = False
    return chosen

  def pool(self, scores: np.ndarray) -> np.ndarray:
    """Indices of the pairs in their video's top_k, in eval_util's class-major order."""
    chosen = self.top_k_pairs(scores)[:-1]
    return self._class_major[chosen[self._class_major]]

  def gap(self, weights: Sequence[float], videos: Optional[np.ndarray] = None) -> float:
    """GAP@top_k of the blend (over the videos in the boolean mask `videos`, default all)."""
    return self.gaps(weights, [videos])[0]

  def gaps(self, weights: Sequence[float], video_sets: Sequence[Optional[np.ndarray]]):
    """[GAP@top_k of the blend over each set of videos (a boolean mask, or None: all)]."""
    scores = self.blend(weights)
    chosen = self.top_k_pairs(scores)[:-1]
    results = []
    for videos in video_sets:
      kept, positives = chosen, self.total_positives
      if videos is not None:
        kept = chosen & videos[self.table.pair_videos]
        positives = int(self.table.video_positives[videos].sum())
      items = self._class_major[kept[self._class_major]]
      results.append(pooled_average_precision(scores[items], self.table.pair_positive[items],
                                              positives))
    return results


# ---------------------------------------------------------------------------------------------
# Scoring one CSV.


def score_predictions(parsed, labels: Dict[bytes, np.ndarray], num_classes: int, top_k: int,
                      labels_source: str = "the labels") -> Dict[str, float]:
  """GAP@top_k, MAP and hit@1 of one parsed CSV, as eval.py reports a model's.

  Labelled videos without predictions are misses. MAP averages, over all num_classes
  classes, the AP of each class's retained pairs (0 for a class without positives), as
  eval_util.EvaluationMetrics does; hit@1 is the fraction of videos whose best pair is a true
  label.
  """
  table = build_pair_table([parsed], labels, num_classes, labels_source,
                           include_unpredicted=True)
  scorer = BlendScorer(table, top_k)
  scores = scorer.blend([1.0])
  items = scorer.pool(scores)
  positive = table.pair_positive[items]
  gap = pooled_average_precision(scores[items], positive, scorer.total_positives)
  class_positives = np.bincount(np.concatenate(
      [labels[bytes(v)] for v in table.video_ids] + [np.zeros(0, np.int64)]),
      minlength=num_classes)
  item_classes = table.pair_labels[items]
  bounds = np.searchsorted(item_classes, np.arange(num_classes + 1))
  ap_at_n = average_precision_calculator.AveragePrecisionCalculator.ap_at_n
  aps = [ap_at_n(scores[items[start:end]], positive[start:end], n=None,
                 total_num_positives=int(class_positives[c])) if class_positives[c] else 0.0
         for c, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]))]
  return {"gap": gap, "map": float(np.mean(aps)), "hit_at_one": _hit_at_one(table, scores),
          "num_videos": table.num_videos,
          "num_unpredicted": int(table.num_videos - len(np.unique(table.pair_videos)))}


def _hit_at_one(table: PairTable, scores: np.ndarray) -> float:
  """Fraction of the videos whose best pair (largest score, then smaller class) is true."""
  order = np.lexsort((table.pair_labels, -scores[:-1], table.pair_videos))
  videos = table.pair_videos[order]
  first = np.ones(len(order), bool)
  first[1:] = videos[1:] != videos[:-1]
  return float(np.count_nonzero(table.pair_positive[order[first]]) / table.num_videos)

