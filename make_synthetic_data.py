"""Writes synthetic YouTube-8M-format data whose labels can be learned from the features.

Frame-level records are tf.train.SequenceExamples exactly like the real dataset's: context
`id` (or the 2017 name `video_id`) and `labels` (omitted for the test partition by default),
feature lists `rgb` (1024 bytes per frame) and `audio` (128 bytes per frame), uint8-quantized
so that utils.Dequantize recovers the values. Optional video-level tf.train.Examples hold
`mean_rgb` / `mean_audio`, the means of the dequantized frames. Files are named like the real
shards (train0000.tfrecord, validate0000.tfrecord, test0000.tfrecord), so the README's
`*a*??.tfrecord` selects train + validate and `test*.tfrecord` the test partition, and the
labels of every partition are also written to <output_dir>/<partition>_ground_truth.csv
(columns VideoId,Labels; labels space-separated) so that a test-set submission can be scored.

How the labels show in the features: every class has a fixed random prototype direction in
rgb space and one in audio space (classes come in families of 8 whose prototypes share a
component, so some classes are confusable); a video has 1 to 4 labels drawn with Zipf-like
class frequencies (class 0 the most frequent, every class present when there are enough
videos); each frame shows the prototype of one of the video's labels, chosen at random per
frame (or, with probability --background_fraction, none), plus Gaussian noise. A linear model
on the mean frame separates the classes well but not perfectly.

Segment-rated records (--segment_labels, the 2019 challenge's layout): each video is cut into
--segment_size-frame segments, each of which shows one of the video's labels (all its frames)
or, with probability --background_fraction, none, so a class is visible only in its segments.
Up to --segment_ratings full segments per video are rated for a label of the video (score 1 if
the segment shows it, else 0), a quarter of them for a second label as well; the records hold
the ratings as context features segment_labels / segment_start_times / segment_end_times /
segment_scores, and <partition>_segment_ground_truth.csv lists them (columns Segment,Class,Score
with Segment = <video id>:<start frame>), for the test partition too.

The output is a pure function of the flags: the same seed gives the same bytes. Class
prototypes depend only on (seed, num_classes), so the partitions of one seed share them.

Usage:
  python make_synthetic_data.py --output_dir=/tmp/yt8m --partition=train,validate,test \
      --num_videos=2000 --num_shards=4 --num_classes=100
"""
import csv
import os
import sys
import time
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np

import willow.tf_env  # noqa: F401  (TensorFlow's log level, before it loads)

RGB_SIZE = 1024
AUDIO_SIZE = 128
FEATURE_SIZE = RGB_SIZE + AUDIO_SIZE

# Quantization level of the value 0.0: Dequantize(q) = q * 4/255 - 1.9921875 = 0 at q = 127.
_ZERO_LEVEL = 127
_LEVELS_PER_UNIT = 255.0 / 4.0

_PARTITION_CODES = {"train": 0, "validate": 1, "test": 2}
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ID_BITS = 66  # 11 characters of 6 bits, like a YouTube id
_CHUNK_VIDEOS = 128  # videos synthesized per vectorized step (bounds memory)
_NOISE_POOL_FRAMES = 1024
_FAMILY_SIZE = 8


# ----------------------------------------------------------------------------------------------
# Protocol-buffer wire format. Building one tf.train.Feature message per frame through the
# protobuf API costs microseconds per frame; writing the bytes directly lets numpy lay out all
# frames of a video in one buffer. The tests check the result against tf.train parsing.


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    low = value & 0x7F
    value >>= 7
    if value:
      out.append(low | 0x80)
    else:
      out.append(low)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2): tag, length, payload."""
  return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _bytes_feature(values: Sequence[bytes]) -> bytes:
  # Feature.bytes_list = 1; BytesList.value = 1.
  return _field(1, b"".join(_field(1, v) for v in values))


def _float_feature(values: np.ndarray) -> bytes:
  # Feature.float_list = 2; FloatList.value = 1, packed little-endian float32.
  return _field(2, _field(1, np.asarray(values, dtype="<f4").tobytes()))


def _int64_feature(values: Sequence[int]) -> bytes:
  # Feature.int64_list = 3; Int64List.value = 1, packed varints (labels are non-negative).
  return _field(3, _field(1, b"".join(_varint(int(v)) for v in values)))


def _map_entries(entries) -> bytes:
  """Features.feature / FeatureLists.feature_list map: entry{key = 1, value = 2} per item."""
  return b"".join(_field(1, _field(1, key.encode()) + _field(2, value)) for key, value in entries)


def _frame_prefix(size: int) -> bytes:
  """Bytes preceding each frame's data inside a FeatureList (identical for every frame)."""
  bytes_list_header = _varint((1 << 3) | 2) + _varint(size)
  bytes_list_length = len(bytes_list_header) + size
  feature_header = _varint((1 << 3) | 2) + _varint(bytes_list_length)
  feature_length = len(feature_header) + bytes_list_length
  # FeatureList.feature = 1 holds the Feature; Feature.bytes_list = 1 holds the BytesList.
  return (_varint((1 << 3) | 2) + _varint(feature_length) + feature_header
          + bytes_list_header)


def _sequence_example(context: bytes, feature_lists: bytes) -> bytes:
  # SequenceExample.context = 1, feature_lists = 2.
  return _field(1, context) + _field(2, feature_lists)


def _example(features: bytes) -> bytes:
  # Example.features = 1.
  return _field(1, features)


# ----------------------------------------------------------------------------------------------
# Ids, labels, prototypes.


def _partition_code(partition: str) -> int:
  if partition in _PARTITION_CODES:
    return _PARTITION_CODES[partition]
  return 3 + zlib.crc32(partition.encode()) % ((1 << 26) - 3)


def video_ids(seed: int, partition: str, num_videos: int) -> List[str]:
  """YouTube-like 11-character ids, distinct across the partitions of one seed.

  (partition, index) is packed into a 66-bit integer and scrambled by a seed-keyed bijection,
  so ids never collide yet look random.
  """
  mask = (1 << _ID_BITS) - 1
  key = int(np.random.default_rng([seed, 99]).integers(0, 1 << 62)) << 4
  code = _partition_code(partition) << 40
  ids = []
  for index in range(num_videos):
    x = code | index
    x = (x * 0x2545F4914F6CDD1D) & mask   # odd multipliers and xor-shifts are invertible
    x ^= x >> 29
    x = (x * 0x1B873593A5B3C2D) & mask
    x ^= x >> 32
    x ^= key & mask
    ids.append("".join(_ID_ALPHABET[(x >> shift) & 63] for shift in range(60, -1, -6)))
  return ids


def class_frequencies(num_classes: int, zipf_exponent: float) -> np.ndarray:
  """Zipf-like class probabilities, class 0 the most frequent."""
  weights = 1.0 / np.arange(1, num_classes + 1, dtype=np.float64) ** zipf_exponent
  return weights / weights.sum()


def assign_labels(rng: np.random.Generator, num_videos: int, num_classes: int,
                  max_labels: int = 4, zipf_exponent: float = 0.8) -> List[List[int]]:
  """1..max_labels distinct labels per video; every class appears when possible.

  Class c is first given to video perm[c % num_videos] (so with at least
  num_classes / max_labels videos every class is present), then videos are topped up to
  their drawn label count with Zipf-distributed classes.
  """
  label_counts = rng.integers(1, max_labels + 1, size=num_videos)
  labels = [[] for _ in range(num_videos)]
  if num_videos == 0:
    return labels
  owners = rng.permutation(num_videos)
  for c in range(num_classes):
    labels[owners[c % num_videos]].append(c)
  cumulative = np.cumsum(class_frequencies(num_classes, zipf_exponent))
  draws = rng.random((num_videos, 4 * max_labels)) * cumulative[-1]
  candidates = np.searchsorted(cumulative, draws)
  candidates = np.minimum(candidates, num_classes - 1)
  for video, row in enumerate(candidates):
    chosen = labels[video]
    for c in row:
      if len(chosen) >= label_counts[video]:
        break
      if c not in chosen:
        chosen.append(int(c))
    chosen.sort()
  return labels


def class_prototypes(num_classes: int, seed: int, feature_size: int,
                     family_share: float = 0.3) -> np.ndarray:
  """[num_classes, feature_size] unit vectors; classes in a family share a component.

  Two classes of the same family (8 random classes) have cosine ~family_share, others ~0.
  """
  rng = np.random.default_rng([seed, 7, feature_size, num_classes])
  num_families = -(-num_classes // _FAMILY_SIZE)
  family = rng.permutation(num_classes) // _FAMILY_SIZE
  shared = rng.standard_normal((num_families, feature_size))
  own = rng.standard_normal((num_classes, feature_size))
  shared /= np.linalg.norm(shared, axis=1, keepdims=True)
  own /= np.linalg.norm(own, axis=1, keepdims=True)
  vectors = np.sqrt(family_share) * shared[family] + np.sqrt(1.0 - family_share) * own
  return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _quantized_signals(num_classes: int, seed: int, signal_strength: float) -> np.ndarray:
  """[num_classes + 1, 1152] int16 per-class offsets in quantization levels.

  Each feature's prototype is scaled to a per-dimension RMS of signal_strength (in dequantized
  units). The extra last row is zero: the "background" frames that show no class.
  """
  rows = []
  for size in (RGB_SIZE, AUDIO_SIZE):
    unit = class_prototypes(num_classes, seed, size)
    rows.append(unit * (signal_strength * np.sqrt(size) * _LEVELS_PER_UNIT))
  signals = np.rint(np.concatenate(rows, axis=1)).astype(np.int16)
  return np.concatenate([signals, np.zeros((1, FEATURE_SIZE), np.int16)], axis=0)


# ----------------------------------------------------------------------------------------------
# Frames.


def _noise_pool(rng: np.random.Generator, noise_std: float, margin: int) -> np.ndarray:
  """[pool, 1152] uint8 noisy frames around level 127, kept within [margin, 255 - margin].

  The margin lets a class offset of at most `margin` levels be added in uint8 arithmetic
  without wrapping, so a frame costs two gathers and one byte add.
  """
  noise = rng.standard_normal((_NOISE_POOL_FRAMES, FEATURE_SIZE), dtype=np.float32)
  levels = np.rint(_ZERO_LEVEL + noise * (noise_std * _LEVELS_PER_UNIT))
  return np.clip(levels, margin, 255 - margin).astype(np.uint8)


def _synthesize_frames(rng, labels, frame_counts, signals, noise_std, background_fraction,
                       shown=None):
  """Quantized frames of a group of videos, concatenated: [sum(frame_counts), 1152] uint8.

  signals: _quantized_signals output (int16 class offsets, last row zero).
  shown: the class each frame shows (num_classes: none), or None to draw it per frame.
  """
  num_classes = signals.shape[0] - 1
  pool = _noise_pool(rng, noise_std, margin=int(np.abs(signals).max()))
  offsets = signals.astype(np.uint8)  # two's complement: -3 -> 253
  total = int(frame_counts.sum())
  if shown is not None:
    noise_rows = rng.integers(0, _NOISE_POOL_FRAMES, size=total)
    return np.add(pool[noise_rows], offsets[shown], dtype=np.uint8)
  video_of_frame = np.repeat(np.arange(len(labels)), frame_counts)
  max_labels = max(1, max((len(l) for l in labels), default=1))
  # Per frame: one of its video's labels at random, or the zero "background" row.
  padded = np.full((len(labels), max_labels), num_classes, dtype=np.int64)
  counts = np.zeros(len(labels), dtype=np.int64)
  for v, video_labels in enumerate(labels):
    padded[v, :len(video_labels)] = video_labels
    counts[v] = len(video_labels)
  pick = (rng.random(total) * np.maximum(counts[video_of_frame], 1)).astype(np.int64)
  shown = padded[video_of_frame, pick]
  shown[counts[video_of_frame] == 0] = num_classes
  shown[rng.random(total) < background_fraction] = num_classes
  noise_rows = rng.integers(0, _NOISE_POOL_FRAMES, size=total)
  # Wrapping uint8 add of the two's-complement offset equals the true sum (no overflow, see
  # _noise_pool), i.e. the quantized value of prototype + noise.
  return np.add(pool[noise_rows], offsets[shown], dtype=np.uint8)


def _feature_list_rows(frames: np.ndarray) -> np.ndarray:
  """[T, size] uint8 frames -> [T, prefix + size] uint8: each row is one serialized Feature."""
  prefix = np.frombuffer(_frame_prefix(frames.shape[1]), dtype=np.uint8)
  rows = np.empty((frames.shape[0], len(prefix) + frames.shape[1]), dtype=np.uint8)
  rows[:, :len(prefix)] = prefix
  rows[:, len(prefix):] = frames
  return rows


def _dequantized_means(frames: np.ndarray, frame_counts: np.ndarray) -> np.ndarray:
  """Per-video means of the dequantized frames: [num_videos, 1152] float32."""
  means = np.zeros((len(frame_counts), frames.shape[1]), np.float32)
  has_frames = frame_counts > 0   # reduceat cannot express an empty segment
  if np.any(has_frames):
    starts = (np.cumsum(frame_counts) - frame_counts)[has_frames]
    sums = np.add.reduceat(frames, starts, axis=0, dtype=np.float64)
    mean_levels = sums / frame_counts[has_frames][:, None]
    means[has_frames] = mean_levels * (4.0 / 255.0) + (4.0 / 512.0 - 2.0)
  return means


# ----------------------------------------------------------------------------------------------
# Partitions.


def shard_path(directory: str, partition: str, shard: int) -> str:
  return os.path.join(directory, "%s%04d.tfrecord" % (partition, shard))


def ground_truth_path(directory: str, partition: str) -> str:
  return os.path.join(directory, "%s_ground_truth.csv" % partition)


def write_ground_truth(path: str, ground_truth: Dict[str, List[int]]):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["VideoId", "Labels"])
    for video_id, labels in ground_truth.items():
      writer.writerow([video_id, " ".join(str(l) for l in labels)])


def segment_ground_truth_path(directory: str, partition: str) -> str:
  return os.path.join(directory, "%s_segment_ground_truth.csv" % partition)


def write_segment_ground_truth(path: str, ids: List[str], ratings):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["Segment", "Class", "Score"])
    for video_id, video_ratings in zip(ids, ratings):
      for start, label, score in video_ratings:
        writer.writerow(["%s:%d" % (video_id, start), label, "%.1f" % score])


def load_segment_ground_truth(path: str) -> Dict[tuple, float]:
  """Reads a <partition>_segment_ground_truth.csv into {(segment id, class): score}."""
  with open(path, newline="") as f:
    return {(row["Segment"], int(row["Class"])): float(row["Score"])
            for row in csv.DictReader(f)}


def segment_truth(rng: np.random.Generator, labels: List[List[int]], frame_counts: np.ndarray,
                  num_classes: int, segment_size: int, background_fraction: float,
                  ratings_per_video: int):
  """(shown, ratings): per video, the class each segment shows (num_classes: none) and its
  ratings [(start frame, class, score)] sorted by start, then class."""
  shown, ratings = [], []
  for video_labels, count in zip(labels, frame_counts):
    num_segments = -(-int(count) // segment_size)
    video_shown = np.asarray(video_labels)[rng.integers(0, len(video_labels),
                                                        size=num_segments)]
    video_shown[rng.random(num_segments) < background_fraction] = num_classes
    full_segments = int(count) // segment_size
    rated = rng.permutation(full_segments)[:ratings_per_video]
    video_ratings = []
    for segment in rated:
      asked = rng.permutation(video_labels)
      # A quarter of the rated segments are rated for a second label of the video too.
      for label in asked[:1 + (len(asked) > 1 and rng.random() < 0.25)]:
        video_ratings.append((int(segment) * segment_size, int(label),
                              float(video_shown[segment] == label)))
    shown.append(video_shown)
    ratings.append(sorted(video_ratings))
  return shown, ratings


def load_ground_truth(path: str) -> Dict[str, List[int]]:
  """Reads a <partition>_ground_truth.csv back into {video id: sorted labels}."""
  with open(path, newline="") as f:
    return {row["VideoId"]: [int(l) for l in row["Labels"].split()]
            for row in csv.DictReader(f)}


def generate_partition(output_dir: str, partition: str, num_videos: int, num_shards: int = 1,
                       num_classes: int = 4716, seed: int = 0, id_key: str = "id",
                       with_labels: Optional[bool] = None, frame_level: bool = True,
                       video_level: bool = False, video_level_dir: Optional[str] = None,
                       min_frames: int = 10, max_frames_gen: int = 360,
                       signal_strength: float = 0.05, noise_std: float = 0.5,
                       background_fraction: float = 0.25, max_labels: int = 4,
                       zipf_exponent: float = 0.8, segment_labels: bool = False,
                       segment_size: int = 5, segment_ratings: int = 5
                       ) -> Dict[str, List[int]]:
  """Writes one partition's shards and ground truth; returns {video id: sorted labels}.

  Args:
    output_dir: directory of the frame-level shards and the ground-truth CSV (created).
    partition: "train", "validate", "test" (any name works: it prefixes the file names).
    num_videos: videos in the partition, split into num_shards contiguous shards.
    num_shards: number of files <partition>0000.tfrecord, ...
    num_classes: vocabulary size V; labels lie in [0, V).
    seed: everything is a deterministic function of the arguments.
    id_key: context key of the video id, "id" (2018+) or "video_id" (2017).
    with_labels: store labels in the records; None = all partitions except "test".
    frame_level: write frame-level SequenceExamples to output_dir.
    video_level: write video-level Examples (mean_rgb, mean_audio) to video_level_dir.
    video_level_dir: default output_dir/video_level if frame_level else output_dir.
    min_frames, max_frames_gen: video lengths are uniform in [min_frames, max_frames_gen].
    signal_strength: per-dimension RMS of the class signal, in dequantized units.
    noise_std: per-dimension standard deviation of the frame noise.
    background_fraction: probability that a frame shows no class.
    max_labels: labels per video are uniform in [1, max_labels].
    zipf_exponent: class c is drawn with probability proportional to 1 / (c + 1)^exponent.
    segment_labels: segment-rated records (see the module docstring); their ratings are
      written to <partition>_segment_ground_truth.csv as well.
    segment_size: frames per segment.
    segment_ratings: rated segments per video (at most; only full segments are rated).

  Returns:
    {video id: sorted label list} in record order (file order, then record order).

  Raises:
    ValueError: invalid arguments.
  """
  _check_arguments(num_videos, num_shards, num_classes, id_key, min_frames, max_frames_gen,
                   max_labels, frame_level, video_level)
  if segment_labels and (segment_size < 1 or segment_ratings < 0):
    raise ValueError("need segment_size >= 1 and segment_ratings >= 0, got %d and %d"
                     % (segment_size, segment_ratings))
  if with_labels is None:
    with_labels = partition != "test"
  if video_level_dir is None:
    video_level_dir = os.path.join(output_dir, "video_level") if frame_level else output_dir
  os.makedirs(output_dir, exist_ok=True)
  if video_level:
    os.makedirs(video_level_dir, exist_ok=True)

  code = _partition_code(partition)
  ids = video_ids(seed, partition, num_videos)
  labels = assign_labels(np.random.default_rng([seed, code, 1]), num_videos, num_classes,
                         max_labels, zipf_exponent)
  frame_counts = np.random.default_rng([seed, code, 2]).integers(
      min_frames, max_frames_gen + 1, size=num_videos)
  frame_rng = np.random.default_rng([seed, code, 3])
  signals = _quantized_signals(num_classes, seed, signal_strength)
  shown = ratings = None
  if segment_labels:
    shown, ratings = segment_truth(np.random.default_rng([seed, code, 4]), labels, frame_counts,
                                   num_classes, segment_size, background_fraction,
                                   segment_ratings)
    shown = [np.repeat(s, segment_size)[:count] for s, count in zip(shown, frame_counts)]
  if np.abs(signals).max() > 100:
    raise ValueError("signal_strength %g is too large for the uint8 range" % signal_strength)

  import tensorflow as tf  # only for TFRecord framing; imported late to keep --help fast
  shards = np.array_split(np.arange(num_videos), num_shards)
  for shard, members in enumerate(shards):
    frame_writer = (tf.io.TFRecordWriter(shard_path(output_dir, partition, shard))
                    if frame_level else None)
    video_writer = (tf.io.TFRecordWriter(shard_path(video_level_dir, partition, shard))
                    if video_level else None)
    for start in range(0, len(members), _CHUNK_VIDEOS):
      chunk = members[start:start + _CHUNK_VIDEOS]
      _write_chunk(frame_rng, chunk, ids, labels, frame_counts, signals, noise_std,
                   background_fraction, id_key, with_labels, frame_writer, video_writer,
                   shown, ratings, segment_size)
    for writer in (frame_writer, video_writer):
      if writer is not None:
        writer.close()

  ground_truth = {ids[v]: labels[v] for v in range(num_videos)}
  write_ground_truth(ground_truth_path(output_dir, partition), ground_truth)
  if segment_labels:
    write_segment_ground_truth(segment_ground_truth_path(output_dir, partition), ids, ratings)
  return ground_truth


def _write_chunk(rng, chunk, ids, labels, frame_counts, signals, noise_std, background_fraction,
                 id_key, with_labels, frame_writer, video_writer, shown=None, ratings=None,
                 segment_size=5):
  """Synthesizes and writes the records of the videos `chunk` (indices); shown / ratings:
  segment_truth's, per frame, for segment-rated records."""
  counts = frame_counts[chunk]
  frames = _synthesize_frames(rng, [labels[v] for v in chunk], counts, signals, noise_std,
                              background_fraction,
                              None if shown is None else np.concatenate(
                                  [shown[v] for v in chunk] + [np.zeros(0, np.int64)]))
  ends = np.cumsum(counts)
  rgb_rows = _feature_list_rows(frames[:, :RGB_SIZE])
  audio_rows = _feature_list_rows(frames[:, RGB_SIZE:])
  means = _dequantized_means(frames, counts) if video_writer is not None else None
  for i, video in enumerate(chunk):
    context = [(id_key, _bytes_feature([ids[video].encode()]))]
    if with_labels:
      context.append(("labels", _int64_feature(labels[video])))
      if ratings is not None:
        context.extend(_rating_features(ratings[video], segment_size))
    if frame_writer is not None:
      begin, end = ends[i] - counts[i], ends[i]
      feature_lists = _map_entries([("rgb", rgb_rows[begin:end].tobytes()),
                                    ("audio", audio_rows[begin:end].tobytes())])
      frame_writer.write(_sequence_example(_map_entries(context), feature_lists))
    if video_writer is not None:
      features = context + [("mean_rgb", _float_feature(means[i, :RGB_SIZE])),
                            ("mean_audio", _float_feature(means[i, RGB_SIZE:]))]
      video_writer.write(_example(_map_entries(features)))


def _rating_features(video_ratings, segment_size: int):
  starts = [start for start, _, _ in video_ratings]
  return [("segment_labels", _int64_feature([label for _, label, _ in video_ratings])),
          ("segment_start_times", _int64_feature(starts)),
          ("segment_end_times", _int64_feature([start + segment_size for start in starts])),
          ("segment_scores", _float_feature([score for _, _, score in video_ratings]))]


def _check_arguments(num_videos, num_shards, num_classes, id_key, min_frames, max_frames_gen,
                     max_labels, frame_level, video_level):
  if num_videos < 0:
    raise ValueError("num_videos must be >= 0, got %d" % num_videos)
  if num_shards < 1:
    raise ValueError("num_shards must be >= 1, got %d" % num_shards)
  if num_classes < 1:
    raise ValueError("num_classes must be >= 1, got %d" % num_classes)
  if id_key not in ("id", "video_id"):
    raise ValueError("id_key must be id or video_id, got %r" % id_key)
  if not 0 <= min_frames <= max_frames_gen:
    raise ValueError("need 0 <= min_frames <= max_frames_gen, got %d and %d"
                     % (min_frames, max_frames_gen))
  if max_labels < 1:
    raise ValueError("max_labels must be >= 1, got %d" % max_labels)
  if not (frame_level or video_level):
    raise ValueError("nothing to write: frame_level and video_level are both false")


# ----------------------------------------------------------------------------------------------
# Command line.


def _define_flags():
  from absl import flags
  flags.DEFINE_string("output_dir", None, "Directory of the shards and ground-truth CSVs.")
  flags.DEFINE_list("partition", ["train"],
                    "Comma-separated partitions to write, e.g. train,validate,test.")
  flags.DEFINE_integer("num_videos", 1000, "Videos per partition.")
  flags.DEFINE_integer("num_shards", 4, "Files per partition.")
  flags.DEFINE_integer("num_classes", 4716, "Vocabulary size V.")
  flags.DEFINE_enum("id_key", "id", ["id", "video_id"],
                    "Context key of the video id: id (2018+ dataset) or video_id (2017).")
  flags.DEFINE_enum("with_labels", "auto", ["auto", "true", "false"],
                    "Store labels in the records; auto = all partitions except test.",
                    case_sensitive=False)
  flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same bytes.")
  flags.DEFINE_bool("frame_level", True, "Write frame-level SequenceExamples (rgb, audio).")
  flags.DEFINE_bool("video_level", False,
                    "Also write video-level Examples (mean_rgb, mean_audio).")
  flags.DEFINE_string("video_level_dir", None,
                      "Where video-level files go; default <output_dir>/video_level, or "
                      "<output_dir> itself with --noframe_level.")
  flags.DEFINE_integer("min_frames", 10, "Shortest video, in frames.")
  flags.DEFINE_integer("max_frames_gen", 360,
                       "Longest video, in frames (above 300 exercises the readers' truncation).")
  flags.DEFINE_float("signal_strength", 0.05,
                     "Per-dimension RMS of the class signal in a frame (dequantized units).")
  flags.DEFINE_float("noise_std", 0.5, "Per-dimension standard deviation of the frame noise.")
  flags.DEFINE_float("background_fraction", 0.25, "Share of frames that show no class.")
  flags.DEFINE_integer("max_labels", 4, "Labels per video are uniform in [1, max_labels].")
  flags.DEFINE_float("zipf_exponent", 0.8, "Class frequency ~ 1 / (class + 1)^exponent.")
  flags.DEFINE_bool("segment_labels", False,
                    "Segment-rated records (the 2019 challenge's layout): classes visible only "
                    "in their segments, ratings in the records and in "
                    "<partition>_segment_ground_truth.csv.")
  flags.DEFINE_integer("segment_size", 5, "Frames per segment (--segment_labels).")
  flags.DEFINE_integer("segment_ratings", 5,
                       "Rated segments per video, at most (--segment_labels).")
  flags.mark_flag_as_required("output_dir")


def main(argv):
  del argv
  from absl import flags
  flags_ = flags.FLAGS
  with_labels = {"auto": None, "true": True, "false": False}[flags_.with_labels.lower()]
  for partition in flags_.partition:
    start = time.time()
    try:
      truth = generate_partition(
          flags_.output_dir, partition, flags_.num_videos, num_shards=flags_.num_shards,
          num_classes=flags_.num_classes, seed=flags_.seed, id_key=flags_.id_key,
          with_labels=with_labels, frame_level=flags_.frame_level,
          video_level=flags_.video_level, video_level_dir=flags_.video_level_dir,
          min_frames=flags_.min_frames, max_frames_gen=flags_.max_frames_gen,
          signal_strength=flags_.signal_strength, noise_std=flags_.noise_std,
          background_fraction=flags_.background_fraction, max_labels=flags_.max_labels,
          zipf_exponent=flags_.zipf_exponent, segment_labels=flags_.segment_labels,
          segment_size=flags_.segment_size, segment_ratings=flags_.segment_ratings)
    except (ValueError, OSError) as e:
      print("error: %s" % e, file=sys.stderr)
      return 1
    print("wrote %d %s videos in %d shards to %s (%.1f s)"
          % (len(truth), partition, flags_.num_shards, flags_.output_dir, time.time() - start))
  return 0


if __name__ == "__main__":
  from absl import app
  _define_flags()  # here, not at import: importers may define flags of the same names
  app.run(main)
