"""Tests of fit_ensemble_weights.py, prediction_metrics.py, readers.read_video_labels and
eval.py --predictions_csv, against blends made by file_averaging.py and metrics computed by
eval_util on dense matrices."""
import json
import os
import stat
import subprocess
import sys

from absl import flags as absl_flags
import numpy as np
import pytest

import eval_util
import file_averaging
import fit_ensemble_weights
import make_synthetic_data
from willow import prediction_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 40


def write_predictions(path, video_ids, rows):
  """rows: per video a list of (label, score); scores written with %.6f as inference.py does."""
  with open(path, "w") as f:
    f.write("VideoId,LabelConfidencePairs\n")
    for video, pairs in zip(video_ids, rows):
      f.write(video + "," + " ".join("%d %.6f" % pair for pair in pairs) + "\n")
  return str(path)


def write_labels(path, truth):
  with open(path, "w") as f:
    f.write("VideoId,Labels\n")
    for video, labels in truth.items():
      f.write(video + "," + " ".join(str(label) for label in labels) + "\n")
  return str(path)


def random_truth(rng, video_ids, num_classes=NUM_CLASSES):
  return {v: sorted(rng.choice(num_classes, rng.integers(1, 4), replace=False).tolist())
          for v in video_ids}


def model_rows(rng, truth, signal, top, num_classes=NUM_CLASSES):
  """Each video's `top` best classes of sigmoid(signal * label + noise); signal 0 is noise."""
  rows = []
  for labels in truth.values():
    logits = rng.normal(0.0, 1.0, num_classes) - 2.0
    logits[labels] += signal
    scores = 1.0 / (1.0 + np.exp(-logits))
    best = np.argsort(-scores, kind="stable")[:top]
    rows.append([(int(c), float(scores[c])) for c in best])
  return rows


def dense(video_ids, rows, truth, num_classes=NUM_CLASSES):
  """(predictions, actuals) matrices: the CSV's scores, 0 elsewhere; multi-hot labels."""
  predictions = np.zeros((len(video_ids), num_classes))
  actuals = np.zeros((len(video_ids), num_classes))
  for i, video in enumerate(video_ids):
    for label, score in rows[i]:
      predictions[i, label] = score
    actuals[i, truth[video]] = 1
  return predictions, actuals


def blend_gap(paths_and_weights, truth, top_k=20):
  """GAP of file_averaging's blend, computed by eval_util on a dense matrix."""
  blend = file_averaging.average_files(paths_and_weights, top_k, NUM_CLASSES)
  ids = [v.decode() for v in blend.video_ids]
  rows = [list(zip(blend.labels[i, :blend.counts[i]], blend.scores[i, :blend.counts[i]]))
          for i in range(len(ids))]
  return eval_util.calculate_gap(*dense(ids, rows, truth), top_k=top_k), blend


def as_bytes_keys(truth):
  return {v.encode(): np.array(labels, np.int32) for v, labels in truth.items()}


# ---------------------------------------------------------------------------------------------
# The fast GAP of a blend.


def test_blend_gap_equals_file_averaging_blend_scored_by_eval_util(tmp_path):
  """Random weights, coarse scores (ties within and across inputs, at the top-k cut and in the
  pooled ranking), videos missing from some inputs, rows of different lengths."""
  rng = np.random.default_rng(3)
  top_k = 6
  ids = ["vid%03d" % i for i in range(150)]
  truth = random_truth(rng, ids)
  paths = []
  for m in range(3):
    present = [v for i, v in enumerate(ids) if i % 5 != m]  # every video is in 2 inputs
    rows = []
    for _ in present:
      labels = rng.choice(NUM_CLASSES, rng.integers(top_k, 14), replace=False)
      rows.append([(int(l), rng.integers(1, 9) / 8.0) for l in labels])
    paths.append(write_predictions(tmp_path / ("m%d.csv" % m), present, rows))
  parsed = [file_averaging.parse_prediction_file(p, NUM_CLASSES) for p in paths]
  table = prediction_metrics.build_pair_table(parsed, as_bytes_keys(truth), NUM_CLASSES)
  scorer = prediction_metrics.BlendScorer(table, top_k)
  for weights in ([1.0, 1.0, 1.0], [0.5, 0.25, 0.25], *rng.random((6, 3)).tolist()):
    expected, blend = blend_gap(list(zip(paths, weights)), truth, top_k)
    assert scorer.gap(weights) == expected
    # The same top-k pairs as file_averaging chose.
    scores = scorer.blend(weights)
    chosen = scorer.top_k_pairs(scores)[:-1]
    ours = set(zip(table.video_ids[table.pair_videos[chosen]].tolist(),
                   table.pair_labels[chosen].tolist()))
    theirs = {(blend.video_ids[v], int(label)) for v in range(len(blend.video_ids))
              for label in blend.labels[v, :blend.counts[v]]}
    assert ours == theirs
  # A weight of 0 leaves the model out.
  expected, _ = blend_gap([(paths[0], 0.3), (paths[2], 0.7)], truth, top_k)
  assert scorer.gap([0.3, 0.0, 0.7]) == expected


def test_gap_of_a_video_subset_counts_only_its_labels(tmp_path):
  rng = np.random.default_rng(4)
  ids = ["v%02d" % i for i in range(60)]
  truth = random_truth(rng, ids)
  rows = [model_rows(rng, truth, 2.0, 20), model_rows(rng, truth, 2.0, 20)]
  paths = [write_predictions(tmp_path / ("m%d.csv" % m), ids, r) for m, r in enumerate(rows)]
  table = prediction_metrics.build_pair_table(
      [file_averaging.parse_prediction_file(p, NUM_CLASSES) for p in paths],
      as_bytes_keys(truth), NUM_CLASSES)
  subset = np.arange(len(ids)) % 3 == 0
  sub_ids = [v for v, keep in zip(ids, subset) if keep]
  sub_paths = [write_predictions(tmp_path / ("s%d.csv" % m), sub_ids,
                                 [r for r, keep in zip(rows[m], subset) if keep])
               for m in range(2)]
  expected, _ = blend_gap([(p, w) for p, w in zip(sub_paths, (0.6, 0.4))], truth)
  assert prediction_metrics.BlendScorer(table, 20).gap([0.6, 0.4], subset) == expected
  assert prediction_metrics.BlendScorer(table.subset(subset), 20).gap([0.6, 0.4]) == expected


# ---------------------------------------------------------------------------------------------
# Learning the weights.


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
  """Validation and test predictions of two useful models (independent errors) and one noise
  model, 400 videos each."""
  folder = tmp_path_factory.mktemp("models")
  rng = np.random.default_rng(5)
  sets = {}
  for part in ("val", "test"):
    ids = ["%s%04d" % (part, i) for i in range(400)]
    truth = random_truth(rng, ids)
    paths = [write_predictions(folder / ("%s-%s.csv" % (part, name)), ids,
                               model_rows(rng, truth, signal, 20))
             for name, signal in (("a", 2.5), ("b", 2.0), ("noise", 0.0))]
    sets[part] = (paths, truth, write_labels(folder / ("%s-labels.csv" % part), truth))
  return sets


def test_learned_blend_beats_the_best_model_and_equal_weights_on_held_out_videos(
    three_models, capsys):
  val_paths, _, val_labels = three_models["val"]
  report = fit_ensemble_weights.run(val_paths, "", val_labels, NUM_CLASSES, 20, 0.25, "")
  weights = report["weights"]
  assert report["choice"] == "learned" and weights[2] < 0.05
  test_paths, test_truth, _ = three_models["test"]
  learned, _ = blend_gap(list(zip(test_paths, weights)), test_truth)
  equal, _ = blend_gap([(p, 1.0) for p in test_paths], test_truth)
  singles = [blend_gap([(p, 1.0)], test_truth)[0] for p in test_paths]
  assert learned > max(singles) + 0.02 and learned > equal + 0.02, (learned, equal, singles)
  # The printed figures are those of the weights printed.
  lines = capsys.readouterr().out.splitlines()
  assert lines[-1] == "weights=" + ",".join("%g" % w for w in weights)
  learned_line = [l for l in lines if l.startswith("learned weights 0")][0]
  val_truth = three_models["val"][1]
  val_gap, _ = blend_gap(list(zip(val_paths, weights)), val_truth)
  assert learned_line.split()[3] == "%.4f" % val_gap


def test_weights_are_reproducible_and_the_cli_prints_and_writes_them(three_models, tmp_path):
  val_paths, _, val_labels = three_models["val"]
  first = fit_ensemble_weights.run(val_paths, "", val_labels, NUM_CLASSES, 20, 0.25, "")
  output = tmp_path / "weights.json"
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "fit_ensemble_weights.py"),
       "--inputs=" + ",".join(val_paths), "--labels_csv=" + val_labels,
       "--num_classes=%d" % NUM_CLASSES, "--output_file=%s" % output],
      capture_output=True, text=True, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr
  saved = json.loads(output.read_text())
  assert saved["weights"] == first["weights"] and saved["rows"] == first["rows"]
  assert result.stdout.splitlines()[-1] == "weights=" + fit_ensemble_weights.format_weights(
      first["weights"])
  assert stat.S_IMODE(os.stat(output).st_mode) == 0o666 & ~current_umask()


def current_umask():
  umask = os.umask(0)
  os.umask(umask)
  return umask


def test_equal_weights_are_kept_when_learning_does_not_help_on_the_held_out_fold(tmp_path):
  """Two copies of one model: every blend is that model, nothing beats equal weights."""
  rng = np.random.default_rng(6)
  ids = ["v%03d" % i for i in range(200)]
  truth = random_truth(rng, ids)
  rows = model_rows(rng, truth, 2.0, 20)
  paths = [write_predictions(tmp_path / ("m%d.csv" % m), ids, rows) for m in range(2)]
  report = fit_ensemble_weights.run(paths, "", write_labels(tmp_path / "l.csv", truth),
                                    NUM_CLASSES, 20, 0.25, "")
  assert report["choice"] == "equal" and report["weights"] == [1.0, 1.0]


def test_cross_entropy_start_leaves_the_noise_model_out(three_models):
  val_paths, val_truth, _ = three_models["val"]
  table = prediction_metrics.build_pair_table(
      [file_averaging.parse_prediction_file(p, NUM_CLASSES) for p in val_paths],
      as_bytes_keys(val_truth), NUM_CLASSES)
  weights = fit_ensemble_weights.cross_entropy_weights(table)
  assert weights.sum() == pytest.approx(1.0) and weights.min() >= 0
  assert weights[2] < 0.05 and weights[0] > weights[1]  # a has the stronger signal


def test_heldout_fold_is_a_fixed_function_of_the_ids():
  ids = np.array([b"v%05d" % i for i in range(4000)])
  fold = fit_ensemble_weights.heldout_fold(ids, 0.25)
  assert 0.22 < fold.mean() < 0.28
  assert (fit_ensemble_weights.heldout_fold(ids[::-1], 0.25) == fold[::-1]).all()


def test_coordinate_search_finds_the_maximum_of_a_concave_function():
  target = np.array([0.6, 0.3, 0.1])
  weights, value = fit_ensemble_weights.coordinate_search(
      lambda w: -np.abs(w - target).sum(), np.full(3, 1 / 3))
  assert np.allclose(weights, target, atol=0.02) and value > -0.04


# ---------------------------------------------------------------------------------------------
# Bad inputs.


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory):
  folder = tmp_path_factory.mktemp("small")
  rng = np.random.default_rng(7)
  ids = ["v%02d" % i for i in range(30)]
  truth = random_truth(rng, ids)
  paths = [write_predictions(folder / ("m%d.csv" % m), ids, model_rows(rng, truth, 2.0, 10))
           for m in range(2)]
  partial = dict(list(truth.items())[1:])
  return {"a": paths[0], "b": paths[1], "labels": write_labels(folder / "labels.csv", truth),
          "partial": write_labels(folder / "partial.csv", partial),
          "wide": write_labels(folder / "wide.csv", dict(truth, v00=[NUM_CLASSES + 2]))}


@pytest.mark.parametrize("flags, fragment", [
    (["--inputs={a}", "--labels_csv={labels}"], "at least two prediction CSVs"),
    (["--inputs={a},{b}", "--labels_csv={partial}"], "m0.csv: video v00 has no labels in"),
    (["--inputs={a},{b}", "--labels_csv={labels}", "--num_classes=20"], "outside [0, 20)"),
    (["--inputs={a},{b}", "--labels_csv={wide}"], "wide.csv: line 2: label 42 is outside"),
    (["--inputs={a},{b}"], "--eval_data_pattern=GLOB (records) or --labels_csv"),
    (["--inputs={a},{b}", "--labels_csv={labels}", "--holdout_fraction=1"], "[0, 1)"),
])
def test_bad_inputs_give_one_line_and_exit_1(small_inputs, tmp_path, capsys, flags, fragment):
  output = tmp_path / "w.json"
  flag_values = absl_flags.FlagValues()
  fit_ensemble_weights.define_flags(flag_values)
  flag_values(["fit_ensemble_weights.py", "--num_classes=%d" % NUM_CLASSES,
               "--output_file=%s" % output] + [f.format(**small_inputs) for f in flags])
  with pytest.raises(SystemExit) as exit_status:
    fit_ensemble_weights.main(["fit_ensemble_weights.py"], flag_values)
  assert exit_status.value.code == 1
  captured = capsys.readouterr()
  assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
  assert fragment in captured.err, captured.err
  assert captured.out == "" and not output.exists()


# ---------------------------------------------------------------------------------------------
# Labels from records, and eval.py --predictions_csv.


@pytest.fixture(scope="module")
def labelled_records(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("records"))
  truth = make_synthetic_data.generate_partition(
      folder, "holdout", num_videos=40, num_shards=2, num_classes=NUM_CLASSES, seed=1,
      video_level=True, id_key="video_id", min_frames=2, max_frames_gen=4)
  return folder, truth


def test_labels_are_read_from_frame_and_video_level_records(labelled_records):
  import readers  # pylint: disable=g-import-not-at-top  (TensorFlow)
  folder, truth = labelled_records
  expected = {v.encode(): labels for v, labels in truth.items()}
  for pattern in ("holdout*.tfrecord", "video_level/holdout*.tfrecord"):
    labels = readers.read_video_labels(os.path.join(folder, pattern), NUM_CLASSES)
    assert {v: l.tolist() for v, l in labels.items()} == expected
  with pytest.raises(ValueError, match=r"holdout0000.tfrecord: video \S+: label \d+ is outside"):
    readers.read_video_labels(os.path.join(folder, "holdout*.tfrecord"), 3)


def test_eval_scores_a_predictions_csv_like_eval_util(labelled_records, tmp_path):
  folder, truth = labelled_records
  rng = np.random.default_rng(8)
  ids = list(truth)
  rows = model_rows(rng, truth, 2.0, 25)
  path = write_predictions(tmp_path / "p.csv", ids, rows)
  metrics = eval_util.EvaluationMetrics(NUM_CLASSES, 20)
  metrics.accumulate(*dense(ids, rows, truth), np.zeros(len(ids)))
  expected = metrics.get()
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "eval.py"), "--predictions_csv=" + path,
       "--eval_data_pattern=" + os.path.join(folder, "holdout*.tfrecord"),
       "--num_classes=%d" % NUM_CLASSES, "--train_dir=%s" % (tmp_path / "absent")],
      capture_output=True, text=True, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("GAP@20: %.4f | MAP: %.4f | hit@1: %.4f | 40 videos" % (
      expected["gap"], expected["map"], expected["avg_hit_at_one"])), result.stdout
  assert not (tmp_path / "absent").exists()
  # The same values, unrounded, in-process; and a video without predictions is a miss.
  labels = as_bytes_keys(truth)
  parsed = file_averaging.parse_prediction_file(path, NUM_CLASSES)
  scored = prediction_metrics.score_predictions(parsed, labels, NUM_CLASSES, 20)
  assert (scored["gap"], scored["map"], scored["hit_at_one"]) == (
      expected["gap"], expected["map"], expected["avg_hit_at_one"])
  fewer = write_predictions(tmp_path / "fewer.csv", ids[5:], rows[5:])
  scored = prediction_metrics.score_predictions(
      file_averaging.parse_prediction_file(fewer, NUM_CLASSES), labels, NUM_CLASSES, 20)
  predictions, actuals = dense(ids[5:], rows[5:], truth)
  partial = eval_util.calculate_gap(predictions, actuals, 20)
  all_positives = sum(len(l) for l in truth.values())
  assert scored["gap"] == pytest.approx(partial * actuals.sum() / all_positives, rel=1e-12)
  hits = sum(rows[i][0][0] in truth[ids[i]] for i in range(5, len(ids)))
  assert scored["hit_at_one"] == hits / len(ids) and scored["num_unpredicted"] == 5


def test_eval_rejects_predictions_of_videos_without_labels(labelled_records, tmp_path):
  import eval as eval_script  # pylint: disable=g-import-not-at-top  (TensorFlow)
  folder, truth = labelled_records
  rows = model_rows(np.random.default_rng(9), truth, 2.0, 20)
  path = write_predictions(tmp_path / "p.csv", list(truth)[:-1] + ["stranger"], rows)
  with pytest.raises(ValueError, match=r"p.csv: video stranger has no labels in .*holdout\*"):
    eval_script.score_predictions_csv(path, os.path.join(folder, "holdout*.tfrecord"),
                                      NUM_CLASSES, 20)
