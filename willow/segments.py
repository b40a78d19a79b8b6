"""Segment-rated data (the 2019 YouTube-8M challenge, temporal concept localization).

Segment-rated records are the frame-level SequenceExamples plus four context features, one
value per rating: `segment_labels` (class), `segment_start_times` (first frame of the rated
segment), `segment_end_times` (start + segment size; optional) and `segment_scores` (1.0: the
class is visible in the segment, 0.0: it is not). Only the rated (segment, class) pairs are
known; every other class of a segment is unknown, not negative.

What this module holds, for train.py / eval.py / inference.py --segment_labels:

* SegmentReader: a batch of records -> one example per distinct rated start time (training,
  evaluation) or per segment_size-frame segment of every video (inference), with labels and
  label weights (1 for rated pairs, 0 elsewhere).
* The metrics: GAP over rated pairs, and the challenge's segment MAP (per class, the rated
  segments ranked by score and cut at --segment_max_pred; mean of the classes' APs).
* ClassTopLists: each class's --segment_max_pred best segments in memory bounded by
  classes x max_pred, whatever the number of videos.
* The submission file (`Class,Segments`), the scored part files of a sharded inference and
  their merge, and the eval / inference loops.

Segments are ranked by score, ties by segment id (`<video id>:<start frame>`, byte order):
a total order that does not depend on the order the segments were seen in, so eval.py, a
single inference run and the merge of a sharded one rank alike.
"""
import time
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

import losses
import readers
import utils
from willow import fileio
from willow import record_errors

SEGMENT_LABELS_KEY = "segment_labels"
SEGMENT_START_TIMES_KEY = "segment_start_times"
SEGMENT_END_TIMES_KEY = "segment_end_times"
SEGMENT_SCORES_KEY = "segment_scores"
_RATING_FEATURES = ((SEGMENT_LABELS_KEY, tf.int64), (SEGMENT_START_TIMES_KEY, tf.int64),
                    (SEGMENT_END_TIMES_KEY, tf.int64), (SEGMENT_SCORES_KEY, tf.float32))

SUBMISSION_HEADER = b"Class,Segments\n"
# Parts of a sharded run keep each segment's score, so that they can be merged exactly.
PART_HEADER = b"Class,SegmentScorePairs\n"

_plain = tf.autograph.experimental.do_not_convert


# ----------------------------------------------------------------------------------------------
# Reading segments.


class SegmentReader(readers.BaseReader):
  """Reads segment-rated frame-level SequenceExamples into segment examples.

  Returns the dict of the other readers, one entry per segment (S of them for a batch):
    video_ids            [S] string, the segment's video
    segment_start_times  [S] int64, its first frame
    video_matrix         [S, segment_size, D] float32, its frames (zero past the video's end)
    num_frames           [S] int32, min(segment_size, frames from the start to the video's end)
    labels               [S, num_classes] float32, the rated scores (0 where unrated)
    label_weights        [S, num_classes] float32, 1 for rated (segment, class) pairs, else 0

  Segments cover the whole record (the video-level readers keep only its first max_frames).
  A record without ratings yields no example (every_segment=False). Several ratings of one
  (start, class) pair collapse into one, positive if any rating is.
  """

  # The number of examples differs from the number of records: get_input_dataset rebatches.
  several_examples_per_record = True

  def __init__(self, num_classes=4716, feature_sizes=(1024,), feature_names=("rgb",),
               segment_size=5, every_segment=False):
    """Args:
      num_classes: vocabulary size V; rated classes must lie in [0, V).
      feature_sizes: bytes per frame of each feature (list, or comma-separated string).
      feature_names: feature list names, same length and order as feature_sizes.
      segment_size: frames per segment (--segment_size).
      every_segment: inference: every segment_size-frame segment of every video, from frame
        0 on, the last one possibly shorter; the ratings are neither read nor needed.
    """
    self.feature_names, self.feature_sizes = utils.parse_feature_list(feature_names,
                                                                      feature_sizes)
    self.num_classes = readers._positive_int(num_classes, "num_classes")
    self.segment_size = readers._positive_int(segment_size, "segment_size")
    self.every_segment = bool(every_segment)

  def prepare_serialized_examples(self, serialized, source=None):
    serialized = tf.convert_to_tensor(serialized, dtype=tf.string)
    names = readers._record_names(serialized, source)
    ratings = {} if self.every_segment else {
        key: tf.io.RaggedFeature(dtype) for key, dtype in _RATING_FEATURES}
    context, frame_lists, frame_counts = tf.io.parse_sequence_example(
        serialized,
        context_features=readers._context_spec(ratings),
        sequence_features={name: tf.io.FixedLenSequenceFeature([], tf.string)
                           for name in self.feature_names},
        example_names=names)
    video_ids, checks = readers._pick_video_ids(context, names)
    counts = []
    for name, size in zip(self.feature_names, self.feature_sizes):
      count = tf.cast(frame_counts[name], tf.int32)
      checks.append(readers.YT8MFrameFeatureReader._check_frame_sizes(
          frame_lists[name], count, name, size, names, video_ids))
      counts.append(count)
    video_frames = tf.cast(tf.reduce_min(tf.stack(counts), axis=0), tf.int64)

    if self.every_segment:
      rows, starts = self._every_segment(video_frames)
      labels = weights = tf.zeros(tf.stack([tf.size(starts), self.num_classes]))
    else:
      checks += self._check_ratings(context, video_frames, names, video_ids)
      with tf.control_dependencies(checks):
        rows, starts, labels, weights = self._rated_segments(context)
    with tf.control_dependencies(checks):
      video_matrix = self._segment_frames(frame_lists, rows, starts, video_frames)
    segment_frames = tf.minimum(tf.gather(video_frames, rows) - starts, self.segment_size)
    return {
        "video_ids": tf.gather(video_ids, rows),
        "segment_start_times": starts,
        "video_matrix": video_matrix,
        "num_frames": tf.cast(segment_frames, tf.int32),
        "labels": labels,
        "label_weights": weights,
    }

  def _every_segment(self, video_frames):
    """(record, start) of every segment: starts 0, size, 2 size, ... below the frame count."""
    segments = tf.ragged.range(tf.zeros_like(video_frames), video_frames, self.segment_size)
    return tf.cast(segments.value_rowids(), tf.int64), segments.flat_values

  def _check_ratings(self, context, video_frames, names, video_ids):
    """Equal list lengths, classes in range, starts inside the video, ends = start + size,
    scores in [0, 1]. Each failure names the file, the video and the value: of the first bad
    record (then of its first bad rating), whatever the order the checks run in."""
    classes = context[SEGMENT_LABELS_KEY]
    num_ratings = tf.cast(classes.row_lengths(), tf.int32)
    length_failures = []
    for key in (SEGMENT_START_TIMES_KEY, SEGMENT_SCORES_KEY, SEGMENT_END_TIMES_KEY):
      lengths = tf.cast(context[key].row_lengths(), tf.int32)
      wrong = tf.not_equal(lengths, num_ratings)
      if key == SEGMENT_END_TIMES_KEY:  # optional: absent is fine
        wrong = tf.logical_and(wrong, lengths > 0)
      length_failures.append((wrong, lambda i, key=key, lengths=lengths: [
          "%s has " % SEGMENT_LABELS_KEY, tf.strings.as_string(readers._at(num_ratings, i, 0)),
          " values but %s has " % key, tf.strings.as_string(readers._at(lengths, i, 0)),
          " (one value per rating)"]))
    lengths_check = _first_failure(length_failures, lambda i: i, names, video_ids)
    # The value checks index the lists together: only once their lengths are known to agree.
    with tf.control_dependencies([lengths_check]):
      rating_rows = tf.cast(classes.value_rowids(), tf.int32)
      values = classes.flat_values
      starts = context[SEGMENT_START_TIMES_KEY].flat_values
      scores = context[SEGMENT_SCORES_KEY].flat_values
      frames = tf.gather(video_frames, rating_rows)
      ends = context[SEGMENT_END_TIMES_KEY]
      has_ends = tf.gather(ends.row_lengths() > 0, rating_rows)
      # The end times of the records that have them, in rating order (0 elsewhere).
      end_values = tf.scatter_nd(tf.where(has_ends), ends.flat_values,
                                 tf.shape(values, out_type=tf.int64))
      as_text = lambda tensor, i, **kwargs: tf.strings.as_string(readers._at(tensor, i, 0),
                                                                 **kwargs)
      value_failures = [
          (tf.logical_or(values < 0, values >= self.num_classes),
           lambda i: ["segment label ", as_text(values, i),
                      " is outside [0, %d) (check --num_classes)" % self.num_classes]),
          (tf.logical_or(starts < 0, starts >= frames),
           lambda i: ["segment start time ", as_text(starts, i), " is outside the video's ",
                      as_text(frames, i), " frames"]),
          (tf.logical_and(has_ends, tf.not_equal(end_values - starts, self.segment_size)),
           lambda i: ["segment end time ", as_text(end_values, i), " is not its start time ",
                      as_text(starts, i), " + --segment_size=%d" % self.segment_size]),
          (tf.logical_not(tf.logical_and(scores >= 0.0, scores <= 1.0)),
           lambda i: ["segment score ", as_text(scores, i, shortest=True),
                      " is not in [0, 1]"]),
      ]
      values_check = _first_failure(
          value_failures, lambda i: readers._at(rating_rows, i, tf.shape(video_ids)[0]),
          names, video_ids)
    return [lengths_check, values_check]

  def _rated_segments(self, context):
    """(record, start) of each distinct rated start, sorted, with its labels and weights."""
    classes = context[SEGMENT_LABELS_KEY]
    starts = context[SEGMENT_START_TIMES_KEY].flat_values
    scores = context[SEGMENT_SCORES_KEY].flat_values
    # One int64 key per (record, start); starts are below 2^31 (checked against frame counts).
    keys = tf.cast(classes.value_rowids(), tf.int64) * (1 << 32) + starts
    distinct = tf.unique(tf.sort(keys)).y
    segment_of_rating = tf.cast(tf.searchsorted(distinct, keys), tf.int64)
    pairs = tf.stack([segment_of_rating, classes.flat_values], axis=1)
    shape = tf.stack([tf.size(distinct), self.num_classes])
    labels = tf.tensor_scatter_nd_max(tf.zeros(shape), pairs, scores)
    weights = tf.tensor_scatter_nd_max(tf.zeros(shape), pairs, tf.ones_like(scores))
    return distinct // (1 << 32), distinct % (1 << 32), labels, weights

  def _segment_frames(self, frame_lists, rows, starts, video_frames):
    """[S, segment_size, D] dequantized frames of the segments; zero past the video's end."""
    index = starts[:, tf.newaxis] + tf.range(self.segment_size, dtype=tf.int64)[tf.newaxis, :]
    valid = index < tf.gather(video_frames, rows)[:, tf.newaxis]
    record = tf.broadcast_to(rows[:, tf.newaxis], tf.shape(index))
    quantized = []
    for name, size in zip(self.feature_names, self.feature_sizes):
      frames = frame_lists[name]
      # An empty last column stands for every frame past the end (it decodes to zeros).
      past_end = tf.shape(frames, out_type=tf.int64)[1]
      frames = tf.pad(frames, [[0, 0], [0, 1]])
      column = tf.where(valid, index, past_end)
      picked = tf.gather_nd(frames, tf.stack([record, column], axis=-1))
      quantized.append(tf.io.decode_raw(picked, tf.uint8, fixed_length=size))
    values = utils.Dequantize(tf.cast(tf.concat(quantized, axis=2), tf.float32))
    values = tf.where(valid[:, :, tf.newaxis], values, tf.zeros([], tf.float32))
    return tf.ensure_shape(values, [None, self.segment_size, sum(self.feature_sizes)])


def _first_failure(failures, record_of, names, video_ids):
  """One assert for several checks of the same items (records or ratings): it reports the
  first bad item, and for it the first failing check of `failures` [(bad mask, describe)],
  where describe(i) gives the message parts of item i and record_of(i) its record."""
  bad = tf.reduce_any(tf.stack([mask for mask, _ in failures]), axis=0)
  first = readers._first_true(bad)
  problem = tf.constant("")
  for mask, describe in reversed(failures):
    problem = tf.where(readers._at(mask, first, False), tf.strings.join(describe(first)),
                       problem)
  return readers._assert_records(tf.logical_not(tf.reduce_any(bad)), record_of(first), names,
                                 video_ids, problem)


def segment_reader(config, segment_size: int, every_segment: bool = False) -> SegmentReader:
  """The SegmentReader of a model configuration's features."""
  if not config.frame_features:
    raise utils.InputError("--segment_labels reads frame-level records: it needs "
                           "--frame_features and frame-level --feature_names (rgb,audio)")
  return SegmentReader(config.num_classes, list(config.feature_sizes),
                       list(config.feature_names), segment_size, every_segment)


# ----------------------------------------------------------------------------------------------
# Ranking and metrics (numpy).


def segment_ids(video_ids: Sequence[bytes], starts: Sequence[int]) -> List[bytes]:
  """`<video id>:<start frame>`, the challenge's segment id (video ids kept byte for byte)."""
  return [b"%s:%d" % (video_id, start) for video_id, start in zip(video_ids, starts)]


def rank_pairs(classes: np.ndarray, scores: np.ndarray,
               ids_of: Callable[[np.ndarray], Sequence[bytes]]) -> np.ndarray:
  """Order of (class, score, segment) pairs: by class, score descending, then segment id.

  ids_of(indices) returns the segment ids of the pairs at `indices`; it is called once, for
  the pairs whose class and score are tied, so that ranking millions of pairs needs no
  strings.
  """
  order = np.lexsort((-scores, classes))
  ranked_classes, ranked_scores = classes[order], scores[order]
  same = (ranked_classes[1:] == ranked_classes[:-1]) & (ranked_scores[1:] == ranked_scores[:-1])
  if same.any():
    in_run = np.concatenate([same, [False]]) | np.concatenate([[False], same])
    positions = np.flatnonzero(in_run)
    run = np.cumsum(~np.concatenate([[False], same]))[positions]   # a label per tie run
    tied = order[positions]
    _, id_rank = np.unique(np.array(list(ids_of(tied)), dtype=object), return_inverse=True)
    order[positions] = tied[np.lexsort((id_rank, run))]
  return order


def _group_bounds(sorted_classes: np.ndarray) -> np.ndarray:
  """Start of each pair's class run in a class-sorted array, per pair."""
  new_class = np.concatenate([[True], sorted_classes[1:] != sorted_classes[:-1]])
  run_starts = np.flatnonzero(new_class)
  return run_starts[np.cumsum(new_class) - 1]


def class_average_precisions(classes, scores, positive, ids_of, max_pred: int):
  """{class: AP} of the challenge: the class's pairs ranked (rank_pairs), cut at max_pred,
  AP = sum over the positives among them of the precision at their rank, divided by the
  class's number of positives (cut or not). Classes without a positive have no AP."""
  classes = np.asarray(classes, np.int64)
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  if not positive.any():
    return {}
  order = rank_pairs(classes, scores, ids_of)
  ranked_classes, ranked_positive = classes[order], positive[order]
  run_start = _group_bounds(ranked_classes)
  rank = np.arange(len(order)) - run_start
  hits_so_far = np.cumsum(ranked_positive)
  # The class's hits up to each rank: the running total minus the total before its run.
  class_hits = hits_so_far - np.concatenate([[0], hits_so_far])[run_start]
  counted = ranked_positive & (rank < max_pred)
  num_positives = np.bincount(classes[positive], minlength=int(classes.max()) + 1)
  precision_sums = np.bincount(ranked_classes[counted],
                               weights=class_hits[counted] / (rank[counted] + 1.0),
                               minlength=len(num_positives))
  return {int(c): float(precision_sums[c] / num_positives[c])
          for c in np.flatnonzero(num_positives)}


def rated_pairs_gap(predictions, labels, weights) -> float:
  """GAP over the rated (segment, class) pairs: their AP when ranked all together by score
  (ties in row-major order), counting as positives the rated pairs whose label is > 0."""
  rated = np.asarray(weights) > 0
  scores = np.asarray(predictions, np.float64)[rated]
  positive = np.asarray(labels)[rated] > 0
  if not positive.any():
    return 0.0
  ranked = positive[np.argsort(-scores, kind="stable")]
  hits = np.cumsum(ranked)
  return float(np.sum(hits[ranked] / (np.flatnonzero(ranked) + 1.0)) / hits[-1])


class SegmentMetrics:
  """Accumulates rated pairs over an evaluation; get() gives the segment MAP and the GAP.

  Only the rated pairs are kept (a few per video), not the predictions of every class.
  """

  def __init__(self, num_classes: int, max_pred: int, class_ids: Optional[Sequence[int]] = None):
    self.num_classes, self.max_pred = num_classes, max_pred
    self.class_ids = None if class_ids is None else np.asarray(sorted(set(class_ids)))
    self._columns = []   # per batch: (classes, scores, positive, segment ids)
    self.num_segments, self.sum_loss = 0, 0.0

  def accumulate(self, video_ids, starts, predictions, labels, weights, mean_loss: float):
    """Adds one batch of segments; returns the batch's rated-pair GAP."""
    rows, classes = np.nonzero(np.asarray(weights) > 0)
    predictions = np.asarray(predictions)
    self._columns.append((classes, predictions[rows, classes].astype(np.float64),
                          np.asarray(labels)[rows, classes] > 0,
                          np.array(segment_ids(np.asarray(video_ids)[rows].tolist(),
                                               np.asarray(starts)[rows].tolist()), dtype=object)))
    self.num_segments += len(predictions)
    self.sum_loss += float(mean_loss) * len(predictions)
    return rated_pairs_gap(predictions, labels, weights)

  def get(self):
    """{"segment_map", "aps" ({class: AP}), "gap", "avg_loss", "num_segments",
    "num_rated_pairs", "num_classes"}."""
    if not self._columns:
      raise ValueError("no segments were accumulated")
    classes, scores, positive, ids = (np.concatenate(column) for column in zip(*self._columns))
    self._columns = [(classes, scores, positive, ids)]
    gap = rated_pairs_gap(scores, positive, np.ones_like(scores))
    if self.class_ids is not None:
      keep = np.isin(classes, self.class_ids)
      classes, scores, positive, ids = classes[keep], scores[keep], positive[keep], ids[keep]
    aps = class_average_precisions(classes, scores, positive, lambda i: ids[i], self.max_pred)
    return {
        "segment_map": float(np.mean(list(aps.values()))) if aps else 0.0,
        "aps": aps,
        "gap": gap,
        "avg_loss": self.sum_loss / max(self.num_segments, 1),
        "num_segments": self.num_segments,
        "num_rated_pairs": int(len(self._columns[0][0])),
        "num_classes": len(aps),
    }


# ----------------------------------------------------------------------------------------------
# Each class's best segments, in bounded memory.


class ClassTopLists:
  """Each class's max_pred highest-scoring segments (ranked as rank_pairs), over a stream of
  any number of segments.

  Memory is bounded by classes x max_pred pairs (kept) plus as many again (candidates),
  whatever the number of videos: a segment's score enters the candidates only if it reaches
  its class's current max_pred-th best; the candidates are merged into the kept lists when
  they are as many as the kept pairs could be. Segments themselves are kept as one
  (video, start) row each (the score matrix is never stored).
  """

  def __init__(self, class_ids: Sequence[int], max_pred: int, min_candidates: int = 1 << 20):
    self.class_ids = np.asarray(class_ids, np.int64)
    self.max_pred = int(max_pred)
    self._capacity = max(len(self.class_ids) * self.max_pred, min_candidates)
    # The kept pairs, ranked: class position, score, segment index.
    self._kept = (np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64))
    self._candidates, self._num_candidates = [], 0
    self._threshold = np.full(len(self.class_ids), -np.inf)
    self._video_ids: List[bytes] = []
    self._segment_video, self._segment_start = [], []   # per batch
    self._segment_table = None   # the two concatenated, built when needed
    self.num_segments = 0

  def add(self, video_ids: Sequence[bytes], starts, scores):
    """Adds a batch of segments: their video ids and start frames [S], and scores [S, C]
    of the classes class_ids (in that order)."""
    scores = np.asarray(scores)
    first = self.num_segments
    video_index = self._index_videos(video_ids)
    self._segment_video.append(video_index)
    self._segment_start.append(np.asarray(starts, np.int64))
    self._segment_table = None
    self.num_segments += len(video_index)
    # Only a class whose best score in the batch reaches its threshold can gain segments, and
    # at most its max_pred best of the batch (with any ties at that cut: ids decide later).
    columns = np.flatnonzero(scores.max(axis=0, initial=-np.inf) >= self._threshold)
    if not len(columns):
      return
    scores = scores[:, columns]
    floor = self._threshold[columns]
    if len(scores) > self.max_pred:
      cut = len(scores) - self.max_pred
      floor = np.maximum(floor, np.partition(scores, cut, axis=0)[cut])
    rows, picked = np.nonzero(scores >= floor)
    self._candidates.append((columns[picked], scores[rows, picked].astype(np.float64),
                             rows + first))
    self._num_candidates += len(rows)
    # Until every list is full, thresholds are unknown: merge as soon as the candidates
    # outnumber the kept pairs (each pair is then merged a logarithmic number of times).
    filling = not np.all(np.isfinite(self._threshold))
    if self._num_candidates >= (len(self._kept[0]) if filling else self._capacity):
      self._merge_candidates()

  def _index_videos(self, video_ids) -> np.ndarray:
    """Video index of each segment; consecutive segments of one video share an index."""
    video_ids = np.asarray([bytes(v) for v in video_ids], dtype=object)
    if not len(video_ids):
      return np.zeros(0, np.int64)
    previous = self._video_ids[-1] if self._video_ids else None
    new_video = np.concatenate([[video_ids[0] != previous], video_ids[1:] != video_ids[:-1]])
    self._video_ids.extend(video_ids[new_video].tolist())
    return len(self._video_ids) - 1 - (np.count_nonzero(new_video) - np.cumsum(new_video))

  def _segment_ids(self, segments: np.ndarray) -> List[bytes]:
    if self._segment_table is None:
      self._segment_table = (np.concatenate(self._segment_video or [np.zeros(0, np.int64)]),
                             np.concatenate(self._segment_start or [np.zeros(0, np.int64)]))
      self._segment_video, self._segment_start = [self._segment_table[0]], [
          self._segment_table[1]]
    videos, starts = self._segment_table
    return segment_ids([self._video_ids[v] for v in videos[segments].tolist()],
                       starts[segments].tolist())

  def _merge_candidates(self):
    columns = [np.concatenate([kept] + [c[i] for c in self._candidates])
               for i, kept in enumerate(self._kept)]
    self._candidates, self._num_candidates = [], 0
    classes, scores, segments = columns
    order = rank_pairs(classes, scores, lambda i: self._segment_ids(segments[i]))
    classes, scores, segments = classes[order], scores[order], segments[order]
    keep = np.arange(len(classes)) - _group_bounds(classes) < self.max_pred if len(
        classes) else np.zeros(0, bool)
    self._kept = (classes[keep], scores[keep], segments[keep])
    classes, scores = self._kept[0], self._kept[1]
    counts = np.bincount(classes, minlength=len(self.class_ids))
    full = np.flatnonzero(counts >= self.max_pred)
    last_of_class = np.cumsum(counts) - 1
    # Below the max_pred-th best score a segment cannot enter; at it, its id decides.
    self._threshold[full] = scores[last_of_class[full]]

  def result(self):
    """[(class id, [segment ids, best first], [scores])] for every class, in class_ids order."""
    self._merge_candidates()
    classes, scores, segments = self._kept
    bounds = np.searchsorted(classes, np.arange(len(self.class_ids) + 1))
    ids = self._segment_ids(segments)
    return [(int(c), ids[bounds[i]:bounds[i + 1]], scores[bounds[i]:bounds[i + 1]].tolist())
            for i, c in enumerate(self.class_ids)]


# ----------------------------------------------------------------------------------------------
# Files: the class ids to predict, the submission, the parts of a sharded run.


def read_class_ids(path: str, num_classes: int) -> List[int]:
  """--segment_label_ids_file: class ids, one per line, sorted and de-duplicated. A first
  line that is not a number is a header (the starter code's segment_label_ids.csv starts
  with `Index`); empty lines are skipped."""
  try:
    with tf.io.gfile.GFile(path) as f:
      lines = f.read().splitlines()
  except (tf.errors.OpError, UnicodeDecodeError) as e:
    raise utils.InputError("cannot read --segment_label_ids_file=%s: %s" % (
        path, record_errors.error_message(e)))
  ids = set()
  for number, line in enumerate(lines, 1):
    text = line.strip()
    if not text:
      continue
    try:
      class_id = int(text)
    except ValueError:
      if not ids and number == 1:
        continue
      raise utils.InputError("%s: line %d: %r is not a class id" % (path, number, text))
    if not 0 <= class_id < num_classes:
      raise utils.InputError("%s: line %d: class %d is outside [0, %d) (check --num_classes)"
                             % (path, number, class_id, num_classes))
    ids.add(class_id)
  if not ids:
    raise utils.InputError("%s holds no class id" % path)
  return sorted(ids)


def format_rows(top_lists, with_scores: bool) -> Iterable[bytes]:
  """Lines `<class>,<segment id> <segment id> ...` (best first), or, for a part of a sharded
  run, `<class>,<segment id> <score> ...` with each score written exactly (repr)."""
  for class_id, ids, scores in top_lists:
    if with_scores:
      entries = [b"%s %s" % (segment, repr(score).encode()) for segment, score in
                 zip(ids, scores)]
    else:
      entries = ids
    yield b"%d,%s\n" % (class_id, b" ".join(entries))


def write_top_lists(output_file: str, top_lists, with_scores: bool):
  with fileio.atomic_output(output_file, "wb") as out:
    out.write(PART_HEADER if with_scores else SUBMISSION_HEADER)
    for line in format_rows(top_lists, with_scores):
      out.write(line)


def is_segment_part(path: str) -> bool:
  with open(path, "rb") as f:
    return f.readline() == PART_HEADER


def _parse_scored_row(line: bytes, part: str, number: int):
  class_text, _, entries = line.rstrip(b"\n").partition(b",")
  tokens = entries.split(b" ") if entries else []
  try:
    if len(tokens) % 2:
      raise ValueError("odd number of fields")
    return int(class_text), tokens[0::2], [float(t) for t in tokens[1::2]]
  except ValueError as e:
    raise utils.InputError("%s: line %d: not a segment part row (%s)" % (part, number, e))


def merge_parts(output_file: str, parts: Sequence[str], max_pred: int):
  """Joins the scored parts of a sharded run into the submission a single run would have
  written: per class, the parts' lists ranked together and cut at max_pred. The parts are
  read class by class in step, so memory holds one class of every part at a time."""
  files = [open(part, "rb") for part in parts]
  try:
    for part, f in zip(parts, files):
      if f.readline() != PART_HEADER:
        raise utils.InputError("%s: not a segment inference part (its header is not %s)" % (
            part, PART_HEADER.decode().strip()))
    with fileio.atomic_output(output_file, "wb") as out:
      out.write(SUBMISSION_HEADER)
      for number, lines in enumerate(_lines_in_step(parts, files), 2):
        rows = [_parse_scored_row(line, part, number) for part, line in zip(parts, lines)]
        class_ids = {row[0] for row in rows}
        if len(class_ids) > 1:
          raise utils.InputError("line %d of the parts holds different classes (%s): were they "
                                 "written with the same --segment_label_ids_file?" % (
                                     number, ", ".join(map(str, sorted(class_ids)))))
        ids = [i for row in rows for i in row[1]]
        scores = np.array([s for row in rows for s in row[2]], np.float64)
        order = rank_pairs(np.zeros(len(ids), np.int64), scores, lambda i: [ids[j] for j in i])
        out.write(b"%d,%s\n" % (rows[0][0], b" ".join(ids[j] for j in order[:max_pred])))
  finally:
    for f in files:
      f.close()


def _lines_in_step(parts, files):
  while True:
    lines = [f.readline() for f in files]
    if not any(lines):
      return
    if not all(lines):
      short = [part for part, line in zip(parts, lines) if not line]
      raise utils.InputError("%s ends before the other parts (an incomplete part?)" % short[0])
    yield lines


# ----------------------------------------------------------------------------------------------
# The eval.py and inference.py passes.


def prediction_function(model, loss_name="CrossEntropyLoss", alpha=0.5):
  """(video_matrix, num_frames, labels, label_weights) -> (predictions, mean rated loss)."""
  loss_fn = losses.get_loss(loss_name, alpha)

  @tf.function(autograph=False)
  def predict(video_matrix, num_frames, labels, label_weights):
    predictions = model(video_matrix, num_frames, training=False)["predictions"]
    return predictions, loss_fn.calculate_loss(predictions, labels, label_weights=label_weights)
  return predict


def evaluate(model, config, data_pattern, batch_size, num_readers, segment_size, max_pred,
             class_ids=None, loss_name="CrossEntropyLoss", alpha=0.5, step=0, writer=None,
             predict=None):
  """eval.py --segment_labels: the model over every rated segment of data_pattern; logs and
  returns SegmentMetrics.get() (and writes it to TensorBoard with a writer)."""
  model.segment_size = segment_size
  dataset = readers.get_input_dataset(segment_reader(config, segment_size), data_pattern,
                                      batch_size, num_readers=num_readers, shuffle=False,
                                      num_epochs=1)
  predict = predict or prediction_function(model, loss_name, alpha)
  metrics = SegmentMetrics(config.num_classes, max_pred, class_ids)
  start = time.time()
  try:
    for batch in dataset:
      predictions, loss = predict(batch["video_matrix"], batch["num_frames"], batch["labels"],
                                  batch["label_weights"])
      batch_gap = metrics.accumulate(
          batch["video_ids"].numpy(), batch["segment_start_times"].numpy(),
          predictions.numpy(), batch["labels"].numpy(), batch["label_weights"].numpy(),
          float(loss))
      rate = metrics.num_segments / max(time.time() - start, 1e-9)
      logging.info("segments_processed: %d | global_step %d | Batch GAP (rated pairs): %.3f | "
                   "Batch Loss: %.3f | Segments_per_sec: %.3f", metrics.num_segments, step,
                   batch_gap, float(loss), rate)
  except tf.errors.OpError as e:
    raise readers.describe_data_error(e, data_pattern)
  if metrics.num_segments == 0:
    raise utils.InputError("%s: no rated segments to evaluate (records without "
                           "segment_labels?)" % data_pattern)
  results = metrics.get()
  logging.info("epoch/eval number %d | Segment_MAP@%d: %.4f over %d classes | GAP (rated "
               "pairs): %.4f | Avg_Loss: %.6f | %d segments, %d rated pairs", step, max_pred,
               results["segment_map"], results["num_classes"], results["gap"],
               results["avg_loss"], results["num_segments"], results["num_rated_pairs"])
  if writer is not None:
    with writer.as_default(step=step):
      tf.summary.scalar("Epoch/SegEval_MAP", results["segment_map"])
      tf.summary.scalar("Epoch/SegEval_GAP", results["gap"])
      tf.summary.scalar("Epoch/SegEval_Avg_Loss", results["avg_loss"])
      tf.summary.scalar("GlobalStep/SegEval_Segment_Second", rate)
    writer.flush()
  return results


def predict(model, config, data_pattern, output_file, batch_size, num_readers, segment_size,
            class_ids, max_pred, task_index=0, num_tasks=1, skip_corrupt_records=False,
            jit_compile=False):
  """inference.py --segment_labels: scores every segment of every video of this task's part
  of data_pattern and writes the submission (one task) or a scored part (several tasks).
  Returns the number of segments."""
  model.segment_size = segment_size
  dataset = readers.get_input_dataset(
      segment_reader(config, segment_size, every_segment=True), data_pattern, batch_size,
      num_readers=num_readers, shuffle=False, num_epochs=1, num_shards=num_tasks,
      shard_index=task_index, skip_corrupt_records=skip_corrupt_records)
  columns = tf.constant(class_ids, tf.int32)

  @tf.function(autograph=False, jit_compile=jit_compile)
  def class_scores(video_matrix, num_frames):
    predictions = model(video_matrix, num_frames, training=False)["predictions"]
    return tf.gather(predictions, columns, axis=1)

  top_lists = ClassTopLists(class_ids, max_pred)
  start = time.time()
  try:
    for batch in dataset:
      scores = class_scores(batch["video_matrix"], batch["num_frames"])
      top_lists.add(batch["video_ids"].numpy(), batch["segment_start_times"].numpy(),
                    scores.numpy())
      logging.info("%d segments scored | %.1f segments/s", top_lists.num_segments,
                   top_lists.num_segments / max(time.time() - start, 1e-9))
  except tf.errors.OpError as e:
    raise readers.describe_data_error(e, data_pattern)
  write_top_lists(output_file, top_lists.result(), with_scores=num_tasks > 1)
  logging.info("wrote %s: the %d best of %d segments for each of %d classes in %.1f s",
               output_file, max_pred, top_lists.num_segments, len(class_ids),
               time.time() - start)
  return top_lists.num_segments
