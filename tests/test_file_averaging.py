"""Tests of file_averaging.py and willow/submission_csv.py: hand-computed blends, the output
format, the CLI, bad inputs, and blends and a differential fuzz compared with a plain Python
per-line blend (reference_blend)."""
import collections
import math
import os
import random
import re
import stat
import subprocess
import sys

from absl import flags
import numpy as np
import pytest

import file_averaging
from willow import readme_configs
from willow import submission_csv
from willow.fileio import InputError

HEADER = "VideoId,LabelConfidencePairs\n"


def write_csv(folder, name, rows, header=HEADER):
  path = os.path.join(str(folder), name)
  with open(path, "w") as f:
    f.write(header + "".join(row + "\n" for row in rows))
  return path


def blend_text(inputs, top_k=20, num_classes=4716, **kwargs):
  """The submission text that average_files + write_submission produce."""
  blend = file_averaging.average_files(inputs, top_k=top_k, num_classes=num_classes, **kwargs)
  out = os.path.join(os.path.dirname(inputs[0][0]), "out.csv")
  file_averaging.write_submission(blend, out)
  with open(out) as f:
    return f.read()


def run_main(argv):
  """Runs main() with its own flag values (other tests define flags of the same names)."""
  flag_values = flags.FlagValues()
  file_averaging.define_flags(flag_values)
  flag_values(["file_averaging.py"] + argv)
  file_averaging.main(["file_averaging.py"], flag_values)


def reference_blend(inputs, top_k, num_classes=file_averaging.DEFAULT_NUM_CLASSES):
  """The original algorithm, written plainly (Counter sums in input order from 0, top_k by
  score then smaller label, "%.6f"), with file_averaging's grammar checked line by line and
  inputs of weight 0 not read: the submission as bytes, or None for a bad input."""
  sums = collections.OrderedDict()
  for path, weight in inputs:
    if weight == 0:
      continue
    with open(path, "rb") as f:
      lines = f.read().split(b"\n")
    rows = lines[1:-1] if lines[-1] == b"" else lines[1:]
    if lines[0] != HEADER.encode().rstrip(b"\n") or not rows:
      return None
    seen = set()
    for line in rows:
      if line.count(b",") != 1:
        return None
      video, pairs = line.split(b",")
      if (not video or b" " in video or b"\0" in video or video in seen
          or len(video) > submission_csv.MAX_ID_BYTES):
        return None
      seen.add(video)
      tokens = pairs.split(b" ") if pairs else []
      if b"" in tokens or len(tokens) % 2:
        return None
      labels = tokens[0::2]
      if (any(re.fullmatch(rb"[0-9]+", label) is None for label in labels)
          or len(set(map(int, labels))) < len(labels)
          or any(int(label) >= num_classes for label in labels)):
        return None
      try:
        scores = [float(score) for score in tokens[1::2]]
      except ValueError:
        return None
      if not all(map(math.isfinite, scores)):
        return None
      counter = sums.setdefault(video, collections.Counter())
      for label, score in zip(labels, scores):
        counter[int(label)] += weight * score
  total = sum(weight for _, weight in inputs)
  lines = [HEADER.encode()]
  for video, counter in sums.items():
    best = sorted((-value / total, label) for label, value in counter.items())[:top_k]
    lines.append(video + b"," + b" ".join(b"%d %.6f" % (label, -score) for score, label in best)
                 + b"\n")
  return b"".join(lines)


# ---------------------------------------------------------------------------------------------
# Blends computed by hand.


def test_weighted_blend_string_ids_and_a_video_missing_from_one_input(tmp_path):
  a = write_csv(tmp_path, "a.csv", ["0001,3 0.500000 1 0.250000",
                                    "02CroU5sJF8,2 1.000000",
                                    "only_a,5 0.900000"])
  b = write_csv(tmp_path, "b.csv", ["02CroU5sJF8,2 0.500000 7 0.100000",
                                    "0001,1 0.750000",
                                    "only_b,0 0.300000"])
  # Total weight 1.5. 0001: label 1 = (0.25 + 0.5 * 0.75) / 1.5, label 3 = 0.5 / 1.5.
  assert blend_text([(a, 1.0), (b, 0.5)]) == (
      HEADER
      + "0001,1 0.416667 3 0.333333\n"
      + "02CroU5sJF8,2 0.833333 7 0.033333\n"
      + "only_a,5 0.600000\n"
      + "only_b,0 0.100000\n")


def test_rows_follow_first_appearance_across_inputs_in_the_order_given(tmp_path):
  a = write_csv(tmp_path, "a.csv", ["z,1 0.5", "m,1 0.5"])
  b = write_csv(tmp_path, "b.csv", ["k,1 0.5", "z,1 0.5", "a,1 0.5"])
  ids = [line.split(",")[0] for line in blend_text([(a, 1), (b, 1)]).splitlines()[1:]]
  assert ids == ["z", "m", "k", "a"]
  ids = [line.split(",")[0] for line in blend_text([(b, 1), (a, 1)]).splitlines()[1:]]
  assert ids == ["k", "z", "a", "m"]


def test_top_k_sorted_by_score_then_smaller_label(tmp_path):
  a = write_csv(tmp_path, "a.csv", ["v,9 0.300000 4 0.500000 2 0.300000 7 0.300000 1 0.100000"])
  assert blend_text([(a, 1)], top_k=4) == HEADER + "v,4 0.500000 2 0.300000 7 0.300000 9 0.300000\n"
  # The cut at 3 falls among the three 0.3s: the smallest labels stay.
  assert blend_text([(a, 1)], top_k=3) == HEADER + "v,4 0.500000 2 0.300000 7 0.300000\n"
  assert blend_text([(a, 1)], top_k=2) == HEADER + "v,4 0.500000 2 0.300000\n"


def test_ties_created_by_different_inputs(tmp_path):
  a = write_csv(tmp_path, "a.csv", ["v,10 0.2 30 0.4"])
  b = write_csv(tmp_path, "b.csv", ["v,20 0.4 10 0.2"])
  # 10: (0.2 + 0.2) / 2, 20: 0.4 / 2, 30: 0.4 / 2 -> all 0.2; ties go to the smaller label.
  assert blend_text([(a, 1), (b, 1)], top_k=2) == HEADER + "v,10 0.200000 20 0.200000\n"


def test_inputs_where_no_video_has_pairs(tmp_path):
  # Found by the fuzz test below: a file (or a read block) without any pair crashed.
  a = write_csv(tmp_path, "a.csv", ["v,", "w,"])
  b = write_csv(tmp_path, "b.csv", ["w,"])
  assert blend_text([(a, 1.0), (b, 1.0)]) == HEADER + "v,\nw,\n"


def test_fewer_labels_than_top_k_and_a_video_without_pairs(tmp_path):
  a = write_csv(tmp_path, "a.csv", ["v,3 0.25", "empty,"])
  assert blend_text([(a, 2)]) == HEADER + "v,3 0.250000\nempty,\n"


def test_every_pair_is_read_and_scores_sum_at_full_precision(tmp_path):
  # The original read only the first half of the pairs and truncated scores to 5 decimals.
  pairs = " ".join("%d 0.%06d" % (label, 200000 + 2 * label) for label in range(50))
  a = write_csv(tmp_path, "a.csv", ["v," + pairs])
  b = write_csv(tmp_path, "b.csv", ["v,0 0.000200"])
  text = blend_text([(a, 1), (b, 1)], top_k=50)
  fields = text.splitlines()[1].split(",")[1].split(" ")
  assert len(fields) == 100
  assert fields[:6] == ["0", "0.100100", "49", "0.100049", "48", "0.100048"]
  assert fields[-4:] == ["2", "0.100002", "1", "0.100001"]


def test_scores_are_summed_in_input_order_from_zero(tmp_path):
  # Float addition is not associative: ((0 + 1e20) + -1e20) + 0.5 is 0.5, but summed from the
  # other end it is 0. The sum starts at 0, so -0.0s blend to 0.0, as in the original.
  a = write_csv(tmp_path, "a.csv", ["v,1 1e20", "z,2 -0e0"])
  b = write_csv(tmp_path, "b.csv", ["v,1 -1e20", "z,2 -0e0"])
  c = write_csv(tmp_path, "c.csv", ["v,1 0.5"])
  assert blend_text([(a, 1), (b, 1), (c, 1)]) == HEADER + "v,1 0.166667\nz,2 0.000000\n"
  assert blend_text([(c, 1), (b, 1), (a, 1)]) == HEADER + "v,1 0.000000\nz,2 0.000000\n"


def test_six_decimals_match_printf_exactly():
  rng = np.random.default_rng(0)
  values = np.concatenate([
      rng.random(2000), rng.random(200) * 20,
      [0.0, 1.0, 0.0078125, 0.5, 1 / 3, 2 / 3, 0.0000005, 0.0000015, 0.9999995, 123456.5,
       9999.9999996, 12345.678901, -0.25, -0.0, 0.1234565, 2.5e-7]])
  values = values.reshape(-1, 2)
  labels = np.arange(values.size, dtype=np.int32).reshape(-1, 2) % 4716
  ids = np.array([b"v%d" % i for i in range(len(values))])
  text = submission_csv.format_rows(ids, labels, values).decode()
  expected = "".join("v%d,%d %.6f %d %.6f\n" % (i, l[0], v[0], l[1], v[1])
                     for i, (l, v) in enumerate(zip(labels, values)))
  assert text == expected
  # Shorter rows (counts), and inference.py's batches: float32 scores, object ids.
  counts = np.array([2, 0, 1])
  assert submission_csv.format_rows(ids[:3], labels[:3], values[:3], counts).decode() == (
      "v0,0 %.6f 1 %.6f\nv1,\nv2,4 %.6f\n" % (values[0, 0], values[0, 1], values[2, 0]))
  scores32 = np.array([[0.1, 0.7]], np.float32)
  assert submission_csv.format_rows(np.array([b"x"], object), np.array([[3, 9]]), scores32) == (
      b"x,3 %f 9 %f\n" % (float(scores32[0, 0]), float(scores32[0, 1])))


def test_output_header_and_line_format(tmp_path):
  a = write_csv(tmp_path, "a.csv", ["x,4715 0.5 0 1"])
  with open(os.path.join(str(tmp_path), "a.csv"), "rb") as f:
    assert f.readline() == b"VideoId,LabelConfidencePairs\n"
  text = blend_text([(a, 1)])
  assert text == "VideoId,LabelConfidencePairs\nx,0 1.000000 4715 0.500000\n"


@pytest.mark.parametrize("scores", [
    ["%.6f", "0.500000", "0.25", "1e-3"],  # "%.6f": a random one; the others make ties common
    ["1e16", "-1e16", "1", "0.5", "3"],  # sums that cancel: the summation order shows
])
def test_matches_a_plain_python_blend_on_random_ragged_inputs(tmp_path, monkeypatch, scores):
  # Small ranges and blocks so that both the parsing and the blending cross their boundaries.
  # Ties within an input and created by the blend, and sums that depend on their order.
  monkeypatch.setattr(submission_csv, "RANGE_BYTES", 250)
  monkeypatch.setattr(file_averaging, "BLEND_BLOCK_CELLS", 3 * 24)
  rng = random.Random(7)
  videos = ["%04d" % i for i in range(40)] + ["id_%d" % i for i in range(20)]
  inputs = []
  for number, weight in enumerate([1.0, 0.5, 2.0, 0.0, 1.0]):
    rows = []
    for video in rng.sample(videos, 45):
      labels = rng.sample(range(30), rng.choice([0, 1, 3, 8]) if number == 1 else 8)
      row_scores = [token % rng.random() if token.startswith("%") else token
                    for token in (rng.choice(scores) for _ in labels)]
      rows.append(video + "," + " ".join("%d %s" % p for p in zip(labels, row_scores)))
    inputs.append((write_csv(tmp_path, "in%d.csv" % number, rows), weight))
  for top_k in (1, 5, 40):
    for workers in (1, 2):
      assert (blend_text(inputs, top_k=top_k, num_classes=30, workers=workers)
              == reference_blend(inputs, top_k).decode())


def test_scores_in_other_notations_parse_like_float(tmp_path):
  tokens = ["0.123456", "1", "0.5", "-0.25", "12.345678", "0.123456789", "1e-3", "2.5E+1",
            "000.1", "7.", "+.5", "1_0.5", "0.75\r"]
  rows = ["v%d,%d %s" % (i, i, token) for i, token in enumerate(tokens)]
  parsed = file_averaging.parse_prediction_file(write_csv(tmp_path, "a.csv", rows))
  assert not parsed.scores_are_micro  # 0.123456789 needs float64
  assert parsed.score_values().tolist() == [float(t) for t in tokens]
  assert parsed.video_ids.tolist() == [b"v%d" % i for i in range(len(tokens))]
  assert parsed.labels.tolist() == list(range(len(tokens)))
  parsed = file_averaging.parse_prediction_file(write_csv(tmp_path, "b.csv", rows[:3]))
  assert parsed.scores_are_micro and parsed.scores.tolist() == [123456, 1000000, 500000]


def random_rows(rng, num_rows, ragged):
  rows = []
  for i in range(num_rows):
    labels = rng.sample(range(4716), rng.choice([0, 1, 5, 20]) if ragged else 20)
    rows.append("%s,%s" % (rng.choice(["%08d" % i, "id_%d" % i, "Kx-%d_Q" % i]),
                           " ".join("%d %.6f" % (label, rng.random()) for label in labels)))
  return rows


@pytest.mark.parametrize("ragged", [False, True])
def test_vectorized_and_line_by_line_parses_agree(tmp_path, monkeypatch, ragged):
  # The inference format takes the vectorized path (the line-by-line one is never called) ...
  path = write_csv(tmp_path, "a.csv", random_rows(random.Random(5), 300, ragged))

  def no_line_parse(*args):
    raise AssertionError("the line-by-line parse ran")

  with monkeypatch.context() as patch:
    patch.setattr(submission_csv, "_parse_lines", no_line_parse)
    fast = file_averaging.parse_prediction_file(path)
  # ... and gives what the line-by-line parse gives, array for array.
  with monkeypatch.context() as patch:
    patch.setattr(submission_csv, "_parse_vectorized", lambda *args: None)
    slow = file_averaging.parse_prediction_file(path)
  for field in ("video_ids", "pair_counts", "labels", "scores"):
    assert getattr(fast, field).dtype == getattr(slow, field).dtype
    assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
  assert fast.scores_are_micro and slow.scores_are_micro
  assert fast.labels.dtype == np.int16 and fast.scores.dtype == np.int32


@pytest.mark.parametrize("range_bytes", [1, 7, 30, 1000, 32 << 20])
def test_ranges_of_any_size_cover_every_line_once(tmp_path, monkeypatch, range_bytes):
  rows = ["v%d,%d 0.5" % (i, i) + "".join(" %d 0.25" % (100 + j) for j in range(i % 5))
          for i in range(20)]
  path = write_csv(tmp_path, "a.csv", rows)
  monkeypatch.setattr(submission_csv, "RANGE_BYTES", range_bytes)
  parsed = file_averaging.parse_prediction_file(path)
  assert parsed.video_ids.tolist() == [b"v%d" % i for i in range(20)]
  assert parsed.pair_counts.tolist() == [1 + i % 5 for i in range(20)]
  assert parsed.labels.tolist() == sum(([i] + [100 + j for j in range(i % 5)]
                                        for i in range(20)), [])
  assert parsed.pair_starts.tolist() == np.cumsum([0] + [1 + i % 5 for i in range(19)]).tolist()


def test_label_with_leading_zeros_and_unterminated_last_line(tmp_path):
  path = os.path.join(str(tmp_path), "a.csv")
  with open(path, "w") as f:
    f.write(HEADER + "a,0042 0.5 7 0.25\nb,000000003 0.125")
  parsed = file_averaging.parse_prediction_file(path)
  assert parsed.labels.tolist() == [42, 7, 3]
  assert parsed.pair_counts.tolist() == [2, 1]
  assert (parsed.scores / 1e6).tolist() == [0.5, 0.25, 0.125]


# ---------------------------------------------------------------------------------------------
# The command line.


def test_default_inputs_are_the_seven_readme_outputs(tmp_path, monkeypatch):
  names = readme_configs.README_INFERENCE_OUTPUTS
  assert len(names) == 7 and len(set(names)) == 7
  assert [name for name, _ in file_averaging.default_inputs()] == names
  assert all(weight == 1 for _, weight in file_averaging.default_inputs())
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  for i, name in enumerate(names):
    write_csv(inputs, name, ["vid,%d 0.700000 100 0.%d00000" % (i, i)])
  work = tmp_path / "work"
  work.mkdir()
  monkeypatch.chdir(work)
  run_main(["--input_dir=%s" % inputs])
  with open(work / "WILLOW_submission.csv") as f:
    text = f.read()
  # Label 100: (0.0 + 0.1 + ... + 0.6) / 7 = 0.3; labels 0..6: 0.7 / 7 = 0.1 each.
  assert text == HEADER + "vid,100 0.300000 " + " ".join("%d 0.100000" % i for i in range(7)) + "\n"


def test_inputs_flag_weights_and_relative_paths(tmp_path, monkeypatch):
  folder = tmp_path / "preds"
  folder.mkdir()
  write_csv(folder, "a.csv", ["v,1 0.4"])
  write_csv(folder, "b.csv", ["v,1 0.1 2 0.9"])
  monkeypatch.chdir(tmp_path)
  run_main(["--input_dir=preds", "--inputs=a.csv=3,b.csv", "--output_file=blend.csv",
            "--top_k=1"])
  with open(tmp_path / "blend.csv") as f:
    assert f.read() == HEADER + "v,1 0.325000\n"  # (3 * 0.4 + 0.1) / 4
  assert file_averaging.parse_inputs_flag("x.csv=0.5, y=z.csv=2 ,w.csv") == [
      ("x.csv", 0.5), ("y=z.csv", 2.0), ("w.csv", 1.0)]


SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "file_averaging.py")


def test_cli_in_a_subprocess_prints_one_summary_line(tmp_path):
  write_csv(tmp_path, "a.csv", ["v,1 0.5", "w,2 0.25"])
  write_csv(tmp_path, "b.csv", ["v,1 0.5"])
  result = subprocess.run([sys.executable, SCRIPT, "--inputs=a.csv,b.csv=0.5,a.csv=0",
                           "--output_file=s.csv"], cwd=str(tmp_path), capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "s.csv").read_text() == HEADER + "v,1 0.500000\nw,2 0.166667\n"
  assert not [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")]
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(tmp_path / "s.csv").st_mode) == 0o666 & ~umask  # as open(..., "w")
  assert result.stdout == ("blended 2 inputs (weights 1, 0.5; 1 of weight 0 dropped) over 2 "
                           "videos into s.csv\n")


def test_help_lists_the_flags_with_their_defaults():
  result = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True)
  assert "Try --helpfull" in result.stdout, result.stderr  # absl's --help exits with 1
  for flag, default in [("inputs", None), ("input_dir", "'.'"),
                        ("output_file", "'WILLOW_submission.csv'"), ("top_k", "'20'"),
                        ("num_classes", "'4716'")]:
    help_text = result.stdout.split("--%s:" % flag)[1].split("\n  --")[0]
    assert default is None or "(default: %s)" % default in help_text, (flag, help_text)


def test_weight_zero_drops_a_model_without_reading_it(tmp_path, capsys):
  a = write_csv(tmp_path, "a.csv", ["v,1 0.4 2 0.2"])
  b = write_csv(tmp_path, "b.csv", ["only_b,3 0.9", "v,2 0.8"])
  bad = write_csv(tmp_path, "bad.csv", ["not a prediction row"])
  # b's video and labels do not appear; the total weight is that of the kept inputs.
  expected = HEADER + "v,1 0.400000 2 0.200000\n"
  assert blend_text([(a, 2.0), (b, 0.0)]) == expected
  assert blend_text([(b, 0.0), (a, 2.0), (bad, 0.0)]) == expected
  assert blend_text([(a, 1.0), (b, 0.0)]) == reference_blend([(a, 1.0), (b, 0.0)], 20).decode()
  # A missing file is still an error, whatever its weight.
  output = os.path.join(str(tmp_path), "cli.csv")
  assert_fails_cleanly(capsys, ["--input_dir=%s" % tmp_path, "--inputs=a.csv,missing.csv=0",
                                "--output_file=%s" % output], output, ["missing.csv", "not found"])


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line `error: ...` naming the file (and line), exit 1, no output file.

BAD_FILES = [
    # (file content, expected message fragments)
    ("", ["is empty"]),
    ("VideoID,LabelConfidencePairs\nv,1 0.5\n", ["line 1", "expected the header"]),
    ("v,1 0.5\nw,2 0.5\n", ["line 1", "expected the header"]),
    (HEADER, ["no prediction rows"]),
    (HEADER + "v,1 0.5\nw 1 0.5\n", ["line 3", "no comma: expected 2 columns"]),
    (HEADER + "v,1 0.5\nw,1 0.5,2 0.5\n", ["line 3", "2 commas: expected 2 columns"]),
    (HEADER + "v,1 0.5\n\n", ["line 3", "no comma"]),
    (HEADER + "a b,1 0.5\n", ["line 2", "space in the video id"]),
    (HEADER + "a\0b,1 0.5\n", ["line 2", "NUL byte in the video id"]),
    (HEADER + "v,1 0.5 2\n", ["line 2", "odd number of tokens (3)"]),
    (HEADER + "v,1 0.5\nw,1 high\n", ["line 3", "score 'high' is not a number"]),
    (HEADER + "v,1 nan\n", ["line 2", "not a finite number"]),
    (HEADER + "v,1 0.5\nw,1.5 0.5\n", ["line 3", "label '1.5' is not an integer"]),
    (HEADER + "v,x 0.5\n", ["line 2", "label 'x' is not an integer"]),
    (HEADER + "v,1 0.5\nw,4716 0.5\n", ["line 3", "label 4716 is out of range [0, 4716)"]),
    (HEADER + "v,-1 0.5\n", ["line 2", "label -1 is out of range"]),
    (HEADER + "v,1 0.5 2 0.1 1 0.2\n", ["line 2", "label 1 appears twice"]),
    (HEADER + "v,1 0.5\nw,1 0.5\nv,2 0.5\n", ["line 4", "duplicate video id 'v'"]),
    (HEADER + "v,1  0.5\n", ["line 2", "empty token"]),
    (HEADER + ",1 0.5\n", ["line 2", "empty video id"]),
]


def assert_fails_cleanly(capsys, argv, output, fragments):
  with pytest.raises(SystemExit) as exit_info:
    run_main(argv)
  assert exit_info.value.code == 1
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  assert not os.path.exists(output)
  folder = os.path.dirname(output)
  assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


@pytest.mark.parametrize("content,fragments", BAD_FILES)
def test_bad_file(tmp_path, capsys, content, fragments):
  good = write_csv(tmp_path, "good.csv", ["v,1 0.5"])
  with open(os.path.join(str(tmp_path), "bad.csv"), "w") as f:
    f.write(content)
  output = os.path.join(str(tmp_path), "out.csv")
  assert_fails_cleanly(capsys, ["--input_dir=%s" % tmp_path, "--inputs=good.csv,bad.csv",
                                "--output_file=%s" % output],
                       output, [os.path.join(str(tmp_path), "bad.csv") + ":"] + fragments)
  del good


@pytest.mark.parametrize("range_bytes", [32 << 20, 300, 100])
def test_error_line_number_past_the_first_range(tmp_path, capsys, monkeypatch, range_bytes):
  # Also when the bad line is in a later byte range than the first (parsed by another thread).
  monkeypatch.setattr(submission_csv, "RANGE_BYTES", range_bytes)
  rows = ["v%03d,1 0.5 2 0.25" % i for i in range(100)]
  rows[76] = "v076,1 0.5 2 zero"
  write_csv(tmp_path, "bad.csv", rows)
  output = os.path.join(str(tmp_path), "out.csv")
  assert_fails_cleanly(capsys, ["--input_dir=%s" % tmp_path, "--inputs=bad.csv",
                                "--output_file=%s" % output], output, ["bad.csv: line 78:", "zero"])


@pytest.mark.parametrize("rows,fragments", [
    (["a,1 0.5", "b,1 0.5 1 0.2", "c,1 0.5", "d,1 x"], ["line 3:", "label 1 appears twice"]),
    (["a,1 0.5", "b,1 0.5", "c,1 x", "d,1 0.5", "e,y 0.5"], ["line 4:", "score 'x'"]),
    (["a,1 0.5", "b,9999 0.5", "c,1 x"], ["line 3:", "label 9999 is out of range"]),
])
def test_the_earliest_bad_line_is_reported(tmp_path, capsys, rows, fragments):
  write_csv(tmp_path, "bad.csv", rows)
  output = os.path.join(str(tmp_path), "out.csv")
  assert_fails_cleanly(capsys, ["--input_dir=%s" % tmp_path, "--inputs=bad.csv",
                                "--output_file=%s" % output], output, fragments)


@pytest.mark.parametrize("flag,fragments", [
    ("--inputs=missing.csv", ["missing.csv", "not found"]),
    ("--inputs=good.csv=0", ["total weight", "must be positive"]),
    ("--inputs=good.csv=-1,good.csv=2", ["good.csv", "weight -1.0", ">= 0"]),
    ("--inputs=good.csv=abc", ["weight 'abc'"]),
    ("--top_k=0", ["top_k must be positive"]),
    ("--top_k=-3", ["top_k must be positive"]),
    ("--output_file=no/such/folder/out.csv", ["no/such/folder/out.csv", "cannot write"]),
])
def test_bad_arguments(tmp_path, capsys, flag, fragments):
  write_csv(tmp_path, "good.csv", ["v,1 0.5"])
  output = os.path.join(str(tmp_path), "out.csv")
  argv = ["--input_dir=%s" % tmp_path, "--output_file=%s" % output]
  if not flag.startswith("--inputs"):
    argv.append("--inputs=good.csv")
  assert_fails_cleanly(capsys, argv + [flag], output, fragments)


def test_missing_default_inputs_name_the_first_missing_file(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  output = os.path.join(str(tmp_path), "WILLOW_submission.csv")
  assert_fails_cleanly(capsys, [], output, [readme_configs.README_INFERENCE_OUTPUTS[0]])


def test_ids_are_opaque_bytes_and_a_repeated_id_names_both_lines(tmp_path):
  # Ids equal as numbers, differing in one byte, or not UTF-8 are different videos.
  a = write_csv(tmp_path, "a.csv", ["x,1 0.5", "y,2 0.5", "0001,3 0.1", "1,3 0.3"])
  b = write_csv(tmp_path, "b.csv", ["y,2 0.25", "z,1 0.5", "001,3 0.2", "0001,3 0.2"])
  inputs = [(a, 1.0), (b, 1.0)]
  assert blend_text(inputs) == reference_blend(inputs, 20).decode()
  assert blend_text(inputs).splitlines()[3:] == ["0001,3 0.150000", "1,3 0.150000", "z,1 0.250000",
                                                 "001,3 0.100000"]
  with open(os.path.join(str(tmp_path), "c.csv"), "wb") as f:
    f.write(HEADER.encode() + b"\xff\xfe,1 0.5\n\xff\xfd,1 0.25\n")
  assert file_averaging.parse_prediction_file(f.name).video_ids.tolist() == [b"\xff\xfe",
                                                                            b"\xff\xfd"]
  c = write_csv(tmp_path, "c.csv", ["x,1 0.5", "q,1 0.5", "x,2 0.5"])
  with pytest.raises(InputError, match="line 4: duplicate video id 'x' .first on line 2."):
    file_averaging.average_files([(c, 1.0)])


def test_parse_prediction_file_is_file_averagings(tmp_path):
  assert file_averaging.parse_prediction_file is submission_csv.parse_prediction_file
  assert file_averaging.PredictionFile is submission_csv.PredictionFile


def test_library_raises_input_error(tmp_path):
  path = write_csv(tmp_path, "a.csv", ["v,1 0.5"])
  with pytest.raises(InputError, match="top_k must be positive"):
    file_averaging.average_files([(path, 1)], top_k=0)
  with pytest.raises(InputError, match="label 1 is out of range"):
    file_averaging.average_files([(path, 1)], num_classes=1)


# ---------------------------------------------------------------------------------------------
# Differential fuzz: mutated inputs give either reference_blend's blend, or a one-line
# InputError naming the mutated file exactly when reference_blend rejects them.

FUZZ_CLASSES = 50
FUZZ_BYTES = b" ,\n0123456789.-eE+\r\0\t\xffx"


def fuzz_csv(rng):
  rows = []
  for i in range(rng.randint(1, 12)):
    video = rng.choice([b"%08d" % i, b"id_%d" % i, b"02CroU5sJF%d" % i])
    labels = rng.sample(range(FUZZ_CLASSES), rng.choice([0, 1, 3, 5, 5, 5]))
    scores = [rng.choice([b"%.6f" % rng.random(), b"0.5", b"1e-3", b"%.6f" % (3 * rng.random())])
              for _ in labels]
    rows.append(video + b"," + b" ".join(b"%d %s" % pair for pair in zip(labels, scores)))
  return HEADER.encode() + b"\n".join(rows) + rng.choice([b"\n", b""])


def mutated(data, rng):
  data = bytearray(data)
  for _ in range(rng.randint(1, 3)):
    position = rng.randrange(len(data) + 1)
    operation = rng.randrange(6) if position < len(data) else rng.choice([1, 3])
    if operation == 0:
      data[position] = rng.choice(FUZZ_BYTES)
    elif operation == 1:
      data.insert(position, rng.choice(FUZZ_BYTES))
    elif operation == 2:
      del data[position]
    elif operation == 3:
      del data[position:]
    elif operation == 4:
      data[position] ^= 1 << rng.randrange(8)
    else:  # repeat a line elsewhere
      lines = bytes(data).split(b"\n")
      lines.insert(rng.randrange(1, len(lines) + 1), lines[rng.randrange(len(lines))])
      data = bytearray(b"\n".join(lines))
  return bytes(data)


def test_fuzzed_inputs_blend_like_a_plain_parser_or_fail_cleanly(tmp_path, monkeypatch):
  rng = random.Random(3)
  outcomes = collections.Counter()
  out = str(tmp_path / "out.csv")
  for _ in range(1000):
    # Tiny ranges too, so that ranges holding no pair or one line are common.
    monkeypatch.setattr(submission_csv, "RANGE_BYTES", rng.choice([1, 97, 150, 32 << 20]))
    monkeypatch.setattr(file_averaging, "BLEND_BLOCK_CELLS", rng.choice([1, 30, 1 << 19]))
    inputs = []
    for number in range(rng.randint(1, 3)):
      path = str(tmp_path / ("in%d.csv" % number))
      with open(path, "wb") as f:
        f.write(mutated(fuzz_csv(rng), rng) if number == 0 else fuzz_csv(rng))
      inputs.append((path, rng.choice([1.0, 0.5, 2.0])))
    top_k = rng.choice([1, 3, 20])
    expected = reference_blend(inputs, top_k, FUZZ_CLASSES)
    with open(inputs[0][0], "rb") as f:
      case = f.read()
    try:
      blend = file_averaging.average_files(inputs, top_k=top_k, num_classes=FUZZ_CLASSES,
                                           workers=rng.choice([1, 2]))
      file_averaging.write_submission(blend, out)
    except InputError as e:
      assert expected is None, (case, str(e))
      assert str(e).startswith(inputs[0][0] + ": ") and "\n" not in str(e), (case, str(e))
      outcomes["error"] += 1
    else:
      with open(out, "rb") as f:
        assert f.read() == expected, case
      outcomes["blended"] += 1
  # Both outcomes are common: the mutations reach past the first checks.
  assert outcomes["error"] >= 300 and outcomes["blended"] >= 100, outcomes


@pytest.mark.parametrize("counts", [[3, 3, 3, 3], [2, 0, 4, 3], [1, 1, 1, 1]])
def test_repeated_label_in_equal_and_ragged_rows(tmp_path, capsys, counts):
  rng = np.random.default_rng(sum(counts))
  rows = [list(rng.permutation(40)[:n]) for n in counts]

  def text(rows):
    return ["v%d,%s" % (i, " ".join("%d 0.5" % label for label in row))
            for i, row in enumerate(rows)]

  parsed = file_averaging.parse_prediction_file(write_csv(tmp_path, "good.csv", text(rows)))
  assert parsed.labels.tolist() == sum(rows, [])
  row = max(i for i, labels in enumerate(rows) if len(labels) >= 2 or i == 0)
  if len(rows[row]) < 2:
    return  # no row can hold a repeat
  rows[row][-1] = rows[row][0]
  output = os.path.join(str(tmp_path), "out.csv")
  write_csv(tmp_path, "bad.csv", text(rows))
  assert_fails_cleanly(capsys, ["--input_dir=%s" % tmp_path, "--inputs=bad.csv",
                                "--output_file=%s" % output], output,
                       ["line %d:" % (row + 2), "label %d appears twice" % rows[row][0]])
