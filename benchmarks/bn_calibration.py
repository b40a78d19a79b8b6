"""What precise batch-norm statistics change: held-out GAP of the same trained weights with
the raw moving averages (momentum 0.999) and with re-estimated population statistics.

  python benchmarks/bn_calibration.py [--steps 400] [--workdir /tmp/bn_calibration]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top

import make_synthetic_data  # pylint: disable=g-import-not-at-top
from willow import evaluation  # pylint: disable=g-import-not-at-top
from willow import models  # pylint: disable=g-import-not-at-top
from willow import training  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batches", type=int, default=100, help="calibration batches")
  parser.add_argument("--workdir", default="/tmp/bn_calibration")
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  data = os.path.join(args.workdir, "features")
  for partition, count in [("train", 2000), ("validate", 500)]:
    make_synthetic_data.generate_partition(data, partition, num_videos=count, num_shards=2,
                                           num_classes=100, seed=0)
  config = models.ModelConfig(
      model="NetVLADModelLF", feature_names=("rgb", "audio"), feature_sizes=(1024, 128),
      frame_features=True, num_classes=100, netvlad_cluster_size=16, netvlad_hidden_size=64,
      iterations=30, netvlad_relu=False, gating=True, moe_prob_gating=True, moe_l2=1e-6)
  options = training.TrainOptions(
      train_dir=os.path.join(args.workdir, "train"), data_pattern=data + "/train*.tfrecord",
      batch_size=32, max_steps=args.steps, base_learning_rate=0.002, learning_rate_decay=0.8,
      bn_calibration_batches=0, export_model_steps=0, log_steps=100, seed=0)
  trainer = training.Trainer(config, options, tf.distribute.get_strategy())
  trainer.run()
  model = trainer.model
  model.compute_dtype = tf.float64
  pattern = data + "/validate*.tfrecord"
  raw = evaluation.evaluate(model, config, pattern, 128, 2, top_k=20)
  used = training.calibrate_batch_norm(model, trainer.calibration_batches(), args.batches)
  precise = evaluation.evaluate(model, config, pattern, 128, 2, top_k=20)
  print("gated NetVLAD (16 clusters, hidden 64), %d steps of batch 32, 100 classes" % args.steps)
  print("%-44s %8s %8s" % ("batch-norm statistics at evaluation", "GAP@20", "hit@1"))
  print("%-44s %8.4f %8.4f" % ("moving averages (momentum 0.999)", raw["gap"],
                               raw["avg_hit_at_one"]))
  print("%-44s %8.4f %8.4f" % ("precise BN (%d training batches)" % used, precise["gap"],
                               precise["avg_hit_at_one"]))


if __name__ == "__main__":
  main()
