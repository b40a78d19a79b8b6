"""Learns file_averaging.py weights from each model's predictions on labelled validation videos.

WILLOW blended its models with equal weights; a weak model then pulls the blend below the best
model. This script finds non-negative weights that maximize GAP@top_k of the blend, computed
exactly as file_averaging.py blends (prediction_metrics.BlendScorer), on videos the models
were not trained on:

  python inference.py ... --input_data_pattern="features/holdout*.tfrecord" --output_file=val-a.csv
  (one such line per model)
  python fit_ensemble_weights.py --inputs=val-a.csv,val-b.csv,val-c.csv \\
      --eval_data_pattern="features/holdout*.tfrecord" --num_classes=4716
  python file_averaging.py --inputs=test-a.csv=W1,test-b.csv=W2,test-c.csv=W3

GAP is a step function of the weights, so it is searched directly: coordinate search over the
simplex (move weight onto or off one model at a time, halving the step when no move helps)
from several starts (equal weights, the best single model, and the minimum of a smooth
surrogate, the blend's cross-entropy, found with scipy.optimize). To keep the weights from
fitting the noise of a small validation set, a fixed fold of the videos (chosen by a hash of
the id, so the same videos always) is held out of the search; the learned weights are kept
only if they beat equal weights there; otherwise halfway between them and equal weights is
tried, and then equal weights themselves.

Prints each model's GAP alone, equal weights' and the learned weights' (on all the videos,
the fold they were fitted on and the held-out fold), and last a line `weights=w1,w2,...` in
--inputs order; --output_file writes the same as JSON.
"""
import hashlib
import json
import sys
from typing import Callable, Dict, List, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np
import scipy.optimize
import scipy.sparse

import file_averaging
from willow import fileio
from willow import prediction_metrics
from willow.fileio import InputError

DEFAULT_HOLDOUT_FRACTION = 0.25
# Coordinate-search step sizes (weight moved onto or off one model, of a total of 1).
SEARCH_STEPS = (0.2, 0.1, 0.05, 0.025, 0.0125)
# Smaller GAP gains are noise, not worth more steps.
MIN_GAIN = 1e-5
# Above twice this many videos, the search starts on a sample of this many (see learn_weights).
SAMPLE_VIDEOS = 4000
# Printed weights: enough digits for the search's finest step, few enough to paste.
WEIGHT_DECIMALS = 4


# ---------------------------------------------------------------------------------------------
# The held-out fold.


def id_hashes(video_ids: np.ndarray, purpose: bytes) -> np.ndarray:
  """A fixed 64-bit hash of each id; different purposes give independent hashes."""
  return np.fromiter((int.from_bytes(hashlib.blake2b(bytes(v), digest_size=8,
                                                     person=purpose).digest(), "little")
                      for v in video_ids), np.uint64, len(video_ids))


def id_fraction(video_ids: np.ndarray, fraction: float, purpose: bytes) -> np.ndarray:
  """Boolean mask of about `fraction` of the videos, a fixed function of each id."""
  return id_hashes(video_ids, purpose) < np.uint64(min(fraction, 1.0) * float(2**64 - 1))


def heldout_fold(video_ids: np.ndarray, fraction: float) -> np.ndarray:
  """The held-out videos: the same ones on every run, whatever the order of the files."""
  return id_fraction(video_ids, fraction, b"heldout")


# ---------------------------------------------------------------------------------------------
# The search.


def cross_entropy_weights(table: prediction_metrics.PairTable) -> np.ndarray:
  """Weights on the simplex minimizing the blend's mean cross-entropy over the predicted pairs.

  A smooth, convex stand-in for GAP (a pair's blended score is linear in the weights): its
  minimum is one start of the GAP search, which then checks it against the real thing.
  """
  num_inputs = len(table.input_pairs)
  rows = np.concatenate(table.input_pairs)
  columns = np.repeat(np.arange(num_inputs), [len(p) for p in table.input_pairs])
  scores = np.clip(np.concatenate(table.input_scores), 0.0, 1.0)
  design = scipy.sparse.csr_matrix((scores, (rows, columns)),
                                   shape=(len(table.pair_videos), num_inputs))
  positive = table.pair_positive
  epsilon = 1e-7

  def loss_and_gradient(weights):
    blended = np.clip(design @ weights, epsilon, 1 - epsilon)
    loss = -np.mean(np.where(positive, np.log(blended), np.log1p(-blended)))
    slope = np.where(positive, -1.0 / blended, 1.0 / (1.0 - blended)) / len(blended)
    return loss, design.T @ slope

  start = np.full(num_inputs, 1.0 / num_inputs)
  result = scipy.optimize.minimize(
      loss_and_gradient, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * num_inputs,
      constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0,
                    "jac": lambda w: np.ones_like(w)}])
  weights = np.clip(result.x, 0.0, None)
  return weights / weights.sum() if weights.sum() > 0 else start


def coordinate_search(objective: Callable[[np.ndarray], float], start: np.ndarray,
                      steps: Sequence[float] = SEARCH_STEPS,
                      min_gain: float = MIN_GAIN) -> Tuple[np.ndarray, float]:
  """Maximizes objective over the simplex from start; returns (weights, value).

  A move adds or removes `step` of weight on one model (then renormalizes); a move that
  improves by more than min_gain is taken and repeated while it does. When no move does, the
  next (smaller) step is tried.
  """
  weights = start / start.sum()
  best = objective(weights)
  for step in steps:
    improved = True
    while improved:
      improved = False
      for model in range(len(weights)):
        for sign in (1.0, -1.0):
          while True:
            candidate = weights.copy()
            candidate[model] = max(0.0, candidate[model] + sign * step)
            if candidate.sum() <= 0 or np.allclose(candidate / candidate.sum(), weights):
              break
            candidate /= candidate.sum()
            value = objective(candidate)
            if value <= best + min_gain:
              break
            weights, best, improved = candidate, value, True
  return weights, best


def memoized(function: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], float]:
  cache = {}

  def call(weights):
    key = tuple(np.round(weights, 12))
    if key not in cache:
      cache[key] = function(weights)
    return cache[key]
  return call


def learn_weights(table: prediction_metrics.PairTable, top_k: int) -> np.ndarray:
  """The best weights found on table's videos (on the simplex), from several starts.

  On many videos the starts are searched on a fixed sample of SAMPLE_VIDEOS of them (a GAP
  there costs a fraction) down to the last but one step, and the best result is refined on
  all of them with the finest step.
  """
  sample = table
  if table.num_videos > 2 * SAMPLE_VIDEOS:
    sample = table.subset(id_fraction(table.video_ids, SAMPLE_VIDEOS / table.num_videos,
                                      b"sample"))
  objective = memoized(prediction_metrics.BlendScorer(sample, top_k).gap)
  num_inputs = len(table.input_pairs)
  singles = [objective(np.eye(num_inputs)[m]) for m in range(num_inputs)]
  starts = [np.full(num_inputs, 1.0 / num_inputs),
            np.eye(num_inputs)[int(np.argmax(singles))],
            cross_entropy_weights(sample)]
  steps = SEARCH_STEPS if sample is table else SEARCH_STEPS[:-1]
  found = [coordinate_search(objective, start, steps) for start in starts]
  # The first of the best (equal weights' search wins ties): deterministic.
  weights = max(found, key=lambda pair: pair[1])[0]
  if sample is not table:
    weights, _ = coordinate_search(memoized(prediction_metrics.BlendScorer(table, top_k).gap),
                                   weights, SEARCH_STEPS[-1:])
  return weights


def rounded(weights: np.ndarray) -> List[float]:
  """Weights normalized and rounded as printed, so that the printed weights are the scored."""
  return [round(float(w), WEIGHT_DECIMALS) for w in weights / weights.sum()]


def format_weights(weights: Sequence[float]) -> str:
  return ",".join(("%.*f" % (WEIGHT_DECIMALS, w)).rstrip("0").rstrip(".") for w in weights)


# ---------------------------------------------------------------------------------------------
# Fitting with the held-out check.


def fit(table: prediction_metrics.PairTable, top_k: int,
        holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> Dict:
  """Learns weights on the fit fold, checks them on the held-out fold; returns a report.

  The report holds "weights" (the choice), "choice" ("learned", "halfway" or "equal"), the
  fold sizes, and "rows": for each model alone, equal weights, the learned weights and (if
  tried) halfway between those two, its "name", "weights" and "gap" {"all", "fit",
  "heldout"} (GAP on all the videos, the fit fold, the held-out fold).
  """
  num_inputs = len(table.input_pairs)
  heldout = (heldout_fold(table.video_ids, holdout_fraction) if holdout_fraction > 0
             else np.zeros(table.num_videos, bool))
  fitted = ~heldout
  if not fitted.any():
    raise InputError("no video is left to fit the weights on (%d videos, --holdout_fraction=%g)"
                     % (table.num_videos, holdout_fraction))
  learned = rounded(learn_weights(table.subset(fitted), top_k))
  scorer = prediction_metrics.BlendScorer(table, top_k)

  def row(name, weights):
    weights = [float(w) for w in weights]
    gaps = scorer.gaps(weights, [None, fitted, heldout])
    return {"name": name, "weights": weights,
            "gap": {"all": gaps[0], "fit": gaps[1], "heldout": gaps[2] if heldout.any() else None}}

  equal = [1.0] * num_inputs  # file_averaging.py's default weights
  rows = [row(path, np.eye(num_inputs)[m]) for m, path in enumerate(table.paths)]
  rows += [row("equal weights", equal), row("learned weights", learned)]
  report = {"rows": rows, "weights": learned, "choice": "learned",
            "num_videos": int(table.num_videos), "fit_videos": int(fitted.sum()),
            "heldout_videos": int(heldout.sum())}
  if not heldout.any() or rows[-1]["gap"]["heldout"] > rows[-2]["gap"]["heldout"]:
    return report
  halfway = rounded(np.array(learned) + np.full(num_inputs, 1.0 / num_inputs))
  rows.append(row("halfway to equal weights", halfway))
  if rows[-1]["gap"]["heldout"] > rows[-3]["gap"]["heldout"]:
    report.update(weights=halfway, choice="halfway")
  else:
    report.update(weights=equal, choice="equal")
  return report


# ---------------------------------------------------------------------------------------------
# Command line.


def load_labels(data_pattern: str, labels_csv: str, num_classes: int):
  """{video id: labels} from records (a glob) or a `VideoId,Labels` CSV; and the source's name."""
  if bool(data_pattern) == bool(labels_csv):
    raise InputError("give the labels with either --eval_data_pattern=GLOB (records) or "
                     "--labels_csv=FILE (VideoId,Labels)")
  if labels_csv:
    return prediction_metrics.read_labels_csv(labels_csv, num_classes), labels_csv
  import readers  # pylint: disable=g-import-not-at-top  (TensorFlow: only when records are read)
  return readers.read_video_labels(data_pattern, num_classes), data_pattern


def report_lines(report: Dict) -> List[str]:
  names = [row["name"] + (" " + format_weights(row["weights"]) if row["name"].endswith(
      "weights") and row["name"] != "equal weights" else "") for row in report["rows"]]
  width = max(len(name) for name in names)
  lines = ["%d videos (%d to fit the weights on, %d held out), labels from %s; GAP@%d:"
           % (report["num_videos"], report["fit_videos"], report["heldout_videos"],
              report["labels"], report["top_k"]),
           "%-*s %8s %9s %9s" % (width, "", "all", "fit fold", "held out")]
  for name, row in zip(names, report["rows"]):
    gap = row["gap"]
    held = "%9s" % "-" if gap["heldout"] is None else "%9.4f" % gap["heldout"]
    lines.append("%-*s %8.4f %9.4f %s" % (width, name, gap["all"], gap["fit"], held))
  lines.append({
      "learned": "learned weights kept" + (
          " (they beat equal weights on the held-out fold)" if report["heldout_videos"]
          else " (no held-out fold to check them on)"),
      "halfway": "the learned weights do not beat equal weights on the held-out fold, "
                 "halfway between them does: using it",
      "equal": "neither the learned weights nor halfway to them beat equal weights on the "
               "held-out fold: using equal weights"}[report["choice"]])
  lines.append("weights=" + format_weights(report["weights"]))
  return lines


def write_json(path: str, report: Dict) -> None:
  with fileio.atomic_output(path) as out:
    json.dump(report, out, indent=1)
    out.write("\n")


def run(inputs: Sequence[str], data_pattern: str, labels_csv: str, num_classes: int,
        top_k: int, holdout_fraction: float, output_file: str) -> Dict:
  """The whole script: prints the report, writes output_file if given, returns the report."""
  if len(inputs) < 2:
    raise InputError("--inputs needs at least two prediction CSVs to blend, got %d"
                     % len(inputs))
  if top_k <= 0:
    raise InputError("--top_k must be positive, got %d" % top_k)
  if not 0 <= holdout_fraction < 1:
    raise InputError("--holdout_fraction must be in [0, 1), got %g" % holdout_fraction)
  labels, source = load_labels(data_pattern, labels_csv, num_classes)
  parsed = [file_averaging.parse_prediction_file(path, num_classes) for path in inputs]
  table = prediction_metrics.build_pair_table(parsed, labels, num_classes, source)
  report = dict(inputs=list(inputs), labels=source, top_k=top_k,
                **fit(table, top_k, holdout_fraction))
  for line in report_lines(report):
    print(line)
  if output_file:
    write_json(output_file, report)
  return report


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the script's flags (only when run as a script, or into a test's FlagValues)."""
  flags.DEFINE_list("inputs", None, "Comma-separated prediction CSVs (inference.py's), one "
                    "per model, on the same labelled validation videos.",
                    flag_values=flag_values)
  flags.DEFINE_string("eval_data_pattern", "", "Glob of the TFRecords holding those videos' "
                      "labels (frame- or video-level; only ids and labels are read).",
                      flag_values=flag_values)
  flags.DEFINE_string("labels_csv", "", "Instead of records: a ground-truth CSV "
                      "'VideoId,Labels' (labels space-separated).", flag_values=flag_values)
  flags.DEFINE_integer("num_classes", file_averaging.DEFAULT_NUM_CLASSES,
                       "Vocabulary size: labels must be in [0, num_classes).",
                       flag_values=flag_values)
  flags.DEFINE_integer("top_k", file_averaging.DEFAULT_TOP_K,
                       "GAP@top_k is maximized (file_averaging.py's --top_k).",
                       flag_values=flag_values)
  flags.DEFINE_float("holdout_fraction", DEFAULT_HOLDOUT_FRACTION,
                     "Fraction of the videos held out of the search to check the learned "
                     "weights (0: no check).", flag_values=flag_values)
  flags.DEFINE_string("output_file", "", "Also write the report (weights, GAPs) as JSON here.",
                      flag_values=flag_values)


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  if len(argv) > 1:
    sys.stderr.write("error: unexpected arguments %s\n" % " ".join(argv[1:]))
    sys.exit(1)
  try:
    run(flag_values.inputs or [], flag_values.eval_data_pattern, flag_values.labels_csv,
        flag_values.num_classes, flag_values.top_k, flag_values.holdout_fraction,
        flag_values.output_file)
  except InputError as e:
    sys.stderr.write("error: %s\n" % e)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=file_averaging.parse_flags)
