"""Blends per-model prediction CSVs into one submission (WILLOW's file_averaging.py).

Each input is a CSV written by inference.py (`VideoId,LabelConfidencePairs`, then
`<id>,<label> <score> ...`). The blended score of a (video, label) is
sum_m(w_m * s_m) / sum_m(w_m), summed in the order the inputs are given, where a label absent
from a model's row (or a video absent from a model's file) counts 0 for that model. Every video
gets the `top_k` labels with the largest blended score, sorted by score descending; equal scores
are ordered by the smaller class index first. Rows are written in the order in which their video
id first appears across the inputs (taken in the order given). An input of weight 0 is dropped:
it is not read, and its videos are not listed unless another input has them.

This is the original WILLOW file_averaging.py algorithm with its defects fixed: ids are opaque
strings, every pair of every row is read, scores are summed as float64 and written with "%.6f",
the header is inference.py's, and the defaults are the seven files the README's inference lines
write. See docs/file_averaging.md.

Usage:
  python file_averaging.py [--inputs=a.csv=1,b.csv=0.5] [--input_dir=DIR]
      [--output_file=WILLOW_submission.csv] [--top_k=20] [--num_classes=4716]
"""
import concurrent.futures
import dataclasses
import os
import sys
from typing import List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from willow import fileio
from willow import readme_configs
from willow import submission_csv
from willow.fileio import InputError
from willow.submission_csv import PredictionFile, parse_prediction_file  # noqa: F401 (API)

DEFAULT_OUTPUT_FILE = "WILLOW_submission.csv"
DEFAULT_TOP_K = 20
DEFAULT_NUM_CLASSES = 4716
# Videos are blended in blocks of about this many (video, candidate) cells (1,500 videos of
# 7 x 50 pairs): the per-block arrays then stay within a few MB.
BLEND_BLOCK_CELLS = 1 << 19
WRITE_BLOCK_VIDEOS = 8192


@dataclasses.dataclass
class Blend:
  """The blended top-k of every video, in output order (first appearance across the inputs).

  Row v lists `counts[v]` pairs, best first: `labels[v, :counts[v]]` with blended scores
  `scores[v, :counts[v]]` (the rest of the row is padding: -1 and nan).
  """
  video_ids: np.ndarray  # numpy bytes ('S') array
  labels: np.ndarray  # int32 (num_videos, top_k)
  scores: np.ndarray  # float64 (num_videos, top_k)
  counts: np.ndarray  # int32 (num_videos,)
  total_weight: float


# ---------------------------------------------------------------------------------------------
# Arguments.


def parse_inputs_flag(text: str) -> List[Tuple[str, float]]:
  """Parses `a.csv=1,b.csv=0.5` (a file without `=WEIGHT` has weight 1)."""
  inputs = []
  for item in text.split(","):
    item = item.strip()
    if not item:
      raise InputError("--inputs has an empty entry in %r" % text)
    path, sep, weight = item.rpartition("=")
    if not sep:
      path, weight = item, "1"
    try:
      value = float(weight)
    except ValueError:
      raise InputError("--inputs: weight %r of %s is not a number" % (weight, path))
    inputs.append((path, value))
  return inputs


def default_inputs() -> List[Tuple[str, float]]:
  """The seven CSVs the README's inference commands write, each with weight 1."""
  return [(name, 1.0) for name in readme_configs.README_INFERENCE_OUTPUTS]


def _check_arguments(inputs: Sequence[Tuple[str, float]], top_k: int, num_classes: int) -> None:
  if not inputs:
    raise InputError("no input files")
  for path, weight in inputs:
    if not np.isfinite(weight) or weight < 0:
      raise InputError("%s: weight %r must be a finite number >= 0" % (path, weight))
  if not sum(weight for _, weight in inputs) > 0:
    raise InputError("the total weight of the inputs must be positive, got %r"
                     % sum(weight for _, weight in inputs))
  if top_k <= 0:
    raise InputError("top_k must be positive, got %d" % top_k)
  if not 0 < num_classes < 2**31:
    raise InputError("num_classes must be in [1, 2**31), got %d" % num_classes)
  for path, _ in inputs:  # also those of weight 0, which are not read
    if not os.path.isfile(path):
      raise InputError("%s: input file not found" % path)


# ---------------------------------------------------------------------------------------------
# Blending.


class _Source:
  """One parsed input placed in a blend block: its pairs by video, and its grid columns
  [first_column, first_column + width), width being its longest row."""

  def __init__(self, parsed: PredictionFile, video_codes: np.ndarray, num_videos: int,
               weight: float, first_column: int):
    self.parsed, self.weight, self.first_column = parsed, weight, first_column
    self.width = int(parsed.pair_counts.max(initial=0))
    # Rows of equal length (what inference.py writes) are a (rows, width) grid: a block's pairs
    # are then one row gather.
    self.uniform = self.width > 0 and bool((parsed.pair_counts == self.width).all())
    self.pair_starts = parsed.pair_starts
    self.scale = submission_csv.MICRO if parsed.scores_are_micro else 1
    self.row_of_video = np.full(num_videos, -1, np.int64)  # -1: not in this input
    self.row_of_video[video_codes] = np.arange(len(video_codes))

  def fill(self, first: int, last: int, keys: np.ndarray, contributions: np.ndarray,
           shift: int) -> None:
    """Writes the pairs of videos [first, last) into this input's columns of a block: key
    (label << shift) | column, contribution weight * score (cells left as they are: pads)."""
    rows = self.row_of_video[first:last]
    labels, scores, key_type = self.parsed.labels, self.parsed.scores, keys.dtype.type
    if self.uniform:  # row gathers into plain slices, much cheaper than a scatter
      columns = slice(self.first_column, self.first_column + self.width)
      missing = np.flatnonzero(rows < 0)  # they gather the last row, then get their pads back
      pads = keys[missing, columns]
      np.left_shift(np.take(labels.reshape(-1, self.width), rows, axis=0), key_type(shift),
                    out=keys[:, columns], dtype=keys.dtype, casting="unsafe")
      keys[:, columns] |= np.arange(columns.start, columns.stop, dtype=keys.dtype)
      np.divide(np.take(scores.reshape(-1, self.width), rows, axis=0), self.scale,
                out=contributions[:, columns])  # exactly float(token)
      if self.weight != 1:
        contributions[:, columns] *= self.weight
      keys[missing, columns], contributions[missing, columns] = pads, -np.inf
      return
    counts = np.where(rows >= 0, self.parsed.pair_counts[rows], 0)
    ends = np.cumsum(counts)
    within = np.arange(ends[-1]) - np.repeat(ends - counts, counts)  # pair index in its row
    pairs = np.repeat(self.pair_starts[rows], counts) + within
    videos, columns = np.repeat(np.arange(len(rows)), counts), self.first_column + within
    keys[videos, columns] = ((labels[pairs].astype(keys.dtype) << key_type(shift))
                             | columns.astype(keys.dtype))
    contributions[videos, columns] = scores[pairs] / self.scale * self.weight


def _sum_runs_in_order(values: np.ndarray, continues: np.ndarray) -> None:
  """Turns the last value of each run into v1 + v2 + ... summed left to right, in place.

  continues[i]: values[i] belongs to the run of values[i - 1] (consumed). As the original's loop
  over the inputs (float addition is not associative), each round adds the running sum into
  the values whose predecessor holds it already; runs hold at most one value per input.
  """
  pending = np.flatnonzero(continues)
  while len(pending):
    ready = ~continues[pending - 1]
    now = pending[ready]
    values[now] += values[now - 1]
    continues[now] = False
    pending = pending[~ready]


def _top_k_rows(sums: np.ndarray, labels: np.ndarray, top_k: int, out_labels: np.ndarray,
                out_scores: np.ndarray) -> None:
  """Per row of a (videos, candidates) grid, the top_k cells by score desc, then label asc.

  Each row's labels ascend; cells holding -inf are never chosen; out_* rows are padded with -1
  and nan. Rows with exactly top_k cells at or above their k-th largest score (no tie straddling
  the cut) sort only those cells; the others sort all their cells.
  """
  width = sums.shape[1]
  groups = [(np.arange(len(sums)), sums, labels)]
  if width > top_k:
    kth = np.partition(sums, width - top_k, axis=1)[:, width - top_k:width - top_k + 1]
    chosen = sums >= kth
    regular = (np.count_nonzero(chosen, axis=1) == top_k) & (kth[:, 0] > -np.inf)
    rows, rest = np.flatnonzero(regular), np.flatnonzero(~regular)
    chosen = chosen[rows]  # a boolean compaction keeps the cells in label order
    groups = [(rows, sums[rows][chosen].reshape(-1, top_k),
               labels[rows][chosen].reshape(-1, top_k)), (rest, sums[rest], labels[rest])]
  for rows, row_sums, row_labels in groups:
    order = np.argsort(-row_sums, axis=1, kind="stable")[:, :top_k]  # ties: smaller label
    best = np.take_along_axis(row_sums, order, axis=1)
    present = best > -np.inf
    out_scores[rows, :best.shape[1]] = np.where(present, best + 0.0, np.nan)  # 0 + -0.0 is 0
    out_labels[rows, :best.shape[1]] = np.where(
        present, np.take_along_axis(row_labels, order, axis=1), -1)


def _blend_block(sources: Sequence[_Source], first: int, last: int, total_weight: float,
                 num_classes: int, blend: Blend) -> None:
  """Fills blend's rows [first, last).

  Each input writes its pairs of these videos into its own columns of a (videos, columns) grid.
  Sorting every row's keys (label, column) brings each label's contributions together, in input
  order; their running sum over the label's run, divided by the total weight, is its score.
  """
  videos, width = last - first, sum(source.width for source in sources)
  shift = max(1, (width - 1).bit_length())
  key_dtype = np.uint32 if (num_classes + width) << shift < 2**32 else np.uint64
  key_type = np.dtype(key_dtype).type
  # An empty cell c gets the label num_classes + c (no class, nor any other cell's label) and
  # the contribution -inf: it sorts last, alone in its run, and is never chosen.
  columns = np.arange(width, dtype=key_dtype)
  keys = np.empty((videos, width), key_dtype)
  keys[:] = ((key_type(num_classes) + columns) << key_type(shift)) | columns
  contributions = np.full((videos, width), -np.inf)
  for source in sources:
    source.fill(first, last, keys, contributions, shift)
  keys.sort(axis=1)
  labels = keys >> key_type(shift)
  cells = keys & key_type((1 << shift) - 1)  # the column each sorted key came from
  cells += (np.arange(videos, dtype=key_dtype) * key_type(width))[:, None]
  sums = contributions.reshape(-1).take(cells)  # faster than take_along_axis (no intp copy)
  continues = np.zeros((videos, width), bool)
  np.equal(labels[:, 1:], labels[:, :-1], out=continues[:, 1:])
  not_last = continues[:, 1:].copy()
  _sum_runs_in_order(sums.reshape(-1), continues.reshape(-1))
  sums[:, :-1][not_last] = -np.inf
  sums /= total_weight
  _top_k_rows(sums, labels, blend.labels.shape[1], blend.labels[first:last],
              blend.scores[first:last])
  blend.counts[first:last] = np.count_nonzero(blend.labels[first:last] >= 0, axis=1)


def _number_videos(files: Sequence[PredictionFile]):
  """(ids in order of first appearance across the files, each file's indices into them)."""
  encoded = pc.dictionary_encode(pa.chunked_array([pa.array(f.video_ids) for f in files]))
  ids = encoded.chunks[-1].dictionary.to_numpy(zero_copy_only=False).astype(np.bytes_)
  return ids, [chunk.indices.to_numpy() for chunk in encoded.chunks]


def average_files(inputs: Sequence[Tuple[str, float]], top_k: int = DEFAULT_TOP_K,
                  num_classes: int = DEFAULT_NUM_CLASSES,
                  workers: Optional[int] = None) -> Blend:
  """Blends the prediction CSVs `inputs` = [(path, weight), ...] into each video's top_k.

  A video's score for a label is sum(weight * score) / sum(weight) over the inputs, a label
  missing from an input's row counting 0 for it; inputs of weight 0 are not read. Raises
  InputError for a bad argument or file. `workers` threads (default 2) parse and blend.
  """
  inputs = list(inputs)
  _check_arguments(inputs, top_k, num_classes)
  total_weight = float(sum(weight for _, weight in inputs))  # Python's sum, like the original
  kept = [(path, weight) for path, weight in inputs if weight != 0]
  workers = workers or min(2, os.cpu_count() or 1)
  files = list(submission_csv.parse_prediction_files([path for path, _ in kept], num_classes,
                                                     workers))
  video_ids, codes = _number_videos(files)
  sources, column = [], 0
  for parsed, file_codes, (_, weight) in zip(files, codes, kept):
    sources.append(_Source(parsed, file_codes, len(video_ids), weight, column))
    column += sources[-1].width
  del files, codes
  blend = Blend(video_ids=video_ids, labels=np.full((len(video_ids), top_k), -1, np.int32),
                scores=np.full((len(video_ids), top_k), np.nan),
                counts=np.empty(len(video_ids), np.int32), total_weight=total_weight)
  step = max(1, BLEND_BLOCK_CELLS // max(1, column))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    blocks = [pool.submit(_blend_block, sources, first, min(first + step, len(video_ids)),
                          total_weight, num_classes, blend)
              for first in range(0, len(video_ids), step)]
    for block in blocks:
      block.result()
  return blend


# ---------------------------------------------------------------------------------------------
# Writing the submission.


def write_submission(blend: Blend, output_file: str, top_k: Optional[int] = None) -> None:
  """Writes the blend as a submission CSV (the first top_k pairs of each video, default all).

  The CSV is written to a temporary file beside output_file and renamed over it only when
  complete (fileio.atomic_output), so a failed run never leaves a partial submission.
  """
  top_k = blend.labels.shape[1] if top_k is None else top_k
  if top_k <= 0:
    raise InputError("top_k must be positive, got %d" % top_k)
  try:
    with fileio.atomic_output(output_file, "wb") as out:
      out.write(submission_csv.HEADER_LINE)
      for first in range(0, len(blend.video_ids), WRITE_BLOCK_VIDEOS):
        rows = slice(first, first + WRITE_BLOCK_VIDEOS)
        out.write(submission_csv.format_rows(
            blend.video_ids[rows], blend.labels[rows, :top_k], blend.scores[rows, :top_k],
            np.minimum(blend.counts[rows], top_k)))
  except OSError as e:
    raise InputError("cannot write %s: %s" % (output_file, e.strerror or e))


# ---------------------------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the script's flags (only when run as a script, or into a test's FlagValues)."""
  flags.DEFINE_string(
      "inputs", None,
      "Comma-separated FILE=WEIGHT (FILE alone: weight 1; weight 0 drops the file). Default: "
      "the seven CSVs written by the README's inference commands, weight 1 each.",
      flag_values=flag_values)
  flags.DEFINE_string("input_dir", ".", "Folder against which relative input paths resolve.",
                      flag_values=flag_values)
  flags.DEFINE_string("output_file", DEFAULT_OUTPUT_FILE,
                      "Submission CSV to write (relative to the current folder).",
                      flag_values=flag_values)
  flags.DEFINE_integer("top_k", DEFAULT_TOP_K, "Labels written per video.",
                       flag_values=flag_values)
  flags.DEFINE_integer("num_classes", DEFAULT_NUM_CLASSES,
                       "Vocabulary size: labels must be in [0, num_classes).",
                       flag_values=flag_values)


def summary_line(inputs: Sequence[Tuple[str, float]], blend: Blend, output_file: str) -> str:
  kept = [weight for _, weight in inputs if weight != 0]
  dropped = len(inputs) - len(kept)
  return "blended %d input%s (weights %s%s) over %s videos into %s" % (
      len(kept), "" if len(kept) == 1 else "s", ", ".join("%g" % w for w in kept),
      "; %d of weight 0 dropped" % dropped if dropped else "", format(len(blend.video_ids), ","),
      output_file)


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Blends the inputs named by the flags into --output_file; a bad input exits with 1."""
  if len(argv) > 1:
    sys.stderr.write("error: unexpected arguments %s\n" % " ".join(argv[1:]))
    sys.exit(1)
  try:
    inputs = (parse_inputs_flag(flag_values.inputs) if flag_values.inputs is not None
              else default_inputs())
    inputs = [(os.path.join(flag_values.input_dir, path), weight) for path, weight in inputs]
    blend = average_files(inputs, flag_values.top_k, flag_values.num_classes)
    write_submission(blend, flag_values.output_file)
  except InputError as e:
    sys.stderr.write("error: %s\n" % e)
    sys.exit(1)
  print(summary_line(inputs, blend, flag_values.output_file))


def parse_flags(argv: List[str]) -> List[str]:
  """app.run's flags parser of the scripts without TensorFlow (this one and
  fit_ensemble_weights.py): a bad flag is reported like every other error, one line, exit 1."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write("error: %s\n" % e)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
