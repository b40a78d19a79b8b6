"""Turning TensorFlow's errors about record files into one-line messages that name the file.

TensorFlow reports a bad record in many shapes: the text of a tf.debugging.Assert of the
readers (graph or eager form), a parser error naming the record, or only the byte offset of a
truncated or corrupted record in an unnamed file. This module recognizes each shape, and for
the last one walks the record framing (lengths and masked CRC-32C checksums) of the matched
files to find the file and the record.
"""
import ast
import re
import struct
import time
from typing import Callable, List, Optional, Tuple

import tensorflow as tf

import utils

# Bytes of a TFRecord around its data: uint64 length, uint32 CRC of the length, uint32 CRC of
# the data.
RECORD_FRAMING_BYTES = 16


# tf.debugging.Assert failures: graph mode prints "assertion failed: [<text>]", eager mode
# "Summarized data: b'<text>'".
_ASSERTION = re.compile(r"assertion failed: \[(.*?)\](?:\s*\n|\s*\[\[|\s*$)", re.S)
_EAGER_ASSERTION = re.compile(r"Summarized data: (b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\")")
_MISSING_FEATURE_LIST = re.compile(
    r"Name: (?P<name>.*?), Feature list '(?P<feature>[^']*)' is required but could not be found")
_UNPARSABLE = re.compile(r"Invalid protocol message input, example id: (?P<name>[^\n]*?)"
                         r"(?:\s*\[\[|\s*\[Op:|\n|$)")
_IN_EXAMPLE = re.compile(r"(?P<problem>[^{}\n]*?) in example (?P<name>[^\n]*?)"
                         r"(?:\s*\[\[|\s*\[Op:|\n|$)")
# Parser errors caused by a corrupt record that TensorFlow reports without the record's name.
_UNNAMED_PARSE_ERROR = re.compile(r"(Unexpected total number of elements in feature \S+|"
                                  r"Inconsistent max number of elements for feature [^\n\[]*)")
_NAMED = re.compile(r"Name: (?P<name>.*?), (?P<problem>[^\n]*?)(?:\s*\[\[|\s*\[Op:|\n|$)")
_BAD_RECORD_FILE = re.compile(r"(?P<problem>(?:truncated|corrupted) record at (?P<offset>\d+))")
_CLUTTER = [
    re.compile(r"\{\{function_node [^}]*\}\}\s*"),
    re.compile(r"\[\[\{\{[^\]]*\]\]"),
    re.compile(r"\[Op:[^\]]*\]( name: \S*)?"),
    re.compile(r"Error in user-defined function passed to \S+ transformation with iterator: "
               r"\S+: "),
    # The stack of the node that failed: every frame, not only the first (each frame line is
    # followed by a blank line).
    re.compile(r"Graph execution error:\s*(?:Detected at node [^\n]*? defined at "
               r"\(most recent call last\):\s*(?:File \"[^\n]*\s*)*)?"),
]


def _crc32c_table() -> List[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC32C_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
  """The checksum TFRecord files store: CRC-32C (Castagnoli), rotated and offset ("masked")."""
  crc, table = 0xFFFFFFFF, _CRC32C_TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _bad_record_index(path: str, offset: int) -> Optional[int]:
  """Index of the record of `path` that TensorFlow's "record at <offset>" refers to (the offset
  of its header, or of its data after a data checksum failure) if that record is truncated or
  fails a checksum, else None (no record starts there, or the record there is sound)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    size = f.size()
    if offset >= size:
      return None
    index, position = 0, 0
    while position + 12 < offset:   # hop over the records before it, reading only lengths
      f.seek(position)
      header = f.read(12)
      if len(header) < 12:
        return None
      position += struct.unpack("<Q", header[:8])[0] + RECORD_FRAMING_BYTES
      index += 1
    if position not in (offset, offset - 12):
      return None
    f.seek(position)
    header = f.read(12)
    if len(header) < 12:
      return index
    length, length_crc = struct.unpack("<QI", header)
    if masked_crc32c(header[:8]) != length_crc or position + length + RECORD_FRAMING_BYTES > size:
      return index
    data = f.read(length)
    data_crc = struct.unpack("<I", f.read(4))[0]
    return index if masked_crc32c(data) != data_crc else None


def locate_bad_record(files: List[str], offset: int,
                      max_seconds: float = 20.0) -> Optional[Tuple[str, int]]:
  """(file, record index) of the first of `files` whose record at byte `offset` is truncated or
  corrupted, or None if none is found (the search gives up after max_seconds: it reads record
  headers up to `offset` in every file, which on a huge remote data set can take long)."""
  deadline = time.time() + max_seconds
  for path in files:
    if time.time() > deadline:
      return None
    try:
      index = _bad_record_index(path, offset)
    except (tf.errors.OpError, OSError):
      continue
    if index is not None:
      return path, index
  return None


def _unescape(text: str) -> str:
  """Undoes the C escaping tf.debugging.Assert applies to string data."""
  return re.sub(r"\\(['\"\\])", r"\1", text).replace("\\n", " ")


def error_message(exc) -> str:
  """The first meaningful line of an exception's message, without TensorFlow's op clutter."""
  text = getattr(exc, "message", None) or str(exc)
  for pattern in _CLUTTER:
    text = pattern.sub("", text)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0] if lines else type(exc).__name__


def describe(exc: Exception, data_pattern: Optional[str] = None,
             list_files: Callable[[str], List[str]] = lambda pattern: []) -> utils.InputError:
  """One-line InputError for an error raised while reading or decoding records.

  Keeps the file name and the problem, drops TensorFlow's op names and graph stack. Errors
  that carry no file name (a truncated TFRecord file) mention data_pattern instead.

  Args:
    exc: the tf.errors.OpError (or any exception) raised while iterating a dataset.
    data_pattern: the pattern being read, for errors that cannot name a file.
    list_files: the files of data_pattern ([] when it cannot be listed), searched for the
      record that TensorFlow names only by its byte offset.

  Returns:
    utils.InputError; scripts print it as `error: <message>`.
  """
  text = getattr(exc, "message", None) or str(exc)
  match = _ASSERTION.search(text)
  if match:
    return utils.InputError(_unescape(match.group(1)))
  match = _EAGER_ASSERTION.search(text)
  if match:
    return utils.InputError(
        ast.literal_eval(match.group(1)).decode("utf-8", "replace").replace("\n", " "))
  match = _MISSING_FEATURE_LIST.search(text)
  if match:
    return utils.InputError(
        "%s: a record has no frame-level feature list %s (check --feature_names; video-level "
        "records need --frame_features=False)" % (match.group("name"), match.group("feature")))
  match = _UNPARSABLE.search(text)
  if match:
    return utils.InputError("%s: a record is not a tf.train.SequenceExample / tf.train.Example "
                            "(cannot parse it)" % match.group("name"))
  match = _NAMED.search(text)
  if match:
    return utils.InputError("%s: %s" % (match.group("name"), match.group("problem").strip()))
  match = _IN_EXAMPLE.search(text)
  if match:
    return utils.InputError("%s: a record cannot be parsed (%s)" % (
        match.group("name"), match.group("problem").strip()))
  where = ("a file matching %s" % data_pattern) if data_pattern else "a record file"
  match = _UNNAMED_PARSE_ERROR.search(text)
  if match:
    return utils.InputError("%s holds a record that cannot be parsed (%s)" % (
        where, match.group(1).strip()))
  match = _BAD_RECORD_FILE.search(text)
  if match:
    # TensorFlow names only the byte offset: find the file (and record) it refers to.
    offset = int(match.group("offset"))
    found = locate_bad_record(list_files(data_pattern), offset) if data_pattern else None
    if found:
      path, index = found
      return utils.InputError(
          "%s: not a valid TFRecord file: %s record at byte %d (record %d of the file; reading "
          "%s)" % (path, match.group("problem").split()[0], offset, index, data_pattern))
    return utils.InputError("%s is not a valid TFRecord file (%s)" % (where,
                                                                      match.group("problem")))
  message = error_message(exc)
  if data_pattern:
    message = "%s (reading %s)" % (message, data_pattern)
  return utils.InputError(message)
