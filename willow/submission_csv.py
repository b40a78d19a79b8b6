"""The prediction CSV that inference.py writes and file_averaging.py reads and writes.

    VideoId,LabelConfidencePairs
    <video id>,<label> <score> <label> <score> ...

Ids are opaque bytes (no comma, space, newline or NUL); labels are integers in [0, num_classes),
at most once per row; scores are numbers, written as "%.6f". `parse_prediction_file` turns a file
into compact arrays: pyarrow's CSV reader splits the columns and its compute kernels split and
convert the pairs, ranges of lines in parallel. A range holding anything those kernels do not
take exactly as Python's `int`/`float` would (a bad line, a `\\r`, `1_000`) is parsed line by
line in Python instead, which also names the first bad line.
"""
import concurrent.futures
import dataclasses
import math
import os
import re
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from willow.fileio import InputError

HEADER = b"VideoId,LabelConfidencePairs"
HEADER_LINE = HEADER + b"\n"
MAX_ID_BYTES = 256
MICRO = 10**6
# Files are parsed as ranges of whole lines of about this size, queued on the worker threads:
# big enough to amortize the per-range overhead, small enough that a range's temporaries (about
# 8x its text) stay small and seven files share two cores evenly to the end.
RANGE_BYTES = 8 << 20


def format_rows(video_ids, labels, scores, counts=None) -> bytes:
  """The lines `<id>,<label> <score> ...` of a block of videos, scores as "%.6f".

  labels and scores are (videos, k) arrays; row i lists its first counts[i] pairs (all k without
  counts). Formatting is Python's, so every score is rounded exactly as printf does.
  """
  formats = {}
  lines = []
  counts = [len(row) for row in labels] if counts is None else counts.tolist()
  video_ids = video_ids.tolist() if isinstance(video_ids, np.ndarray) else video_ids
  for video_id, row_labels, row_scores, count in zip(video_ids, labels.tolist(), scores.tolist(),
                                                     counts):
    if count not in formats:
      formats[count] = b"%s," + b" ".join([b"%d %.6f"] * count) + b"\n"
    values = [video_id] + [None] * (2 * count)
    values[1::2], values[2::2] = row_labels[:count], row_scores[:count]
    lines.append(formats[count] % tuple(values))
  return b"".join(lines)


@dataclasses.dataclass
class PredictionFile:
  """The rows of one prediction CSV as flat arrays, in file order.

  Row r (line r + 2) is video `video_ids[r]` (numpy bytes) with `pair_counts[r]` pairs, stored
  consecutively in `labels` (int16, int32 above 32,768 classes) and `scores`: int32 millionths
  when `scores_are_micro` (exact when every score has at most 6 decimals), float64 otherwise.
  Either way `score_values()[i] == float(token)`.
  """
  path: str
  video_ids: np.ndarray
  pair_counts: np.ndarray
  labels: np.ndarray
  scores: np.ndarray
  scores_are_micro: bool

  @property
  def pair_starts(self) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(self.pair_counts[:-1], dtype=np.int64)])

  def score_values(self) -> np.ndarray:
    return self.scores / MICRO if self.scores_are_micro else self.scores


def parse_prediction_file(path: str, num_classes: int = 4716) -> PredictionFile:
  """Reads and validates one prediction CSV; raises InputError naming the file and line."""
  return next(parse_prediction_files([path], num_classes))


def parse_prediction_files(paths: Sequence[str], num_classes: int = 4716,
                           workers: Optional[int] = None) -> Iterator[PredictionFile]:
  """Yields the parsed files in order; the ranges of all files are queued at once on `workers`
  threads (default: up to 2). The first bad file in order raises its first bad line."""
  plans = [_plan_ranges(path) for path in paths]
  pool = concurrent.futures.ThreadPoolExecutor(workers or min(2, os.cpu_count() or 1))
  try:
    jobs = [[pool.submit(_parse_range, path, start, end, body_start, num_classes)
             for start, end in ranges] for path, (body_start, ranges, _) in zip(paths, plans)]
    for index, (path, (_, _, error)) in enumerate(zip(paths, plans)):
      if error is not None:
        raise error
      futures, jobs[index] = jobs[index], None  # the futures hold the ranges' arrays
      yield _join(path, [future.result() for future in futures])
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Ranges of lines, and errors that name the line.


class _BadLine(ValueError):
  """A line's problem, before the file and line number are known."""


def _line_error(path: str, line_number: int, line: bytes, problem: str) -> InputError:
  text = line.decode("utf-8", "replace")
  text = text[:57] + "..." if len(text) > 60 else text
  return InputError("%s: line %d: %s (line: %r)" % (path, line_number, problem, text))


def _plan_ranges(path: str):
  """(offset after the header, [(start, end) byte ranges of whole lines], None), or a header
  problem as (0, [], InputError), raised in turn (an earlier file's error comes first)."""
  try:
    with open(path, "rb") as handle:
      size = os.fstat(handle.fileno()).st_size
      first = handle.readline(1 << 16)
      if not first:
        raise InputError("%s: file is empty (expected the header %r)" % (path, HEADER.decode()))
      if first.rstrip(b"\n") != HEADER:
        raise _line_error(path, 1, first.rstrip(b"\n"), "expected the header %r"
                          % HEADER.decode())
      bounds = [len(first)]
      while bounds[-1] + RANGE_BYTES < size:
        handle.seek(bounds[-1] + RANGE_BYTES - 1)
        while not handle.readline(1 << 16).endswith(b"\n") and handle.tell() < size:
          pass  # a line longer than 64 KB: keep reading to its end
        bounds.append(handle.tell())
      if bounds[-1] < size:
        bounds.append(size)
  except FileNotFoundError:
    return 0, [], InputError("%s: input file not found" % path)
  except OSError as e:
    return 0, [], InputError("%s: cannot read input file: %s" % (path, e.strerror or e))
  except InputError as e:
    return 0, [], e
  if len(bounds) == 1:
    return 0, [], InputError("%s: no prediction rows after the header" % path)
  return bounds[0], list(zip(bounds[:-1], bounds[1:])), None


@dataclasses.dataclass
class _Rows:
  """The rows of one range (see PredictionFile): scores come as float64 values and are kept
  as millionths when that is exact."""
  video_ids: np.ndarray
  pair_counts: np.ndarray
  labels: np.ndarray
  scores: np.ndarray
  scores_are_micro: bool = dataclasses.field(init=False)

  def __post_init__(self):
    micro = _exact_micro(self.scores)
    self.scores_are_micro = micro is not None
    self.scores = self.scores if micro is None else micro


def _parse_range(path: str, start: int, end: int, body_start: int, num_classes: int) -> _Rows:
  with open(path, "rb") as handle:
    handle.seek(start)
    data = handle.read(end - start)
  label_dtype = np.int16 if num_classes <= 2**15 else np.int32
  rows = _parse_vectorized(data, num_classes, label_dtype)
  if rows is not None:
    return rows

  def first_line() -> int:  # counted only for an error message
    with open(path, "rb") as handle:
      handle.seek(body_start)
      return 2 + handle.read(start - body_start).count(b"\n")

  return _parse_lines(path, data, first_line, num_classes, label_dtype)


def _join(path: str, parts: List[_Rows]) -> PredictionFile:
  """One file from its ranges; checks that no video id repeats."""
  video_ids = np.concatenate([part.video_ids for part in parts])
  codes = pc.dictionary_encode(pa.array(video_ids)).indices.to_numpy()
  if codes.max() + 1 < len(codes):  # codes number ids by first appearance
    repeat = np.flatnonzero(codes[1:] <= np.maximum.accumulate(codes)[:-1])[0] + 1
    first = np.flatnonzero(codes == codes[repeat])[0]
    raise InputError("%s: line %d: duplicate video id %r (first on line %d)" % (
        path, repeat + 2, video_ids[repeat].decode("utf-8", "replace"), first + 2))
  micro = all(part.scores_are_micro for part in parts)
  return PredictionFile(
      path=path, video_ids=video_ids,
      pair_counts=np.concatenate([part.pair_counts for part in parts]),
      labels=np.concatenate([part.labels for part in parts]),
      scores=np.concatenate([part.scores if micro or not part.scores_are_micro
                             else part.scores / MICRO for part in parts]),
      scores_are_micro=micro)


def _exact_micro(values: np.ndarray) -> Optional[np.ndarray]:
  """values as int32 millionths, or None when that would not give back exactly the values.

  Half the memory of float64: what keeps seven full-size files small.
  """
  micro = np.rint(values * MICRO)
  if not (np.abs(micro) < 2**31).all() or not (micro / MICRO == values).all():
    return None
  return micro.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# The vectorized parse (pyarrow) and the line-by-line parse (Python).

_CSV_PARSE = pcsv.ParseOptions(delimiter=",", quote_char=False, escape_char=False,
                               ignore_empty_lines=False)
_CSV_CONVERT = pcsv.ConvertOptions(column_types={"id": pa.binary(), "pairs": pa.binary()})


def _parse_vectorized(data: bytes, num_classes: int, label_dtype) -> Optional[_Rows]:
  """The rows of a range, or None when a line is bad or unusual (a token that pyarrow does not
  convert exactly as Python's `int`/`float` would): the line-by-line parse decides then."""
  if b"\r" in data:  # the CSV reader would end a line there
    return None
  try:
    table = pcsv.read_csv(
        pa.BufferReader(data), read_options=pcsv.ReadOptions(
            column_names=["id", "pairs"], use_threads=False, block_size=len(data) + 1),
        parse_options=_CSV_PARSE, convert_options=_CSV_CONVERT)
  except pa.ArrowInvalid:  # not 2 columns
    return None
  ids, pairs = table.column("id").combine_chunks(), table.column("pairs").combine_chunks()
  id_lengths = pc.min_max(pc.binary_length(ids)).as_py()
  if (id_lengths["min"] < 1 or id_lengths["max"] > MAX_ID_BYTES
      or pc.any(pc.match_substring(ids, " ")).as_py()
      or pc.any(pc.match_substring(ids, "\0")).as_py()):
    return None
  no_pairs = pc.equal(pc.binary_length(pairs), 0)
  if pc.any(no_pairs).as_py():  # `<id>,`: a video without pairs, not one empty token
    pairs = pc.if_else(no_pairs, pa.nulls(len(pairs), pa.binary()), pairs)
  tokens = pc.split_pattern(pairs, " ")
  token_counts = pc.list_value_length(tokens).fill_null(0).to_numpy()
  if (token_counts % 2).any():
    return None
  counts = (token_counts // 2).astype(np.int32)
  flat = pc.list_flatten(tokens).view(pa.string())  # rows of even length: labels at even
  try:                                              # positions, scores at odd ones
    values = pc.cast(flat, pa.float64()).to_numpy()
  except pa.ArrowInvalid:
    return None
  labels, scores = values[0::2], values[1::2]
  if not (pc.ascii_is_decimal(flat).to_numpy(zero_copy_only=False)[0::2].all()
          and (labels < num_classes).all() and np.isfinite(scores).all()):
    return None
  labels = labels.astype(label_dtype)
  if _has_repeated_label(labels, counts):
    return None
  return _Rows(ids.to_numpy(zero_copy_only=False).astype(np.bytes_), counts, labels, scores)


def _has_repeated_label(labels: np.ndarray, counts: np.ndarray) -> bool:
  if len(counts) and (counts == counts[0]).all():  # rows of equal length: sort each row
    rows = np.sort(labels.reshape(len(counts), counts[0]).astype(np.int32), axis=1)
    return bool((rows[:, 1:] == rows[:, :-1]).any())
  keys = np.repeat(np.arange(len(counts), dtype=np.int64) << 32, counts) + labels
  keys.sort()
  return bool((keys[1:] == keys[:-1]).any())


def _parse_lines(path: str, data: bytes, first_line, num_classes: int, label_dtype) -> _Rows:
  """The rows of a range, line by line; raises InputError on the first bad line, whose number
  is first_line() + its index."""
  lines = data.split(b"\n")
  if lines[-1] == b"":  # the range ends with a newline
    lines.pop()
  ids, counts, labels, scores = [], [], [], []
  for index, line in enumerate(lines):
    try:
      video_id, row_labels, row_scores = _parse_line(line, num_classes)
    except _BadLine as e:
      raise _line_error(path, first_line() + index, line, str(e))
    ids.append(video_id)
    counts.append(len(row_labels))
    labels += row_labels
    scores += row_scores
  return _Rows(np.array(ids, np.bytes_), np.array(counts, np.int32),
               np.array(labels, label_dtype), np.array(scores, np.float64))


_COLUMNS = "expected 2 columns '<video id>,<label> <score> ...'"
_INTEGER = re.compile(rb"-?[0-9]+")


def _parse_line(line: bytes, num_classes: int) -> Tuple[bytes, List[int], List[float]]:
  commas = line.count(b",")
  if commas != 1:
    raise _BadLine("%s: %s" % ("no comma" if not commas else "%d commas" % commas, _COLUMNS))
  video_id, pairs = line.split(b",")
  if b" " in video_id:
    raise _BadLine("space in the video id")
  tokens = pairs.split(b" ") if pairs else []
  if b"" in tokens:
    raise _BadLine("empty token: pairs must be separated by single spaces")
  if len(tokens) % 2:
    raise _BadLine("odd number of tokens (%d): expected <label> <score> pairs" % len(tokens))
  if not video_id:
    raise _BadLine("empty video id")
  if len(video_id) > MAX_ID_BYTES:
    raise _BadLine("video id longer than %d bytes" % MAX_ID_BYTES)
  if b"\0" in video_id:
    raise _BadLine("NUL byte in the video id")
  labels = [_parse_label(token, num_classes) for token in tokens[0::2]]
  scores = [_parse_score(token) for token in tokens[1::2]]
  if len(set(labels)) < len(labels):
    repeated = next(label for i, label in enumerate(labels) if label in labels[:i])
    raise _BadLine("label %d appears twice in the row" % repeated)
  return video_id, labels, scores


def _parse_label(token: bytes, num_classes: int) -> int:
  if _INTEGER.fullmatch(token) is None:
    raise _BadLine("label %r is not an integer" % token.decode("utf-8", "replace"))
  if token.startswith(b"-") or int(token) >= num_classes:
    shown = token.decode() if token.startswith(b"-") else int(token)
    raise _BadLine("label %s is out of range [0, %d)" % (shown, num_classes))
  return int(token)


def _parse_score(token: bytes) -> float:
  try:
    value = float(token)
  except ValueError:
    raise _BadLine("score %r is not a number" % token.decode("utf-8", "replace"))
  if not math.isfinite(value):
    raise _BadLine("score %r is not a finite number" % token.decode("utf-8", "replace"))
  return value
