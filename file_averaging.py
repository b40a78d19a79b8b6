"""Ensembles per-model prediction CSVs into one submission (WILLOW's file_averaging.py).

Each input is a CSV written by inference.py (SPEC.md section 8):

    VideoId,LabelConfidencePairs
    <id>,<label> <score> <label> <score> ...

The blended score of a (video, label) is sum_m(w_m * s_m) / sum_m(w_m), where a label absent
from a model's row (or a video absent from a model's file) counts 0 for that model. Every video
gets the `top_k` labels with the largest blended score, sorted by score descending; equal scores
are ordered by the smaller class index first. Rows are written in the order in which their video
id first appears across the inputs (taken in the order given).

This is the original algorithm (SPEC.md section 10) with its defects fixed: ids are opaque strings,
every pair of every row is read, scores are summed as float64 and written with "%.6f", the header
is inference.py's, and the defaults are the seven files the README's inference lines write.

Usage:
  python file_averaging.py [--inputs=a.csv=1,b.csv=0.5] [--input_dir=DIR]
      [--output_file=WILLOW_submission.csv] [--top_k=20] [--num_classes=4716]

Everything is vectorized with numpy (no Python loop per pair or per row): the files are parsed
in blocks with SWAR digit arithmetic, ids are numbered through 64-bit hashes, and videos are
blended in blocks by sorting each video's (label, input) keys, in two threads. On the real
test set's size (7 files x 700,640 videos x 50 pairs, 3.2 GB of text) this takes 16-20 s on
2 cores, about 13x less CPU than the per-line algorithm, and 1.9 GB instead of ~23 GB of RAM
(benchmarks/bench_file_averaging.py).
"""
import concurrent.futures
import dataclasses
import itertools
import os
import re
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np
import pandas as pd

from willow import readme_configs as configurations
from willow import fileio
from willow.fileio import InputError

HEADER = b"VideoId,LabelConfidencePairs"
DEFAULT_OUTPUT_FILE = "WILLOW_submission.csv"
DEFAULT_TOP_K = 20
DEFAULT_NUM_CLASSES = 4716

# Rows are parsed in blocks of about this many bytes: large enough that numpy calls dominate
# the Python overhead, small enough that the per-block temporaries (a few MB) stay in cache and
# are reused by malloc rather than mapped afresh (4 MB blocks took 10-15% more CPU, mostly in
# page faults).
READ_BLOCK_BYTES = 1 << 20
# Big files are parsed as byte ranges of whole lines of about this size, by several threads:
# the files then share the cores evenly to the end (7 files on 2 cores would leave one idle
# while the last file parses).
PARSE_RANGE_BYTES = 64 << 20
# Videos are blended in blocks of about this many (video, candidate) cells (1,500 videos of
# 7 x 50 pairs): the per-block arrays then stay within a few MB.
BLEND_BLOCK_CELLS = 1 << 19
MAX_ID_BYTES = 256
# Scores are kept as integer millionths when that is exact (the %.6f text inference.py writes):
# 4 bytes per pair instead of 8, which is what keeps 7 full-size files under the memory goal.
MICRO = 10**6
_SPACE, _COMMA, _NEWLINE, _DOT, _ZERO = 32, 44, 10, 46, 48


# ---------------------------------------------------------------------------------------------
# Parsing one input file.


@dataclasses.dataclass
class PredictionFile:
  """The rows of one input CSV, as flat arrays.

  Row r (line r + 2 of the file) is video `video_ids[r]` (hashed to `id_keys[r]`) with
  `pair_counts[r]` pairs, stored consecutively in `labels` and `scores`. `scores` holds integer
  millionths (int32) when `scores_are_micro`, float64 otherwise; either way the value of a score
  is exactly float(token).
  """
  path: str
  video_ids: np.ndarray
  id_keys: np.ndarray
  pair_counts: np.ndarray
  labels: np.ndarray
  scores: np.ndarray
  scores_are_micro: bool

  @property
  def pair_starts(self) -> np.ndarray:
    starts = np.zeros(len(self.pair_counts), np.int64)
    np.cumsum(self.pair_counts[:-1], out=starts[1:])
    return starts


@dataclasses.dataclass
class _RowBlock:
  """The rows of one block of lines (see PredictionFile)."""
  video_ids: np.ndarray
  pair_counts: np.ndarray
  labels: np.ndarray
  scores: np.ndarray
  scores_are_micro: bool


@dataclasses.dataclass
class _Layout:
  """Where the tokens of a block of lines are (byte offsets into the block)."""
  line_starts: np.ndarray
  line_ends: np.ndarray  # offset of each line's newline
  id_ends: np.ndarray  # offset of each line's comma
  pair_counts: np.ndarray
  label_ends: np.ndarray
  label_lengths: np.ndarray
  score_ends: np.ndarray
  score_lengths: np.ndarray


# Blocks are handed to the parser with LEAD filler bytes before the first line, so that the
# 8 bytes before any token's end can be read, and TRAIL filler bytes after the last newline, so
# that MAX_ID_BYTES can be read from any line start. The filler ('0') is never a separator.
_LEAD = 8
_TRAIL = MAX_ID_BYTES
_FILLER = b"0"


def _line_error(path: str, line_number: int, line: bytes, problem: str) -> InputError:
  text = line.decode("utf-8", "replace")
  if len(text) > 60:
    text = text[:57] + "..."
  return InputError("%s: line %d: %s (line: %r)" % (path, line_number, problem, text))


def _open_input(path: str):
  try:
    return open(path, "rb")
  except OSError as e:
    raise InputError("%s: cannot read input file: %s" % (path, e.strerror or e))


def _line_ranges(path: str, range_bytes: int) -> List[Tuple[int, int]]:
  """Splits a file into byte ranges [start, end) of about range_bytes, each of whole lines."""
  bounds = [0]
  with _open_input(path) as handle:
    size = os.fstat(handle.fileno()).st_size
    for target in range(range_bytes, size, range_bytes):
      if target <= bounds[-1]:
        continue  # a line longer than a range
      handle.seek(target - 1)
      rest = b""
      while b"\n" not in rest:
        piece = handle.read(1 << 16)
        if not piece:
          break
        rest += piece
      newline = rest.find(b"\n")
      if newline < 0 or target + newline >= size:
        break
      bounds.append(target + newline)  # the line after that newline starts a range
  bounds.append(size)
  return list(zip(bounds[:-1], bounds[1:]))


def _lines_before(path: str, offset: int) -> int:
  """The number of newlines in the file's first `offset` bytes (for error messages)."""
  count = 0
  with _open_input(path) as handle:
    while offset > 0:
      data = handle.read(min(offset, 16 << 20))
      if not data:
        break
      count += data.count(b"\n")
      offset -= len(data)
  return count


def _iter_line_blocks(path: str, block_bytes: int, start: int = 0,
                      end: Optional[int] = None) -> Iterator[np.ndarray]:
  """Yields the lines of the byte range [start, end) in blocks of whole lines.

  The range starting at 0 begins with the header, which is checked and skipped. Each block is
  a uint8 array: _LEAD filler bytes, lines that all end with a newline (one is added after an
  unterminated last line), _TRAIL filler bytes.
  """
  lead, trail = _FILLER * _LEAD, _FILLER * _TRAIL
  with _open_input(path) as handle:
    handle.seek(start)
    left = (os.fstat(handle.fileno()).st_size if end is None else end) - start

    def read() -> bytes:
      nonlocal left
      data = handle.read(min(block_bytes, left))
      left -= len(data)
      return data

    carry = b""
    if start == 0:
      data = read()
      if not data:
        raise InputError("%s: file is empty (expected the header %r)" % (path, HEADER.decode()))
      newline = data.find(b"\n")
      header = data if newline < 0 else data[:newline]
      if header != HEADER:
        raise _line_error(path, 1, header, "expected the header %r" % HEADER.decode())
      carry = data[newline + 1:] if newline >= 0 else b""
    while True:
      data = read()
      if not data:
        break
      cut = data.rfind(b"\n") + 1
      if cut == 0:
        carry += data  # a line longer than a block: keep reading
        continue
      yield np.frombuffer(b"".join((lead, carry, memoryview(data)[:cut], trail)), np.uint8)
      carry = data[cut:]
    if carry:
      newline = b"" if carry.endswith(b"\n") else b"\n"
      yield np.frombuffer(b"".join((lead, carry, newline, trail)), np.uint8)


def _uniform_layout(seps: np.ndarray, chars: np.ndarray) -> Optional[_Layout]:
  """The layout when every line has the same number of pairs (what inference.py writes).

  The separators then reshape to one row per line, `,` then spaces then `\n`, and the token
  offsets are plain column slices: no per-token compaction.
  """
  width = int(np.argmax(chars == _NEWLINE)) + 1  # separators per line
  if width < 3 or width % 2 == 0 or len(chars) % width:
    return None
  template = np.full(width, _SPACE, np.uint8)
  template[0], template[-1] = _COMMA, _NEWLINE
  if not (chars.reshape(-1, width) == template).all():
    return None
  grid = seps.reshape(-1, width)
  line_ends = grid[:, -1]
  label_ends = grid[:, 1:-1:2]
  score_ends = grid[:, 2::2]
  return _Layout(
      line_starts=np.concatenate([[_LEAD], line_ends[:-1] + 1]),
      line_ends=line_ends,
      id_ends=grid[:, 0],
      pair_counts=np.full(len(grid), (width - 1) // 2, np.int32),
      label_ends=label_ends.ravel(),
      label_lengths=(label_ends - 1 - grid[:, 0:-2:2]).ravel(),
      score_ends=score_ends.ravel(),
      score_lengths=(score_ends - 1 - label_ends).ravel())


def _general_layout(seps: np.ndarray, chars: np.ndarray, fail_line) -> _Layout:
  """The layout of any valid block; calls fail_line(line, problem) on the first malformed line."""
  is_newline = chars == _NEWLINE
  newlines = np.flatnonzero(is_newline)  # index, among the separators, of each line's end
  line_first_sep = np.zeros(len(newlines), np.int64)
  line_first_sep[1:] = newlines[:-1] + 1
  line_ends = seps[newlines]
  line_starts = np.concatenate([[_LEAD], line_ends[:-1] + 1])
  is_comma = chars == _COMMA
  first_is_comma = is_comma[line_first_sep]
  if not first_is_comma.all() or np.count_nonzero(is_comma) != len(newlines):
    per_line = np.bincount(np.searchsorted(newlines, np.flatnonzero(is_comma)),
                           minlength=len(newlines))
    line = np.flatnonzero(~first_is_comma | (per_line != 1))[0]
    if per_line[line] == 0:
      problem = "no comma: expected 2 columns '<video id>,<label> <score> ...'"
    elif per_line[line] > 1:
      problem = "%d commas: expected 2 columns '<video id>,<label> <score> ...'" % per_line[line]
    else:
      problem = "space in the video id"
    fail_line(line, problem)
  # A pair-string token starts after the comma or a space and ends at the next separator.
  token_ends = seps[~is_comma]
  token_lengths = token_ends - 1 - seps[~is_newline]
  tokens_per_line = newlines - line_first_sep
  if not token_lengths.all():
    # `<id>,` alone is a video without predictions: drop its one empty token. Any other empty
    # token comes from a double, leading or trailing space.
    no_pairs = (tokens_per_line == 1) & (token_lengths[np.cumsum(tokens_per_line) - 1] == 0)
    empty = np.flatnonzero((token_lengths == 0) & ~np.repeat(no_pairs, tokens_per_line))
    if len(empty):
      token_lines = np.repeat(np.arange(len(newlines)), tokens_per_line)
      fail_line(token_lines[empty[0]], "empty token: pairs must be separated by single spaces")
    keep = ~np.repeat(no_pairs, tokens_per_line)
    token_ends, token_lengths = token_ends[keep], token_lengths[keep]
    tokens_per_line = np.where(no_pairs, 0, tokens_per_line)
  odd = np.flatnonzero(tokens_per_line % 2)
  if len(odd):
    fail_line(odd[0], "odd number of tokens (%d): expected <label> <score> pairs"
              % tokens_per_line[odd[0]])
  return _Layout(
      line_starts=line_starts, line_ends=line_ends, id_ends=seps[line_first_sep],
      pair_counts=(tokens_per_line // 2).astype(np.int32),
      label_ends=token_ends[0::2], label_lengths=token_lengths[0::2],
      score_ends=token_ends[1::2], score_lengths=token_lengths[1::2])


# Tokens of up to 4 (or 8) bytes are read as one little-endian uint32 (uint64) word, the bytes
# that end where the token ends, and validated and converted with SWAR arithmetic (the digits
# of all tokens in a few numpy operations, as in simdjson's parse_eight_digits).
_SWAR = {
    np.dtype(np.uint32): (0x76767676, 0x80808080,
                          ((2561, 8, 0x00FF00FF), (6553601, 16, 0xFFFF))),
    np.dtype(np.uint64): (0x7676767676767676, 0x8080808080808080,
                          ((2561, 8, 0x00FF00FF00FF00FF), (6553601, 16, 0x0000FFFF0000FFFF),
                           (42949672960001, 32, None))),
}


def _words_ending_at(raw: np.ndarray, ends: np.ndarray, dtype) -> np.ndarray:
  """The `itemsize` bytes before each end offset, as little-endian words."""
  size = np.dtype(dtype).itemsize
  unaligned = np.ndarray(shape=(len(raw) - size + 1,), dtype=dtype, buffer=raw, strides=(1,))
  return unaligned[ends - size]


def _swar_digits(digits: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(valid, number) for words of byte values 0-9 (ASCII minus '0'), first byte most significant.

  A byte that was below '0' has borrowed (its high bit is set); one above '9' reaches 0x80 when
  0x76 is added. `digits` is consumed.
  """
  cast = digits.dtype.type
  over_nine, high_bits, steps = _SWAR[digits.dtype]
  valid = (((digits + cast(over_nine)) | digits) & cast(high_bits)) == 0
  for multiplier, shift, mask in steps:
    digits *= cast(multiplier)
    digits >>= cast(shift)
    if mask is not None:
      digits &= cast(mask)
  return valid, digits


def _filler_tables(dtype):
  """(keep, zeros) masks by token length: keep the token's bytes, put '0's before them."""
  size = np.dtype(dtype).itemsize
  keep = [((1 << (8 * size)) - 1) ^ ((1 << (8 * (size - n))) - 1) for n in range(size + 1)]
  zeros = [int.from_bytes(b"\0" * n + b"0" * (size - n), "big") for n in range(size + 1)]
  return np.array(keep, dtype), np.array(zeros, dtype)


_LABEL_FILLERS = {np.dtype(t): _filler_tables(t) for t in (np.uint32, np.uint64)}
_ASCII_ZEROS = {np.dtype(np.uint32): np.uint32(0x30303030),
                np.dtype(np.uint64): np.uint64(0x3030303030303030)}


def _pair_words(raw: np.ndarray, layout: _Layout):
  """(label words, score words) read together, or None when the pairs are not all "L S".

  In the inference.py format (labels of at most 4 digits, scores of 8 characters) the 16 bytes
  before a score's end hold the label's last 4 bytes, the space and the score: one gather of
  16-byte items replaces a uint32 and a uint64 gather, at about half the cost.
  """
  if (len(layout.score_ends) == 0 or layout.label_lengths.max() > 4
      or not (layout.score_ends - layout.label_ends == 9).all()):
    return None
  items = np.ndarray(shape=(len(raw) - 15,), dtype=np.dtype((np.void, 16)), buffer=raw,
                     strides=(1,))
  words = items[layout.score_ends - 16].view(np.uint64).reshape(-1, 2)
  # Little-endian: the label's 4 bytes are bytes 3-6 of the first half.
  label_words = (words[:, 0] >> np.uint64(24)).astype(np.uint32)
  return label_words, words[:, 1].copy()


def _fast_labels(raw: np.ndarray, ends: np.ndarray, lengths: np.ndarray,
                 words: Optional[np.ndarray] = None):
  """(labels, ok): tokens of 1 to 4 (else 8) ASCII digits, left-filled with '0' to a word.

  `words`, if given, are the uint32 words ending at `ends` (see _pair_words).
  """
  dtype = np.dtype(np.uint32 if lengths.max(initial=0) <= 4 else np.uint64)  # may be empty
  keep, zeros = _LABEL_FILLERS[dtype]
  clipped = np.minimum(lengths, dtype.itemsize)
  if words is None or dtype != words.dtype:
    words = _words_ending_at(raw, ends, dtype)
  words &= keep[clipped]
  words |= zeros[clipped]
  words -= _ASCII_ZEROS[dtype]
  ok, labels = _swar_digits(words)
  ok &= (lengths >= 1) & (lengths <= dtype.itemsize)
  return labels, ok


# "d.dddddd" minus these bytes gives the digits, with 0 in place of the dot (byte 1).
_SCORE_ZEROS = np.uint64(0x3030303030302E30)
_BYTE0 = np.uint64(0xFF)
_BYTE1 = np.uint64(0xFF00)
_ABOVE_BYTE1 = np.uint64(0xFFFFFFFFFFFF0000)
_DOT_AT_BYTE1 = np.uint64(ord(".") << 8)
_EIGHT = np.uint64(8)


def _fast_scores(raw: np.ndarray, ends: np.ndarray, lengths: np.ndarray,
                 words: Optional[np.ndarray] = None):
  """(millionths, ok): scores spelled "d.dddddd", the %f inference.py writes for [0, 10).

  `words`, if given, are the uint64 words ending at `ends` (see _pair_words).
  """
  if words is None:
    words = _words_ending_at(raw, ends, np.uint64)
  ok = (words & _BYTE1) == _DOT_AT_BYTE1
  ok &= lengths == 8
  words -= _SCORE_ZEROS
  # Move the units digit into the dot's byte: the eight digits "0d dddddd" are the millionths.
  units = words & _BYTE0
  words &= _ABOVE_BYTE1
  units <<= _EIGHT
  words |= units
  digits_ok, number = _swar_digits(words)
  ok &= digits_ok
  return number.astype(np.int32), ok  # at most 9,999,999


_PLAIN_DECIMAL = re.compile(rb"-?([0-9]+)(?:\.([0-9]+))?")


def _slow_label(text: bytes, num_classes: int) -> Tuple[int, str]:
  """(label, "") or (0, problem) for a token the fast path did not take."""
  shown = text.decode("utf-8", "replace")
  if not text:
    return 0, "empty token: pairs must be separated by single spaces"
  if re.fullmatch(rb"-?[0-9]+", text) is None:
    return 0, "label %r is not an integer" % shown
  if text.startswith(b"-") or int(text) >= num_classes:
    return 0, "label %s is out of range [0, %d)" % (shown, num_classes)
  return int(text), ""


def _slow_score(text: bytes) -> Tuple[Optional[int], float, str]:
  """(millionths or None, value, problem) for a token the fast path did not take.

  Millionths are exact for plain decimals with at most 6 decimals: micro / 1e6 then equals
  float(text), both being the double nearest the same rational number.
  """
  shown = text.decode("utf-8", "replace")
  if not text:
    return None, 0.0, "empty token: pairs must be separated by single spaces"
  match = _PLAIN_DECIMAL.fullmatch(text)
  if match is not None and len(match.group(2) or b"") <= 6:
    decimals = match.group(2) or b""
    micro = int(match.group(1) + decimals + b"0" * (6 - len(decimals)))
    micro = -micro if text.startswith(b"-") else micro
    if abs(micro) < 2**31:
      return micro, micro / MICRO, ""
  try:
    value = float(text)
  except ValueError:
    return None, 0.0, "score %r is not a number" % shown
  if not np.isfinite(value):
    return None, 0.0, "score %r is not a finite number" % shown
  return None, value, ""


def _parse_row_block(path: str, first_line, raw: np.ndarray, num_classes: int,
                     label_dtype) -> _RowBlock:
  """Parses a block of lines `<id>,<label> <score> ...`; raises InputError on the first bad one.

  first_line() is the line number of the block's first line (only asked for an error message).
  """
  # Only ' ', ',' and '\n' separate tokens; other bytes <= ',' are rare: filter the candidates.
  seps = np.flatnonzero(raw <= _COMMA)
  chars = raw[seps]
  separator = (chars == _SPACE) | (chars == _COMMA) | (chars == _NEWLINE)
  if not separator.all():
    seps, chars = seps[separator], chars[separator]

  def fail_line(line: int, problem: str, layout: Optional[_Layout] = None):
    if layout is None:
      ends = seps[chars == _NEWLINE]
      starts = np.concatenate([[_LEAD], ends[:-1] + 1])
    else:
      starts, ends = layout.line_starts, layout.line_ends
    raise _line_error(path, first_line() + line, raw[starts[line]:ends[line]].tobytes(),
                      problem)

  layout = _uniform_layout(seps, chars) or _general_layout(seps, chars, fail_line)
  seps = chars = None  # free them; from here fail_line is always given the layout

  video_ids = _video_ids(raw, layout, lambda line, problem: fail_line(line, problem, layout))
  # Tokens the vectorized paths cannot take go through Python, one by one; the problem on the
  # earliest line is the one reported.
  problems = []
  pair_ends = np.cumsum(layout.pair_counts)

  def note(pair: int, problem: str):
    problems.append((int(np.searchsorted(pair_ends, pair, side="right")), problem))

  label_words, score_words = _pair_words(raw, layout) or (None, None)
  labels, labels_ok = _fast_labels(raw, layout.label_ends, layout.label_lengths, label_words)
  checked = len(labels)  # labels before this one are valid
  for pair in np.flatnonzero(~labels_ok):
    end = layout.label_ends[pair]
    labels[pair], problem = _slow_label(raw[end - layout.label_lengths[pair]:end].tobytes(),
                                        num_classes)
    if problem:
      note(pair, problem)
      checked = pair
      break
  out_of_range = np.flatnonzero(labels[:checked] >= num_classes)
  if len(out_of_range):
    note(out_of_range[0], "label %d is out of range [0, %d)" % (labels[out_of_range[0]],
                                                                num_classes))
  labels = labels.astype(label_dtype, copy=False)

  scores, scores_ok = _fast_scores(raw, layout.score_ends, layout.score_lengths, score_words)
  slow_pairs = np.flatnonzero(~scores_ok)
  slow = []
  for pair in slow_pairs:
    end, length = layout.score_ends[pair], layout.score_lengths[pair]
    slow.append(_slow_score(raw[end - length:end].tobytes()))
    if slow[-1][2]:
      note(pair, slow[-1][2])
      break
  # Labels after a bad one are not parsed; a false repeat among them is on a later line.
  duplicate = _first_duplicate_label(labels, layout.pair_counts)
  if duplicate is not None:
    problems.append((duplicate[0], "label %d appears twice in the row" % duplicate[1]))
  if problems:
    fail_line(*min(problems, key=lambda p: p[0]), layout=layout)

  scores_are_micro = all(micro is not None for micro, _, _ in slow)
  if scores_are_micro:
    scores[slow_pairs] = [micro for micro, _, _ in slow]
  else:
    scores = scores / MICRO
    scores[slow_pairs] = [value for _, value, _ in slow]
  return _RowBlock(video_ids, layout.pair_counts, labels, scores, scores_are_micro)


def _video_ids(raw: np.ndarray, layout: _Layout, fail_line) -> np.ndarray:
  """The ids as a fixed-width bytes array (numpy 'S'), validated."""
  lengths = layout.id_ends - layout.line_starts
  if not lengths.all():
    fail_line(np.flatnonzero(lengths == 0)[0], "empty video id")
  width = int(lengths.max())
  if width > MAX_ID_BYTES:
    fail_line(np.flatnonzero(lengths > MAX_ID_BYTES)[0],
              "video id longer than %d bytes" % MAX_ID_BYTES)
  chars = np.lib.stride_tricks.sliding_window_view(raw, width)[layout.line_starts]
  outside = np.arange(width) >= lengths[:, None]
  nul = np.flatnonzero(((chars == 0) & ~outside).any(axis=1))
  if len(nul):  # numpy's 'S' strings would drop trailing NULs
    fail_line(nul[0], "NUL byte in the video id")
  chars[outside] = 0
  return chars.view("S%d" % width).ravel()


def _first_duplicate_label(labels: np.ndarray, pair_counts: np.ndarray):
  """(row, label) of the first row listing a label twice, or None."""
  if not len(labels):
    return None
  width = int(pair_counts[0])
  if width and (pair_counts == width).all():  # rows of equal length: sort each row
    rows = np.sort(labels.reshape(-1, width).astype(np.uint32), axis=1)  # uint32: SIMD sort
    repeats = rows[:, 1:] == rows[:, :-1]
    row = np.flatnonzero(repeats.any(axis=1))
    if not len(row):
      return None
    return int(row[0]), int(rows[row[0], 1:][repeats[row[0]]][0])
  span = int(labels.max()) + 1
  # One sortable key per pair, (row, label); uint32 sorts fastest and fits a block's rows.
  dtype = np.uint32 if len(pair_counts) * span < 2**32 else np.uint64
  keys = np.repeat(np.arange(len(pair_counts), dtype=dtype) * dtype(span), pair_counts)
  keys += labels
  keys.sort()
  same = np.flatnonzero(keys[1:] == keys[:-1])
  if not len(same):
    return None
  first = int(keys[same[0]])
  return first // span, first % span


def _splitmix64(x):
  """The splitmix64 finalizer (numpy uint64 arrays or Python ints)."""
  mask = (1 << 64) - 1
  if isinstance(x, int):
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & mask
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & mask
    return x ^ (x >> 31)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


_ID_WORD_MULTIPLIERS = [np.uint64(_splitmix64(word + 1) | 1) for word in range(MAX_ID_BYTES // 8)]


def id_keys(video_ids: np.ndarray) -> np.ndarray:
  """64-bit hashes of ids (a numpy 'S' array), whatever the array's width.

  Ids are looked up through these (a uint64 hash table rather than Python bytes objects); the
  lookups are checked against the ids themselves, so a collision only costs the exact path.
  """
  width = video_ids.dtype.itemsize
  words = np.zeros((len(video_ids), -(-width // 8)), np.uint64)
  words.view(np.uint8)[:, :width] = video_ids.view(np.uint8).reshape(-1, width)
  keys = np.zeros(len(video_ids), np.uint64)
  for column in range(words.shape[1]):  # zero padding words add nothing
    keys += words[:, column] * _ID_WORD_MULTIPLIERS[column]
  return _splitmix64(keys)


def _check_unique_ids(path: str, video_ids: np.ndarray, keys: np.ndarray) -> None:
  if pd.Index(keys).is_unique:
    return
  suspects = np.flatnonzero(pd.Index(keys).duplicated(keep=False))
  exact = pd.Index(video_ids[suspects].astype(object))
  repeated = np.flatnonzero(exact.duplicated())
  if len(repeated):
    row = suspects[repeated[0]]
    first = suspects[np.flatnonzero(video_ids[suspects] == video_ids[row])[0]]
    raise InputError("%s: line %d: duplicate video id %r (first on line %d)" % (
        path, row + 2, video_ids[row].decode("utf-8", "replace"), first + 2))


class _GrowingArray:
  """An append-only array over a buffer sized from above: the tail never written costs no RAM.

  Avoids holding a file's pairs twice (per-block pieces plus their concatenation).
  """

  def __init__(self, capacity: int, dtype):
    self._buffer = np.empty(max(capacity, 1), dtype)
    self.size = 0

  def append(self, values: np.ndarray) -> None:
    end = self.size + len(values)
    if end > len(self._buffer):
      bigger = np.empty(max(end, 2 * len(self._buffer)), self._buffer.dtype)
      bigger[:self.size] = self.values
      self._buffer = bigger
    self._buffer[self.size:end] = values
    self.size = end

  @property
  def values(self) -> np.ndarray:
    return self._buffer[:self.size]


def _parse_range(path: str, byte_range: Tuple[int, int], num_classes: int) -> List[_RowBlock]:
  """Parses the lines of one byte range of a file (see _line_ranges), block by block."""
  label_dtype = np.uint16 if num_classes <= 2**16 else np.int32
  start, end = byte_range
  first_line = 2 if start == 0 else None  # line 1 is the header
  blocks, rows_before = [], 0

  def block_first_line() -> int:
    nonlocal first_line
    if first_line is None:
      first_line = _lines_before(path, start) + 1
    return first_line + rows_before

  for raw in _iter_line_blocks(path, READ_BLOCK_BYTES, start, end):
    blocks.append(_parse_row_block(path, block_first_line, raw, num_classes, label_dtype))
    rows_before += len(blocks[-1].pair_counts)
  return blocks


def _join_ranges(path: str, ranges: Iterator[List[_RowBlock]]) -> PredictionFile:
  """One PredictionFile from the parsed blocks of a file's ranges, taken in file order.

  Blocks are copied into arrays sized from above (_GrowingArray) as they come, so a file's
  pairs are not held twice.
  """
  capacity = os.path.getsize(path) // 4 + 1  # every pair takes at least 4 bytes ("1 0 ")
  labels = scores = None
  micro = True
  video_ids, pair_counts = [], []
  for blocks in ranges:
    for block in blocks:
      if labels is None:
        labels = _GrowingArray(capacity, block.labels.dtype)
        scores = _GrowingArray(capacity, np.int32)
      if micro and not block.scores_are_micro:  # from now on, float64 scores
        floats = _GrowingArray(capacity, np.float64)
        floats.append(scores.values / MICRO)
        scores, micro = floats, False
      labels.append(block.labels)
      scores.append(block.scores / MICRO if block.scores_are_micro and not micro
                    else block.scores)
      video_ids.append(block.video_ids)
      pair_counts.append(block.pair_counts)
  if not video_ids:
    raise InputError("%s: no prediction rows after the header" % path)
  video_ids = np.concatenate(video_ids)
  keys = id_keys(video_ids)
  _check_unique_ids(path, video_ids, keys)
  return PredictionFile(path=path, video_ids=video_ids, id_keys=keys,
                        pair_counts=np.concatenate(pair_counts), labels=labels.values,
                        scores=scores.values, scores_are_micro=micro)


def parse_prediction_file(path: str, num_classes: int = DEFAULT_NUM_CLASSES) -> PredictionFile:
  """Reads and validates one inference.py CSV; raises InputError naming the file and line."""
  if not os.path.isfile(path):
    raise InputError("%s: input file not found" % path)
  return _join_ranges(path, (_parse_range(path, byte_range, num_classes)
                             for byte_range in _line_ranges(path, PARSE_RANGE_BYTES)))


# ---------------------------------------------------------------------------------------------
# Blending.


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
  return [(name, 1.0) for name in configurations.README_INFERENCE_OUTPUTS]


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
  for path, _ in inputs:
    if not os.path.isfile(path):
      raise InputError("%s: input file not found" % path)


def _default_workers(paths: Sequence[str]) -> int:
  # Threads pay for themselves only on big inputs (the real test set: ~500 MB per file).
  total = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
  return min(2, os.cpu_count() or 1) if total > (64 << 20) else 1


class _IdCollision(Exception):
  """Two different ids share a 64-bit key: blend again with exact (slower) id lookups."""


class _VideoIndex:
  """Dense indices for video ids, in order of first appearance.

  Looks ids up by their 64-bit key (see id_keys) and checks every match against the id itself;
  with exact=True it hashes the ids as Python bytes instead.
  """

  def __init__(self, exact: bool = False):
    self._exact = exact
    self._index = pd.Index([], dtype=object if exact else np.uint64)
    self._ids = np.zeros(0, "S1")

  def add(self, video_ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The index of each id of one file (distinct ids), numbering the new ones."""
    keys = video_ids.astype(object) if self._exact else keys
    if not self._exact and not pd.Index(keys).is_unique:
      raise _IdCollision()
    codes = self._index.get_indexer(keys)
    old = codes >= 0
    if not self._exact and not (self._ids[codes[old]] == video_ids[old]).all():
      raise _IdCollision()
    new = ~old
    codes[new] = len(self._index) + np.arange(np.count_nonzero(new))
    self._index = self._index.append(pd.Index(keys[new]))
    self._ids = np.concatenate([self._ids, video_ids[new]])
    return codes

  @property
  def size(self) -> int:
    return len(self._index)

  def ids(self) -> np.ndarray:
    return self._ids


class _IndexedInput:
  """One parsed input (rows in file order) and the row of each video index, for block lookups.

  The input owns the grid columns [first_column, first_column + width) of a blend block, width
  being its longest row. When every row has the same number of pairs (what inference.py
  writes) its pairs are viewed as a (rows, pairs) grid, so a block's pairs are a row gather;
  otherwise they are located through row offsets.
  """

  def __init__(self, parsed: PredictionFile, codes: np.ndarray, weight: float,
               first_column: int):
    self.weight = weight
    self.micro = parsed.scores_are_micro
    self.first_column = first_column
    self.codes = codes
    self.width = int(parsed.pair_counts.max(initial=0))
    self.uniform = bool((parsed.pair_counts == self.width).all()) and self.width > 0
    if self.uniform:
      self.labels = parsed.labels.reshape(-1, self.width)
      self.scores = parsed.scores.reshape(-1, self.width)
    else:
      self.labels, self.scores = parsed.labels, parsed.scores
      self.pair_counts = parsed.pair_counts
      self.pair_starts = parsed.pair_starts
    self.row_of_video = None

  def index_rows(self, num_videos: int) -> None:
    """Maps video indices to rows, once all inputs are indexed (-1: not in this input)."""
    self.row_of_video = np.full(num_videos, -1, np.int32)
    self.row_of_video[self.codes] = np.arange(len(self.codes))
    del self.codes

  def _contributions(self, scores: np.ndarray, out=None) -> np.ndarray:
    """weight * score as float64 (into `out` if given)."""
    out = np.divide(scores, MICRO, out=out) if self.micro else np.multiply(scores, 1.0, out=out)
    if self.weight != 1:
      out *= self.weight
    return out

  def fill(self, first: int, last: int, keys: np.ndarray, contributions: np.ndarray,
           shift: int, pad_keys: np.ndarray) -> None:
    """Writes the pairs of videos [first, last) into this input's columns of a blend block.

    The key of the pair in grid column c is (label << shift) | c, its contribution
    weight * score. Cells of videos or pairs this input lacks get pad_keys[c] and -inf.
    """
    columns = slice(self.first_column, self.first_column + self.width)
    key_type = keys.dtype.type
    file_rows = self.row_of_video[first:last]
    if self.uniform:
      # Missing videos (row -1) read the last row here and are overwritten below: a gather
      # into plain slices is much cheaper than a scatter of the present rows (and np.take
      # than fancy indexing).
      np.left_shift(np.take(self.labels, file_rows, axis=0), key_type(shift),
                    out=keys[:, columns], dtype=keys.dtype, casting="unsafe")
      keys[:, columns] |= pad_keys[columns] & key_type((1 << shift) - 1)
      self._contributions(np.take(self.scores, file_rows, axis=0), out=contributions[:, columns])
      missing = np.flatnonzero(file_rows < 0)
      keys[missing, columns] = pad_keys[columns]
      contributions[missing, columns] = -np.inf
      return
    keys[:, columns] = pad_keys[columns]
    contributions[:, columns] = -np.inf
    rows = np.flatnonzero(file_rows >= 0)
    file_rows = file_rows[rows]
    counts = self.pair_counts[file_rows]
    ends = np.cumsum(counts)
    within = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - counts, counts)
    pairs = np.repeat(self.pair_starts[file_rows], counts) + within
    rows = np.repeat(rows, counts)
    cells = self.first_column + within
    keys[rows, cells] = ((self.labels[pairs].astype(keys.dtype) << key_type(shift))
                         | cells.astype(keys.dtype))
    contributions[rows, cells] = self._contributions(self.scores[pairs])


def _sum_runs_in_order(values: np.ndarray, continues: np.ndarray) -> np.ndarray:
  """Turns each run of `values` into running sums, left to right, in place.

  continues[i] says values[i] belongs to the run of values[i - 1]; it is consumed. The last
  value of a run becomes v1 + v2 + ... summed in that order, as the original's loop over the
  inputs does (float addition is not associative). Runs are short (at most one value per
  input), so this loops once per position within a run, not once per value. Returns the
  indices of the values that are not the last of their run.
  """
  pending = np.flatnonzero(continues)
  not_last = pending - 1
  while len(pending):
    ready = ~continues[pending - 1]  # the previous value already holds its running sum
    now = pending[ready]
    values[now] += values[now - 1]
    continues[now] = False
    pending = pending[~ready]
  return not_last


def _top_k_rows(grid: np.ndarray, labels: np.ndarray, top_k: int):
  """Per row of a (videos, candidates) grid: the top_k by score desc, then label asc.

  Each row's labels must be ascending; cells holding -inf are never chosen. Returns
  (labels, scores, counts) with (videos, top_k) arrays padded by -1 and nan.
  """
  videos, width = grid.shape
  best_labels = np.full((videos, top_k), -1, np.int32)
  best_scores = np.full((videos, top_k), np.nan)
  regular = np.zeros(videos, bool)
  if width > top_k:
    # Rows with exactly top_k cells at or above their k-th largest score (no tie straddling
    # the cut, at least top_k candidates) keep those cells, compacted by one boolean mask.
    kth = np.partition(grid, width - top_k, axis=1)[:, width - top_k]
    chosen = grid >= kth[:, None]
    regular = (np.count_nonzero(chosen, axis=1) == top_k) & (kth > -np.inf)
    fast = np.flatnonzero(regular)
    if len(fast) < videos:
      grid_fast, labels_fast, chosen = grid[fast], labels[fast], chosen[fast]
    else:
      grid_fast, labels_fast = grid, labels
    _sort_by_score_into(best_labels, best_scores, fast,
                        labels_fast[chosen].reshape(-1, top_k),
                        grid_fast[chosen].reshape(-1, top_k))
  # The other rows sort all their cells.
  rest = np.flatnonzero(~regular)
  if len(rest):
    _sort_by_score_into(best_labels, best_scores, rest, labels[rest], grid[rest])
  counts = np.count_nonzero(best_labels >= 0, axis=1).astype(np.int32)
  return best_labels, best_scores, counts


def _sort_by_score_into(best_labels, best_scores, rows, labels, scores) -> None:
  """Writes the first top_k cells of each row by score desc into best_*[rows].

  A stable sort keeps equal scores in column order, i.e. by ascending label.
  """
  top_k = best_labels.shape[1]
  order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
  scores = np.take_along_axis(scores, order, axis=1)
  labels = np.take_along_axis(labels, order, axis=1)
  present = scores > -np.inf
  best_scores[rows, :scores.shape[1]] = np.where(present, scores, np.nan)
  best_labels[rows, :labels.shape[1]] = np.where(present, labels, -1)


def _blend_block(inputs: Sequence[_IndexedInput], first: int, last: int, total_weight: float,
                 num_classes: int, top_k: int):
  """The top_k of videos [first, last).

  Each input writes its pairs of these videos into its own columns of a (videos, columns)
  grid as keys (label, column) and contributions weight * score. Sorting every row's keys
  brings each label's contributions together, in input order (the column order); their sum
  over the label's run, divided by the total weight, is the blended score.
  """
  videos, width = last - first, sum(source.width for source in inputs)
  shift = max(1, (width - 1).bit_length())
  key_dtype = (np.uint32 if max((num_classes + width) << shift, videos * width) <= 2**32
               else np.uint64)
  key_type = np.dtype(key_dtype).type
  # Cell c of a video that no input fills has the label num_classes + c (no class, and no
  # other cell's) and the contribution -inf: it sorts last and is never chosen.
  column_ids = np.arange(width, dtype=key_dtype)
  pad_keys = ((key_type(num_classes) + column_ids) << key_type(shift)) | column_ids
  keys = np.empty((videos, width), key_dtype)
  contributions = np.empty((videos, width))
  for source in inputs:
    source.fill(first, last, keys, contributions, shift, pad_keys)
  keys.sort(axis=1)
  labels = keys >> key_type(shift)
  cells = keys & key_type((1 << shift) - 1)  # the column each sorted key came from
  cells += (np.arange(videos, dtype=key_dtype) * key_type(width))[:, None]
  sums = contributions.reshape(-1).take(cells)  # faster than take_along_axis (no intp copy)
  del keys, contributions, cells
  continues = np.zeros(sums.shape, bool)
  np.equal(labels[:, 1:], labels[:, :-1], out=continues[:, 1:])
  not_last = _sum_runs_in_order(sums.reshape(-1), continues.reshape(-1))
  sums.reshape(-1)[not_last] = -np.inf
  sums /= total_weight
  best_labels, best_scores, counts = _top_k_rows(sums, labels, top_k)
  best_scores += 0.0  # the original's sums start at 0, and 0 + -0.0 is 0.0
  return best_labels, best_scores, counts


def _blend_range(inputs: Sequence[_IndexedInput], first: int, last: int, total_weight: float,
                 num_classes: int, blend: Blend) -> None:
  """Fills blend's rows [first, last), block by block."""
  width = max(1, sum(source.width for source in inputs))
  step = max(1, BLEND_BLOCK_CELLS // width)
  for start in range(first, last, step):
    end = min(start + step, last)
    labels, scores, counts = _blend_block(inputs, start, end, total_weight, num_classes,
                                          blend.labels.shape[1])
    blend.labels[start:end], blend.scores[start:end], blend.counts[start:end] = (
        labels, scores, counts)


def average_files(inputs: Sequence[Tuple[str, float]], top_k: int = DEFAULT_TOP_K,
                  num_classes: int = DEFAULT_NUM_CLASSES,
                  workers: Optional[int] = None) -> Blend:
  """Blends the prediction CSVs `inputs` = [(path, weight), ...] into each video's top_k.

  A video's score for a label is sum(weight * score) / sum(weight) over the inputs, a label
  missing from an input's row counting 0 for it. Raises InputError for a bad argument or file.
  `workers` threads (default: 2 for big inputs) parse files and blend video ranges.
  """
  inputs = list(inputs)
  _check_arguments(inputs, top_k, num_classes)
  paths = [path for path, _ in inputs]
  workers = _default_workers(paths) if workers is None else max(1, workers)
  try:
    return _average(inputs, top_k, num_classes, workers, _VideoIndex())
  except _IdCollision:
    return _average(inputs, top_k, num_classes, workers, _VideoIndex(exact=True))


def _take_results(futures: list) -> Iterator:
  """Yields the futures' results in order, dropping each future (and what it holds) as it goes."""
  for i in range(len(futures)):
    future, futures[i] = futures[i], None
    yield future.result()


def _average(inputs, top_k: int, num_classes: int, workers: int, index: _VideoIndex) -> Blend:
  total_weight = float(sum(weight for _, weight in inputs))  # Python's sum, like the original
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    # Every range of every file is queued at once, in file order.
    futures = [[pool.submit(_parse_range, path, byte_range, num_classes)
                for byte_range in _line_ranges(path, PARSE_RANGE_BYTES)]
               for path, _ in inputs]
    indexed_inputs, column = [], 0
    try:
      # In input order (ids are numbered by first appearance) while later files still parse.
      for i, (path, weight) in enumerate(inputs):
        parsed = _join_ranges(path, _take_results(futures[i]))
        codes = index.add(parsed.video_ids, parsed.id_keys)
        indexed_inputs.append(_IndexedInput(parsed, codes, weight, column))
        column += indexed_inputs[-1].width
        del parsed, codes
    finally:
      for future in itertools.chain.from_iterable(futures):
        if future is not None:
          future.cancel()
    for indexed in indexed_inputs:
      indexed.index_rows(index.size)
    blend = Blend(video_ids=index.ids(),
                  labels=np.empty((index.size, top_k), np.int32),
                  scores=np.empty((index.size, top_k)),
                  counts=np.empty(index.size, np.int32),
                  total_weight=total_weight)
    bounds = np.linspace(0, index.size, workers + 1).astype(int)
    ranges = [pool.submit(_blend_range, indexed_inputs, low, high, total_weight, num_classes,
                          blend) for low, high in zip(bounds[:-1], bounds[1:]) if high > low]
    for blended_range in ranges:
      blended_range.result()
  return blend


# ---------------------------------------------------------------------------------------------
# Writing the submission.

WRITE_BLOCK_VIDEOS = 8192
# Scores below this are formatted by the vectorized path; larger ones (never produced by
# probabilities) go through Python's "%.6f".
_FAST_SCORE_LIMIT = 9999.0
# v * 1e6 is within 1e-6 of the exact decimal expansion for v < 1e4: values whose seventh
# decimal is this close to a rounding tie are formatted by Python, which rounds exactly.
_TIE_MARGIN = 4e-6


def _write_digits(cells: np.ndarray, keep: Optional[np.ndarray], first: int,
                  values: np.ndarray, width: int) -> None:
  """Writes non-negative int32 values as `width` right-aligned ASCII digits at cells[..., first:].

  keep (if given) drops the leading zeros; the last digit always stays.
  """
  for column in range(width):
    power = np.int32(10**(width - 1 - column))
    cells[..., first + column] = values // power % np.int32(10) + np.int32(_ZERO)
    if keep is not None and column < width - 1:
      np.greater_equal(values, power, out=keep[..., first + column])


def _exactly_formattable(scores: np.ndarray) -> np.ndarray:
  """Cells whose "%.6f" the vectorized path reproduces exactly (padding cells count as such)."""
  scaled = scores * MICRO
  fraction = scaled - np.floor(scaled)
  with np.errstate(invalid="ignore"):
    return np.isnan(scores) | ((scores >= 0) & ~np.signbit(scores) & (scores < _FAST_SCORE_LIMIT)
                               & (np.abs(fraction - 0.5) > _TIE_MARGIN))


def _format_rows_python(video_id: bytes, labels: np.ndarray, scores: np.ndarray) -> bytes:
  pairs = b" ".join(b"%d %.6f" % (label, score) for label, score in zip(labels, scores))
  return b"%s,%s\n" % (video_id, pairs)


def _format_rows(video_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                 counts: np.ndarray) -> bytes:
  """The CSV lines `<id>,<label> <score> ...` of a block of videos, scores as "%.6f".

  Every line is laid out as a fixed-width byte grid (id, comma, pair cells, newline) with a keep
  mask for leading zeros, padding and the last pair's trailing space; one boolean compaction
  then yields the text. Rows holding a score the grid cannot write exactly use Python.
  """
  rows, top_k = labels.shape
  present = np.arange(top_k) < counts[:, None]
  exact = _exactly_formattable(scores) | ~present
  python_rows = np.flatnonzero(~exact.all(axis=1))
  micro = np.rint(np.where(exact & present, scores, 0.0) * MICRO).astype(np.int64)
  integer = (micro // MICRO).astype(np.int32)
  fraction = (micro % MICRO).astype(np.int32)
  label_values = np.where(present, labels, 0).astype(np.int32)
  label_width = len(str(int(label_values.max(initial=0))))
  integer_width = len(str(int(integer.max(initial=0))))
  cell = label_width + integer_width + 9  # "<label> <integer>.<6 decimals> "
  id_width = video_ids.dtype.itemsize
  grid = np.empty((rows, id_width + 1 + top_k * cell + 1), np.uint8)
  keep = np.ones(grid.shape, bool)
  grid[:, :id_width] = video_ids.view(np.uint8).reshape(rows, id_width)
  np.not_equal(grid[:, :id_width], 0, out=keep[:, :id_width])  # the padding of shorter ids
  grid[:, id_width] = _COMMA
  grid[:, -1] = _NEWLINE
  cells = grid[:, id_width + 1:-1].reshape(rows, top_k, cell)
  cells_keep = keep[:, id_width + 1:-1].reshape(rows, top_k, cell)
  _write_digits(cells, cells_keep, 0, label_values, label_width)
  cells[..., label_width] = _SPACE
  _write_digits(cells, cells_keep, label_width + 1, integer, integer_width)
  cells[..., label_width + 1 + integer_width] = _DOT
  _write_digits(cells, None, label_width + 2 + integer_width, fraction, 6)
  cells[..., -1] = _SPACE
  cells_keep &= present[:, :, None]
  cells_keep[np.arange(rows), np.maximum(counts - 1, 0), -1] = False  # no space after the last
  text = grid[keep].tobytes()
  if not len(python_rows):
    return text
  ends = np.cumsum(np.count_nonzero(keep, axis=1))
  pieces, position = [], 0
  for row in python_rows:
    pieces.append(text[position:ends[row - 1] if row else 0])
    pieces.append(_format_rows_python(video_ids[row], labels[row, :counts[row]],
                                      scores[row, :counts[row]]))
    position = ends[row]
  pieces.append(text[position:])
  return b"".join(pieces)


def write_submission(blend: Blend, output_file: str, top_k: Optional[int] = None,
                     workers: int = 2) -> None:
  """Writes the blend as a submission CSV (the first top_k pairs of each video, default all).

  The CSV is written to a temporary file beside output_file and renamed over it only when
  complete (fileio.atomic_output), so a failed run never leaves a partial submission. Blocks of
  rows are formatted by `workers` threads.
  """
  top_k = blend.labels.shape[1] if top_k is None else top_k
  if top_k <= 0:
    raise InputError("top_k must be positive, got %d" % top_k)

  def format_block(first: int) -> bytes:
    rows = slice(first, first + WRITE_BLOCK_VIDEOS)
    return _format_rows(blend.video_ids[rows], blend.labels[rows, :top_k],
                        blend.scores[rows, :top_k], np.minimum(blend.counts[rows], top_k))

  try:
    with fileio.atomic_output(output_file, "wb") as out, \
        concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
      umask = os.umask(0)
      os.umask(umask)
      os.fchmod(out.fileno(), 0o666 & ~umask)  # a temporary file is 0600; the CSV need not be
      out.write(HEADER + b"\n")
      for text in pool.map(format_block, range(0, len(blend.video_ids), WRITE_BLOCK_VIDEOS)):
        out.write(text)
  except OSError as e:
    raise InputError("cannot write %s: %s" % (output_file, e.strerror or e))


# ---------------------------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the script's flags (only when run as a script, or into a test's FlagValues)."""
  flags.DEFINE_string(
      "inputs", None,
      "Comma-separated FILE=WEIGHT (FILE alone: weight 1). Default: the seven CSVs written by "
      "the README's inference commands, weight 1 each.", flag_values=flag_values)
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


def _parse_flags(argv: List[str]) -> List[str]:
  """absl's parser, with a bad flag reported like every other error: one line, exit 1."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write("error: %s\n" % e)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_parse_flags)
