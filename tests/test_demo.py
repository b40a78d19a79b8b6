"""`make demo` in a reduced form: every stage runs, the submissions are well formed and the
GAPs it reports are those of its outputs (recomputed with eval_util)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import eval_util
import file_averaging
import make_synthetic_data
from willow import readme_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One model of each family (cluster pooling, bag of words, recurrent): every stage of the
# pipeline runs for each. The seven README lines themselves are run by
# tests/test_scripts.py::test_readme_command_lines_run_unchanged.
DEMO_MODELS = ("netvlad", "soft_dbof", "lstm")


@pytest.mark.slow
def test_demo_pipeline_writes_a_blended_submission(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "demo.py"), "--quick", "--videos=64",
       "--models=" + ",".join(DEMO_MODELS), "--output_dir=%s" % tmp_path,
       "--train_flags=--log_steps=5 --export_model_steps=0"],
      capture_output=True, text=True, timeout=1500)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  train_lines = [l for l in result.stdout.splitlines() if l.startswith("  $ python train.py")]
  assert len(train_lines) == len(DEMO_MODELS)
  assert all(l.endswith(" --log_steps=5 --export_model_steps=0") for l in train_lines)
  assert result.stdout.count("  trained in ") == len(DEMO_MODELS)
  for willow in readme_configs.WILLOW_CONFIGS:
    assert (willow.title in result.stdout) == (willow.key in DEMO_MODELS)
    assert (tmp_path / willow.inference_output).exists() == (willow.key in DEMO_MODELS)
  for submission in ("WILLOW_submission.csv", "WILLOW_submission_learned.csv"):
    lines = (tmp_path / submission).read_text().splitlines()
    assert lines[0] == "VideoId,LabelConfidencePairs"
    assert len(lines) == 1 + 64  # one row per test video
    assert all(len(line.split(",")[1].split()) == 40 for line in lines[1:])  # top 20 pairs
  check_reported_gaps(result.stdout, tmp_path)


def csv_gap(path, truth, num_classes=100):
  """GAP@20 of a predictions CSV, by eval_util on a dense matrix (absent pairs score 0)."""
  lines = open(path).read().splitlines()[1:]
  predictions = np.zeros((len(lines), num_classes))
  actuals = np.zeros((len(lines), num_classes))
  for row, line in enumerate(lines):
    video, pairs = line.split(",")
    tokens = pairs.split()
    predictions[row, [int(t) for t in tokens[0::2]]] = [float(t) for t in tokens[1::2]]
    actuals[row, truth[video]] = 1
  return eval_util.calculate_gap(predictions, actuals, top_k=20)


def check_reported_gaps(stdout, out):
  """Each model's held-out and test GAP and both ensembles' test GAP, as printed, are those of
  the CSVs the demo wrote; the learned submission blends the test CSVs with the weights the
  fit printed."""
  features = out / "features"
  truth = {part: make_synthetic_data.load_ground_truth(
      make_synthetic_data.ground_truth_path(str(features), part)) for part in ("holdout", "test")}
  assert re.search(r"holdout\s+64 videos .* not matched by the training glob \*a\*\?\?", stdout)
  assert re.search(r"validate\s+64 videos .* matched by the training glob", stdout)
  chosen = [c for c in readme_configs.WILLOW_CONFIGS if c.key in DEMO_MODELS]
  number = r"([0-9]\.[0-9]{4})"
  for willow in chosen:
    match = re.search(re.escape(willow.title) + r"\s+[0-9,]+\s+%s\s+%s$" % (number, number),
                      stdout, re.M)
    held_out = "holdout-" + willow.inference_output.split("-", 1)[1]
    assert abs(float(match.group(1)) - csv_gap(out / held_out, truth["holdout"])) < 6e-5
    assert abs(float(match.group(2)) - csv_gap(out / willow.inference_output,
                                               truth["test"])) < 6e-5
  weights = json.loads((out / "ensemble_weights.json").read_text())["weights"]
  assert re.search(r"^    weights=%s$" % re.escape(",".join("%g" % w for w in weights)), stdout,
                   re.M)
  blended = file_averaging.average_files(
      [(str(out / c.inference_output), w) for c, w in zip(chosen, weights)], 20, 100)
  file_averaging.write_submission(blended, str(out / "expected.csv"))
  assert (out / "expected.csv").read_text() == (out / "WILLOW_submission_learned.csv").read_text()
  gaps = {}
  for name, submission in (("equal", "WILLOW_submission.csv"),
                           ("learned", "WILLOW_submission_learned.csv")):
    match = re.search(r"^ensemble, %s weights\s+%s\s+\(%s\)$" % (name, number, submission),
                      stdout, re.M)
    gaps[name] = csv_gap(out / submission, truth["test"])
    assert abs(float(match.group(1)) - gaps[name]) < 6e-5
  best = max(csv_gap(out / c.inference_output, truth["test"]) for c in chosen)
  verdict = "beats" if gaps["learned"] > best else "does not beat"
  assert "the learned-weight ensemble %s the best single model" % verdict in stdout


@pytest.mark.parametrize("models, message", [
    ("netvlad", "blends at least two models, got 1"),
    ("netvlad,lsmt", "unknown lsmt (choose from netvlad,"),
])
def test_demo_refuses_a_model_list_it_cannot_blend_before_any_work(tmp_path, models, message):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "demo.py"), "--models=" + models,
       "--output_dir=%s" % (tmp_path / "out")], capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert message in result.stderr.splitlines()[-1]
  assert not (tmp_path / "out").exists()
