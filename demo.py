"""`make demo`: the whole WILLOW pipeline, scaled down, on generated YouTube-8M-format data.

1. Generates learnable train / validate / test partitions (make_synthetic_data.py).
2. Trains the seven configurations of the original README with their own command lines,
   scaled down (readme_configs.DEMO_SCALE; the scaled lines are printed).
3. Evaluates each on the validation partition (eval.py --run_once).
4. Writes each model's top-50 test predictions under the original README's file names
   (inference.py --top_k=50).
5. Blends them into WILLOW_submission.csv (file_averaging.py) and scores the blend against the
   generated ground truth.

  python demo.py [--output_dir=demo_output] [--quick] [--models=netvlad,lstm]
      [--train_flags="--mixed_precision=bf16"]
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top

import eval_util
import make_synthetic_data
from willow import readme_configs

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_CLASSES = 100  # at least the README's --top_k=50


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


def generate_data(data_dir, videos, quick):
  print("[1/5] generating YouTube-8M-format data in %s" % data_dir, flush=True)
  truth = {}
  for partition, count, shards, labels in ([
      ("train", videos, 4, True), ("validate", max(videos // 4, 64), 2, True),
      ("test", max(videos // 4, 64), 2, False)]):
    truth[partition] = make_synthetic_data.generate_partition(
        data_dir, partition, num_videos=count, num_shards=shards, num_classes=NUM_CLASSES,
        seed=0, with_labels=labels)  # one seed: shared class prototypes
    print("  %-8s %5d videos in %d shards" % (partition, count, shards), flush=True)
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


def validation_gap(log_text):
  match = re.search(r"GAP: ([0-9.]+)", log_text)
  return float(match.group(1)) if match else float("nan")


def parameter_count(log_text):
  match = re.search(r"model \w+: ([0-9,]+) trainable parameters", log_text)
  return int(match.group(1).replace(",", "")) if match else 0


def submission_gap(submission, truth, num_classes):
  """GAP@20 of a submission CSV against {video_id: [labels]}."""
  ids, predictions = [], []
  with open(submission) as f:
    next(f)
    for line in f:
      video_id, pairs = line.rstrip("\n").split(",", 1)
      tokens = pairs.split()
      row = np.zeros(num_classes)
      for label, score in zip(tokens[::2], tokens[1::2]):
        row[int(label)] = float(score)
      ids.append(video_id)
      predictions.append(row)
  labels = np.zeros((len(ids), num_classes))
  for i, video_id in enumerate(ids):
    labels[i, truth[video_id]] = 1
  return eval_util.calculate_gap(np.array(predictions), labels, top_k=20), len(ids)


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
  start = time.time()
  out = os.path.abspath(args.output_dir)
  data_dir, logs = os.path.join(out, "features"), os.path.join(out, "logs")
  os.makedirs(logs, exist_ok=True)
  truth = generate_data(data_dir, args.videos, args.quick)
  chosen = [c for c in readme_configs.WILLOW_CONFIGS
            if not args.models or c.key in args.models.split(",")]
  rows = []
  for number, willow in enumerate(chosen, 1):
    print("[2-4/5] %d/%d %s" % (number, len(chosen), willow.title), flush=True)
    train, inference = scaled_commands(willow, data_dir, args.quick)
    train = readme_configs.with_flag(train, "start_new_model", "True") + shlex.split(
        args.train_flags)
    started = time.time()
    log = run(train, os.path.join(logs, willow.key + "-train.log"), out)
    print("  trained in %.0f s" % (time.time() - started), flush=True)
    params = parameter_count(log)
    evaluation = ["eval.py", "--train_dir=" + willow.train_dir, "--run_once=True",
                  "--eval_data_pattern=%s/validate*.tfrecord" % data_dir, "--batch_size=256"]
    gap = validation_gap(run(evaluation, os.path.join(logs, willow.key + "-eval.log"), out))
    run(inference, os.path.join(logs, willow.key + "-inference.log"), out)
    rows.append((willow.title, params, gap))
  print("[5/5] averaging the predictions into WILLOW_submission.csv", flush=True)
  inputs = ",".join(c.inference_output for c in chosen)
  run(["file_averaging.py", "--inputs=" + inputs, "--num_classes=%d" % NUM_CLASSES],
      os.path.join(logs, "file_averaging.log"), out)
  ensemble_gap, videos = submission_gap(os.path.join(out, "WILLOW_submission.csv"),
                                        truth["test"], NUM_CLASSES)
  print("\n%-34s %12s %16s" % ("model", "parameters", "validation GAP"))
  for title, params, gap in rows:
    print("%-34s %12s %16.4f" % (title, "{:,}".format(params), gap))
  print("%-34s %12s %16.4f   (test, %d videos, against the generated labels)" % (
      "ensemble (WILLOW_submission.csv)", "", ensemble_gap, videos))
  print("\ndemo finished in %.1f min; outputs in %s" % ((time.time() - start) / 60, out))


if __name__ == "__main__":
  main()
