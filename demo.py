"""`make demo`: the whole WILLOW pipeline, scaled down, on generated YouTube-8M-format data.

1. Generates learnable train / validate / holdout / test partitions (make_synthetic_data.py).
   The README's training glob `*a*??.tfrecord` matches `validate*` too (WILLOW trained on most
   of the validation set): `holdout*`, which no training glob matches, is the held-out set.
2. Trains the seven configurations of the original README with their own command lines,
   scaled down (readme_configs.DEMO_SCALE; the scaled lines are printed).
3. Writes each model's top-50 predictions of the held-out videos (inference.py --top_k=50).
4. Writes each model's top-50 test predictions under the original README's file names.
5. Learns ensemble weights on the held-out predictions (fit_ensemble_weights.py, which also
   scores each model there, as eval.py --predictions_csv would), blends the test predictions
   with equal weights into WILLOW_submission.csv and with the learned weights into
   WILLOW_submission_learned.csv (file_averaging.py), and scores each model and both blends
   against the test partition's generated labels.

  python demo.py [--output_dir=demo_output] [--quick] [--models=netvlad,lstm]
      [--train_flags="--mixed_precision=bf16"]
"""
import argparse
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import file_averaging
import make_synthetic_data
from willow import prediction_metrics
from willow import readme_configs

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_CLASSES = 100  # at least the README's --top_k=50
HELD_OUT = "holdout"  # a partition name without an "a": the training glob *a*??.tfrecord
EQUAL_SUBMISSION = "WILLOW_submission.csv"
LEARNED_SUBMISSION = "WILLOW_submission_learned.csv"


def run(args, log_path, cwd):
  """Runs `python <args>` with its output in log_path; exits with the log tail on failure."""
  command = [sys.executable, os.path.join(HERE, args[0])] + args[1:]
  print("  $ python " + " ".join(shlex.quote(a) for a in args), flush=True)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=HERE)
  with open(log_path, "w") as log:
    result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
  with open(log_path) as log:
    text = log.read()
  if result.returncode != 0:
    print(text[-3000:])
    sys.exit("demo: a step failed (log: %s)" % log_path)
  return text


def training_glob() -> str:
  """The file-name part of the README's --train_data_pattern (the same for all seven)."""
  willow = readme_configs.WILLOW_CONFIGS[0]
  return os.path.basename(readme_configs.flag_value(willow.train_args, "train_data_pattern"))


def generate_data(data_dir, videos):
  print("[1/5] generating YouTube-8M-format data in %s" % data_dir, flush=True)
  glob = training_glob()
  truth = {}
  evaluation_videos = max(videos // 4, 64)
  for partition, count, shards, labels in ([
      ("train", videos, 4, True), ("validate", evaluation_videos, 2, True),
      (HELD_OUT, evaluation_videos, 2, True), ("test", evaluation_videos, 2, False)]):
    truth[partition] = make_synthetic_data.generate_partition(
        data_dir, partition, num_videos=count, num_shards=shards, num_classes=NUM_CLASSES,
        seed=0, with_labels=labels)  # one seed: shared class prototypes
    trained_on = fnmatch.fnmatch(os.path.basename(
        make_synthetic_data.shard_path(data_dir, partition, 0)), glob)
    use = {"train": "trained on", "validate": "trained on too (as WILLOW did)",
           HELD_OUT: "held out: models are scored and weights learned here",
           "test": "the submission's videos, scored against the generated labels"}[partition]
    print("  %-8s %5d videos in %d shards, %s the training glob %s: %s" % (
        partition, count, shards, "matched by" if trained_on else "not matched by", glob, use),
          flush=True)
    if trained_on != (partition in ("train", "validate")):
      sys.exit("demo: the training glob %s %s %s*" % (
          glob, "matches" if trained_on else "does not match", partition))
  return truth


def scaled_commands(willow, data_dir, quick):
  scale = dict(readme_configs.DEMO_COMMON, num_classes=str(NUM_CLASSES))
  scale.update(readme_configs.DEMO_SCALE[willow.key])
  if quick:
    # A few steps only: then compiling the step with XLA costs more than it saves.
    scale.update(max_step="10", bn_calibration_batches="1", jit_compile="false")
  train = readme_configs.scaled_args(readme_configs.command_args(willow.train_command,
                                                                 data_dir), scale)
  # Inference keeps its README batch size; its model flags are scaled like training's (the
  # saved configuration decides anyway, and a differing flag only earns a warning).
  model_scale = {k: v for k, v in readme_configs.DEMO_SCALE[willow.key].items()
                 if k != "batch_size" and k in willow.inference_command}
  inference = readme_configs.scaled_args(
      readme_configs.command_args(willow.inference_command, data_dir),
      dict(model_scale, num_classes=str(NUM_CLASSES)))
  # Configuration 3's README inference line names a train_dir its training never wrote.
  inference = readme_configs.with_flag(inference, "train_dir", willow.train_dir)
  return ["train.py"] + train, ["inference.py"] + inference


def parameter_count(log_text):
  match = re.search(r"model \w+: ([0-9,]+) trainable parameters", log_text)
  return int(match.group(1).replace(",", "")) if match else 0


def test_gap(csv_path, truth_csv):
  """GAP@20 of a predictions CSV against the test partition's ground-truth CSV."""
  labels = prediction_metrics.read_labels_csv(truth_csv, NUM_CLASSES)
  parsed = file_averaging.parse_prediction_file(csv_path, NUM_CLASSES)
  return prediction_metrics.score_predictions(parsed, labels, NUM_CLASSES, 20)["gap"]


def held_out_args(inference, willow, data_dir):
  """The model's inference line pointed at the held-out partition."""
  args = readme_configs.with_flag(inference, "input_data_pattern",
                                  "%s/%s*.tfrecord" % (data_dir, HELD_OUT))
  return readme_configs.with_flag(args, "output_file", held_out_csv(willow))


def held_out_csv(willow):
  """test-<name>.csv -> holdout-<name>.csv"""
  return HELD_OUT + "-" + willow.inference_output.split("-", 1)[1]


def chosen_configs(models: str, parser):
  """The README configurations --models names (all seven if empty), checked before any work:
  the ensemble step needs two of them."""
  known = readme_configs.CONFIGS_BY_KEY  # in the README's order
  keys = [k for k in models.split(",") if k] or list(known)
  unknown = sorted(set(keys) - set(known))
  if unknown:
    parser.error("--models: unknown %s (choose from %s)" % (", ".join(unknown), ",".join(known)))
  chosen = [c for c in readme_configs.WILLOW_CONFIGS if c.key in keys]
  if len(chosen) < 2:
    parser.error("--models: the ensemble step blends at least two models, got %d" % len(chosen))
  return chosen


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_dir", default=os.path.join(HERE, "demo_output"))
  parser.add_argument("--videos", type=int, default=2000, help="training videos")
  parser.add_argument("--quick", action="store_true", help="a few steps per model (tests)")
  parser.add_argument("--models", default="", help="comma-separated subset of config keys")
  parser.add_argument("--train_flags", default="",
                      help="extra flags for every train.py line (they come last, so they win), "
                           "e.g. --train_flags=--mixed_precision=bf16")
  args = parser.parse_args()
  chosen = chosen_configs(args.models, parser)
  start = time.time()
  out = os.path.abspath(args.output_dir)
  data_dir, logs = os.path.join(out, "features"), os.path.join(out, "logs")
  os.makedirs(logs, exist_ok=True)
  truth = generate_data(data_dir, args.videos)
  rows = []
  for number, willow in enumerate(chosen, 1):
    print("[2-4/5] %d/%d %s" % (number, len(chosen), willow.title), flush=True)
    train, inference = scaled_commands(willow, data_dir, args.quick)
    train = readme_configs.with_flag(train, "start_new_model", "True") + shlex.split(
        args.train_flags)
    started = time.time()
    log = run(train, os.path.join(logs, willow.key + "-train.log"), out)
    print("  trained in %.0f s" % (time.time() - started), flush=True)
    held_out = held_out_args(inference, willow, data_dir)
    run(held_out, os.path.join(logs, willow.key + "-inference-%s.log" % HELD_OUT), out)
    run(inference, os.path.join(logs, willow.key + "-inference.log"), out)
    rows.append((willow.title, parameter_count(log),
                 test_gap(os.path.join(out, willow.inference_output),
                          make_synthetic_data.ground_truth_path(data_dir, "test"))))
  print("[5/5] learning ensemble weights on the held-out predictions, blending the test "
        "predictions", flush=True)
  held_out_inputs = ",".join(held_out_csv(c) for c in chosen)
  fit_log = run(["fit_ensemble_weights.py", "--inputs=" + held_out_inputs,
                 "--eval_data_pattern=%s/%s*.tfrecord" % (data_dir, HELD_OUT),
                 "--num_classes=%d" % NUM_CLASSES, "--output_file=ensemble_weights.json"],
                os.path.join(logs, "fit_ensemble_weights.log"), out)
  report = fit_log[re.search(r"^\d+ videos \(", fit_log, re.M).start():]  # after TF's banner
  print("\n".join("    " + line for line in report.splitlines()), flush=True)
  weights = re.search(r"^weights=(\S+)$", fit_log, re.M).group(1).split(",")
  with open(os.path.join(out, "ensemble_weights.json")) as f:
    held_out_gaps = [row["gap"]["all"] for row in json.load(f)["rows"][:len(chosen)]]
  blends = []
  for name, submission, inputs in (
      ("equal weights", EQUAL_SUBMISSION, [c.inference_output for c in chosen]),
      ("learned weights", LEARNED_SUBMISSION,
       ["%s=%s" % (c.inference_output, w) for c, w in zip(chosen, weights)])):
    run(["file_averaging.py", "--inputs=" + ",".join(inputs), "--output_file=" + submission,
         "--num_classes=%d" % NUM_CLASSES],
        os.path.join(logs, "file_averaging-%s.log" % name.split()[0]), out)
    blends.append((name, submission, test_gap(
        os.path.join(out, submission), make_synthetic_data.ground_truth_path(data_dir, "test"))))
  print("\nGAP@20 on videos no model was trained on (%d %s videos; %d test videos, against the "
        "generated labels):" % (len(truth[HELD_OUT]), HELD_OUT, len(truth["test"])))
  print("%-34s %12s %12s %10s" % ("model", "parameters", HELD_OUT + " GAP", "test GAP"))
  for (title, params, test), gap in zip(rows, held_out_gaps):
    print("%-34s %12s %12.4f %10.4f" % (title, "{:,}".format(params), gap, test))
  for name, submission, gap in blends:
    print("%-34s %12s %12s %10.4f" % ("ensemble, %s" % name, "", "", gap)
          + "   (%s)" % submission)
  best = max(row[2] for row in rows)
  print("the learned-weight ensemble %s the best single model on the test videos (%.4f vs %.4f)"
        % ("beats" if blends[1][2] > best else "does not beat", blends[1][2], best))
  print("\ndemo finished in %.1f min; outputs in %s" % ((time.time() - start) / 60, out))


if __name__ == "__main__":
  main()
