"""The speed options (--jit_compile, --mixed_precision) and the FLOP formulas of benchmarks/.

Functional checks only (the same results within tolerance); timings are in BENCHMARKS.md,
never asserted.
"""
import os
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

import utils
from willow import models
from willow import readme_configs
from willow import training

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import flops  # noqa: E402  (benchmarks/ is not a package)

SMALL = models.ModelConfig(model="NetVLADModelLF", feature_names=("rgb", "audio"),
                           feature_sizes=(1024, 128), frame_features=True, num_classes=20,
                           iterations=8, sample_random_frames=False, netvlad_cluster_size=4,
                           netvlad_hidden_size=16,
                           netvlad_relu=False, gating=True, moe_prob_gating=True)


def make_trainer(tmp_path, name, like=None, **options):
  """A trainer of SMALL; with `like`, starting from that trainer's weights (copied rather
  than seeded: a global seed would change the random state of later test files)."""
  trainer = training.Trainer(SMALL, training.TrainOptions(
      train_dir=str(tmp_path / name), data_pattern="", batch_size=6, **options),
      tf.distribute.get_strategy())
  if like is not None:
    for mine, theirs in zip(trainer.model.variables, like.model.variables):
      mine.assign(theirs)
  return trainer


def batch(seed=0, size=6, frames=8):
  rng = np.random.default_rng(seed)
  labels = np.zeros([size, SMALL.num_classes], np.float32)
  labels[np.arange(size), rng.integers(0, SMALL.num_classes, size)] = 1
  return dict(video_matrix=tf.constant(rng.uniform(-2, 2, [size, frames, 1152]), tf.float32),
              num_frames=tf.fill([size], frames), labels=tf.constant(labels))


def run_steps(trainer, steps=3):
  """Losses of a few steps; every video has exactly `iterations` frames, so the random-clip
  sampler (sample_random_frames=False) returns all of them in order: no randomness left."""
  return [float(trainer.train_step(batch(i))["total_loss"]) for i in range(steps)]


def test_jit_compile_trains_like_the_plain_step(tmp_path):
  # Plain SGD: Adam's first steps move every weight by about the learning rate whatever the
  # gradient's size, so float-level differences of tiny gradients would flip whole updates.
  sgd = dict(optimizer="GradientDescentOptimizer", base_learning_rate=0.1)
  plain = make_trainer(tmp_path, "plain", jit_compile="false", **sgd)
  xla = make_trainer(tmp_path, "xla", like=plain, jit_compile="true", **sgd)
  assert xla.train_step._loss_and_gradients is not plain.train_step._loss_and_gradients
  np.testing.assert_allclose(run_steps(xla), run_steps(plain), rtol=2e-4)
  for a, b in zip(xla.model.trainable_variables, plain.model.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-5)


def test_jit_compile_auto_needs_one_replica_and_no_seed(tmp_path):
  auto = make_trainer(tmp_path, "auto")
  seeded = make_trainer(tmp_path, "seeded", seed=1)
  # Only the XLA forward and backward pass is a new per-instance function; the plain one is
  # the class's method.
  assert "_loss_and_gradients" in vars(auto.train_step)
  assert "_loss_and_gradients" not in vars(seeded.train_step)
  with pytest.raises(utils.InputError, match="jit_compile"):
    make_trainer(tmp_path, "bad", jit_compile="sometimes")


def test_jit_compile_auto_leaves_out_what_onednn_runs_faster():
  from willow.train_step import TrainStep

  def pays(hidden_inputs, cpu, dtype=tf.float32, replicas=1, seed=None):
    step = types.SimpleNamespace(
        replicas=replicas, options=types.SimpleNamespace(seed=seed),
        model=types.SimpleNamespace(compute_dtype=dtype, hidden=types.SimpleNamespace(
            weights=np.zeros((hidden_inputs, 1)))))
    return TrainStep.xla_pays(step, cpu_flags=frozenset(cpu.split()))

  long, short = utils.LONG_CONTRACTION, utils.LONG_CONTRACTION - 1
  assert pays(long, "avx2 fma") and pays(short, "avx2 avx512f")
  assert not pays(long, "avx2 avx512f avx512_bf16")
  assert not pays(short, "avx2", dtype=tf.bfloat16)
  assert not pays(short, "avx2", replicas=2) and not pays(short, "avx2", seed=3)


def test_cpu_flags_read_from_cpuinfo(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\nbugs\t: x\n")
  assert utils.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512f"}
  assert utils.cpu_flags(str(tmp_path / "absent")) == frozenset()


def test_bf16_trains_close_to_float32(tmp_path):
  fp32 = make_trainer(tmp_path, "fp32", jit_compile="false")
  bf16 = make_trainer(tmp_path, "bf16", like=fp32, jit_compile="false", mixed_precision="bf16")
  # The layers up to the classifier head compute in bfloat16, the head in float32 (class
  # probabilities not rounded to 8 bits); the variables stay float32.
  video = batch()
  model_input = tf.cast(video["video_matrix"], bf16.model.compute_dtype)
  head_inputs, classify = [], bf16.model.classify
  bf16.model.classify = lambda h, training: head_inputs.append(h.dtype) or classify(h, training)
  forward = bf16.model.forward(model_input, video["num_frames"], training=False)
  del bf16.model.classify
  assert head_inputs == [tf.bfloat16]
  assert forward["predictions"].dtype == tf.float32
  outputs = bf16.train_step(video)
  assert outputs["predictions"].dtype == tf.float32
  assert all(v.dtype == tf.float32 for v in bf16.model.variables)
  reference = fp32.train_step(video)
  # bfloat16 keeps 8 bits of mantissa: the loss agrees to about 1%, and the predictions
  # differ (by more than float32 rounding would) within that tolerance.
  np.testing.assert_allclose(float(outputs["total_loss"]), float(reference["total_loss"]),
                             rtol=2e-2)
  difference = np.abs(outputs["predictions"].numpy() - reference["predictions"].numpy())
  assert 1e-4 < difference.max() < 2e-2, difference.max()
  with pytest.raises(utils.InputError, match="mixed_precision"):
    make_trainer(tmp_path, "fp16", mixed_precision="fp16")


def test_batch_norm_statistics_stay_float32_under_bf16():
  from willow import model_blocks
  norm = model_blocks.BatchNorm(3, "bn")
  x = tf.constant(np.random.default_rng(0).normal(5.0, 2.0, [64, 3]), tf.bfloat16)
  with model_blocks.recording_batch_statistics() as records:
    y = norm(x, training=True)
  assert y.dtype == tf.bfloat16 and records[0][1].dtype == tf.float32
  np.testing.assert_allclose(records[0][1].numpy(), tf.cast(x, tf.float32).numpy().mean(0),
                             rtol=1e-5)


def test_bf16_training_calibrates_batch_norm_in_float32(tmp_path):
  """The batch-norm statistics saved with a model trained in bfloat16 are those of the
  float32 forward pass that evaluation and inference run (bfloat16 ones differ by ~1e-3)."""
  fp32 = make_trainer(tmp_path, "fp32", jit_compile="false")
  bf16 = make_trainer(tmp_path, "bf16", like=fp32, jit_compile="false", mixed_precision="bf16")
  moving = lambda trainer: [v.numpy() for v in trainer.model.variables if "moving" in v.name]
  for trainer in (fp32, bf16):
    trainer._calibration_batches = tf.data.Dataset.from_tensors(batch()).repeat(2)
    assert trainer.calibrate() == 2
  assert bf16.model.compute_dtype == tf.bfloat16  # training goes on in bfloat16
  assert len(moving(bf16)) >= 4
  for got, want in zip(moving(bf16), moving(fp32)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def _train_config(args):
  """The ModelConfig and batch size train.py makes of these arguments."""
  from absl import flags
  from willow import script_flags
  values = flags.FlagValues()
  script_flags.define_flags("train", values)
  values(script_flags.expand_flag_prefixes(["prog"] + args, list(values)))
  return script_flags.model_config_from_flags(values), values.batch_size


def _weight_elements(model, name_part):
  return sum(v.shape.num_elements() for v in model.trainable_variables
             if name_part in v.name and len(v.shape) >= 2)


@pytest.mark.parametrize("key", [c.key for c in readme_configs.WILLOW_CONFIGS])
def test_flop_formulas_count_every_weight_matrix(key):
  """Each counted product is 2 FLOPs per multiply-add of a weight matrix of the (scaled)
  model: the formulas and the models' real weight shapes agree."""
  args = readme_configs.scaled_args(readme_configs.CONFIGS_BY_KEY[key].train_args,
                                    readme_configs.DEMO_SCALE[key])
  config, _ = _train_config(args)
  model = models.build_model(config)
  parts = flops.forward_flops_per_video(config)
  head = _weight_elements(model, "moe") + _weight_elements(model, "logistic")
  assert parts["head"] == 2 * head
  if "recurrent" in parts:
    steps = parts["recurrent"] / 2 / sum(v.shape.num_elements() for v in model.trainable_variables
                                         if "kernel" in v.name)
    assert steps == (config.iterations if "random_sequence=True" in " ".join(args) else 300)
    return
  assignment = sum(v.shape.num_elements() for v in model.trainable_variables
                   if v.name.endswith("cluster_weights:0"))
  assert parts["assignment"] == 2 * config.iterations * assignment
  assert parts["hidden"] == 2 * _weight_elements(model, "hidden1_weights")
  if config.gating:
    assert parts["context_gate"] == 2 * _weight_elements(model, "gating_weights_2")


@pytest.mark.parametrize("key", ["netvlad", "netfv", "netrvlad"])
def test_kernel_ceiling_lists_every_product_of_the_step(key):
  """The products timed by benchmarks/kernel_ceiling.py add up to the analytic training
  FLOPs of the README configuration at its batch size (3 per forward product)."""
  import kernel_ceiling
  config, batch = _train_config(readme_configs.CONFIGS_BY_KEY[key].train_args)
  products = kernel_ceiling.training_products(config, batch)
  assert len(products) % 3 == 0
  assert sum(p.flops for p in products) == pytest.approx(
      batch * flops.training_flops_per_video(config), rel=1e-12)


@pytest.mark.parametrize("transpose_a", [False, True])
def test_kernel_ceiling_gradient_products_are_the_gradients(transpose_a):
  """Each gradient product of kernel_ceiling.with_gradients, fed the tensors it stands for,
  computes tf.GradientTape's gradient of the forward product (shapes and transposes)."""
  import kernel_ceiling
  forward, grad_a, grad_b = kernel_ceiling.with_gradients("p", 5, 3, 4, batch=2,
                                                          transpose_a=transpose_a)
  rng = np.random.default_rng(0)
  a, b = (tf.constant(rng.normal(size=s), tf.float32) for s in forward.operand_shapes())
  upstream = tf.constant(rng.normal(size=[2, 5, 4]), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch([a, b])
    out = tf.matmul(a, b, transpose_a=transpose_a)
  want_a, want_b = tape.gradient(out, [a, b], output_gradients=upstream)
  # Operands of each gradient product: dA = (B, dC) if A was stored transposed, else (dC, B);
  # dB = (A, dC).
  operands_a = (b, upstream) if transpose_a else (upstream, b)
  for product, operands, want in ((grad_a, operands_a, want_a), (grad_b, (a, upstream), want_b)):
    assert [list(o.shape) for o in operands] == [list(s) for s in product.operand_shapes()]
    got = tf.matmul(*operands, transpose_a=product.transpose_a, transpose_b=product.transpose_b)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_bf16_gap_pairs_each_model_by_seed(tmp_path):
  """benchmarks/bf16_gap.py reads each model's held-out GAP from the demo's report (a row per
  held-out CSV, in any order) and tabulates bf16 - fp32 per model and seed."""
  import bf16_gap
  import demo
  import json
  netvlad, netrvlad = (demo.held_out_csv(readme_configs.CONFIGS_BY_KEY[k])
                       for k in ("netvlad", "netrvlad"))
  reports = {("1", "none"): [0.41, 0.40], ("1", "bf16"): [0.4098, 0.4012],
             ("2", "none"): [0.38, 0.39], ("2", "bf16"): [0.3801, 0.3890]}
  results = {}
  for (seed, precision), (vlad_gap, rvlad_gap) in reports.items():
    directory = tmp_path / (seed + precision)
    directory.mkdir()
    rows = [{"name": netrvlad, "gap": {"all": rvlad_gap}},
            {"name": netvlad, "gap": {"all": vlad_gap}},
            {"name": "equal weights", "gap": {"all": 0.5}}]
    (directory / "ensemble_weights.json").write_text(json.dumps({"rows": rows}))
    results.setdefault(int(seed), {})[precision] = bf16_gap.held_out_gaps(str(directory))
  assert results[1]["bf16"] == [("Gated NetVLAD (256 clusters)", 0.4098),
                                ("Gated NetRVLAD (256 clusters)", 0.4012)]
  lines = bf16_gap.format_table(results)
  assert lines[1].split()[-3:] == ["0.4100", "0.4098", "-0.0002"]
  assert lines[-1] == ("difference over 4 pairs: mean +0.0000, largest |difference| 0.0012")
