"""Numeric tests of the shared model blocks against numpy references of the original's equations."""
import numpy as np
import pytest
import tensorflow as tf

from willow import model_blocks as blocks

BN_SCALE = 1 / np.sqrt(1 + 1e-3)  # inference-mode BN with fresh statistics (mean 0, var 1)


def l2n(x, axis=-1):
  return x / np.sqrt(np.maximum(np.sum(x * x, axis=axis, keepdims=True), 1e-12))


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


@pytest.fixture
def frames():
  rng = np.random.RandomState(0)
  return rng.randn(2, 5, 4).astype(np.float32)  # B=2, n=5, F=4


def assignments_np(block, x):
  w = block.assignment.cluster_weights.numpy()
  return softmax(np.einsum("bnf,fk->bnk", x, w) * BN_SCALE)


def test_batch_norm_training_and_moving_update():
  bn = blocks.BatchNorm(3, "bn")
  bn.gamma.assign([1.0, 2.0, 0.5])
  bn.beta.assign([0.0, 1.0, -1.0])
  x = np.array([[1.0, 2.0, 3.0], [3.0, 6.0, -1.0], [2.0, 4.0, 1.0]], np.float32)
  out = bn(tf.constant(x), training=True).numpy()
  mean, var = x.mean(0), x.var(0)  # biased variance, as slim
  np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-3) * [1, 2, .5] + [0, 1, -1],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bn.moving_mean.numpy(), 0.001 * mean, rtol=1e-5)
  np.testing.assert_allclose(bn.moving_variance.numpy(), 0.999 + 0.001 * var, rtol=1e-5)
  # Inference uses the moving statistics, so a single row is normalized the same way in any batch.
  row = bn(tf.constant(x[:1]), training=False).numpy()
  expected = (x[:1] - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-3)
  np.testing.assert_allclose(row, expected * [1, 2, .5] + [0, 1, -1], rtol=1e-5, atol=1e-6)


def test_batch_norm_gradient_matches_numpy():
  # y = gamma (x - mean) / sigma + beta with batch statistics: the input gradient goes
  # through the statistics too, dx = gamma / sigma (dy - mean(dy) - xhat mean(dy xhat)).
  rng = np.random.RandomState(3)
  x, dy = rng.randn(7, 3) * [1.0, 4.0, 0.1] + [0.0, 2.0, -1.0], rng.randn(7, 3)
  gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
  bn = blocks.BatchNorm(3, "bn")
  bn.gamma.assign(gamma)
  bn.beta.assign(beta)
  xt = tf.constant(x, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    loss = tf.reduce_sum(bn(xt, training=True) * dy.astype(np.float32))
  dx, dgamma, dbeta = tape.gradient(loss, [xt, bn.gamma, bn.beta])
  sigma = np.sqrt(x.var(0) + 1e-3)
  xhat = (x - x.mean(0)) / sigma
  np.testing.assert_allclose(dx.numpy(), gamma / sigma * (
      dy - dy.mean(0) - xhat * (dy * xhat).mean(0)), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dgamma.numpy(), (dy * xhat).sum(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dbeta.numpy(), dy.sum(0), rtol=1e-5)


def test_batch_norm_of_one_row_and_in_bfloat16():
  bn = blocks.BatchNorm(2, "bn")
  bn.beta.assign([0.5, -1.0])
  # One row: variance 0, every value normalizes to beta; the moving variance decays toward 0.
  np.testing.assert_allclose(bn(tf.constant([[3.0, -2.0]]), training=True).numpy(),
                             [[0.5, -1.0]])
  np.testing.assert_allclose(bn.moving_variance.numpy(), [0.999, 0.999], rtol=1e-6)
  x = np.random.RandomState(4).randn(50, 2).astype(np.float32) * 3 + 1
  with blocks.recording_batch_statistics() as records:
    out = bn(tf.constant(x, tf.bfloat16), training=True)
  assert out.dtype == tf.bfloat16 and records[0][1].dtype == tf.float32
  np.testing.assert_allclose(records[0][2].numpy(), x.var(0), rtol=1e-2)
  np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(),
                             (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3) + [0.5, -1.0],
                             rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape, axis", [((4, 6), -1), ((2, 5, 3), 1)])
def test_l2n_value_and_gradient(shape, axis):
  # d(x / |x|) = (dy - y <dy, y>) / |x|; a slice with sum(x^2) < 1e-12 is divided by
  # sqrt(1e-12) instead, so its gradient is dy * 1e6 (no projection: the clamp is constant).
  rng = np.random.RandomState(5)
  x, dy = rng.randn(*shape), rng.randn(*shape)
  zero = (0,) * (len(shape) - 1)
  index = zero[:axis % len(shape)] + (slice(None),) + zero[axis % len(shape):]
  x[index] *= 1e-8
  xt = tf.constant(x, tf.float64)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    y = blocks.l2n(xt, axis=axis)
    loss = tf.reduce_sum(y * dy)
  dx = tape.gradient(loss, xt).numpy()
  square_sum = np.sum(x * x, axis=axis, keepdims=True)
  norm = np.sqrt(np.maximum(square_sum, 1e-12))
  expected_y = x / norm
  projection = np.sum(dy * expected_y, axis=axis, keepdims=True) * (square_sum >= 1e-12)
  # (rsqrt is exact to ~1e-9 in float64)
  np.testing.assert_allclose(y.numpy(), expected_y, rtol=1e-8)
  np.testing.assert_allclose(dx, (dy - expected_y * projection) / norm, rtol=1e-8, atol=1e-8)
  np.testing.assert_allclose(dx[index], dy[index] * 1e6, rtol=1e-8)


def test_dense_product_and_gradients():
  rng = np.random.RandomState(6)
  x, w, dy = rng.randn(3, 7), rng.randn(7, 5), rng.randn(3, 5)
  xt, wt = tf.constant(x), tf.Variable(w)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    y = blocks.dense(xt, wt)
    loss = tf.reduce_sum(y * dy)
  dx, dw = tape.gradient(loss, [xt, wt])
  np.testing.assert_allclose(y.numpy(), x @ w, rtol=1e-12)
  np.testing.assert_allclose(dx.numpy(), dy @ w.T, rtol=1e-12)
  np.testing.assert_allclose(dw.numpy(), x.T @ dy, rtol=1e-12)


def test_recording_batch_statistics_leaves_moving_averages():
  bn = blocks.BatchNorm(2, "bn")
  x = tf.constant([[1.0, 2.0], [3.0, 5.0]])
  with blocks.recording_batch_statistics() as records:
    bn(x, training=True)
  assert len(records) == 1 and records[0][0] is bn
  np.testing.assert_allclose(records[0][1].numpy(), [2.0, 3.5])
  np.testing.assert_allclose(records[0][2].numpy(), [1.0, 2.25])
  np.testing.assert_allclose(bn.moving_mean.numpy(), [0.0, 0.0])


def test_netvlad_matches_numpy(frames):
  block = blocks.NetVLAD(4, 3, add_batch_norm=True, variant="vlad")
  out = block(tf.constant(frames), training=False).numpy()
  a = assignments_np(block, frames)
  c = block.centres.numpy()  # [1, F, K]
  vlad = np.einsum("bnk,bnf->bfk", a, frames) - a.sum(1)[:, None, :] * c
  expected = l2n(l2n(vlad, axis=1).reshape(2, -1))  # F-major flattening: index f*K + k
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  assert out.shape == (2, 12)


def test_netrvlad_has_no_centres(frames):
  block = blocks.NetVLAD(4, 3, add_batch_norm=True, variant="rvlad")
  out = block(tf.constant(frames), training=False).numpy()
  a = assignments_np(block, frames)
  expected = l2n(l2n(np.einsum("bnk,bnf->bfk", a, frames), axis=1).reshape(2, -1))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  assert not hasattr(block, "centres")


def test_netvlagd_static_gate(frames):
  block = blocks.NetVLAD(4, 3, add_batch_norm=True, variant="vlagd")
  out = block(tf.constant(frames), training=False).numpy()
  a = assignments_np(block, frames)
  gate = sigmoid(block.gate_weights.numpy()[0])  # [K, F]
  vlad = np.einsum("bnk,bnf->bkf", a, frames) * gate
  expected = l2n(l2n(vlad.transpose(0, 2, 1), axis=1).reshape(2, -1))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("couple", [False, True])
def test_netfv_first_and_second_order(frames, couple):
  block = blocks.NetFV(4, 3, add_batch_norm=True, couple_weights=couple, coupling_factor=0.01)
  out = block(tf.constant(frames), training=False).numpy()
  a = assignments_np(block, frames)
  mu = (0.01 * block.assignment.cluster_weights.numpy()[None] if couple
        else block.centres.numpy())
  s = block.covar_weights.numpy() ** 2 + 1e-6
  mass = a.sum(1)[:, None, :]
  # Direct definitions: sum_t A (x - mu) / s and sum_t A ((x - mu)^2 / s^2 - 1).
  diff = frames[:, :, :, None] - mu[:, None]  # [B, n, F, K]
  fv1 = np.einsum("bnk,bnfk->bfk", a, diff) / s
  fv2 = np.einsum("bnk,bnfk->bfk", a, diff ** 2 / s ** 2) - mass
  expected = np.concatenate([l2n(l2n(fv1, axis=1).reshape(2, -1)), l2n(fv2.reshape(2, -1))], 1)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  assert out.shape == (2, 24)


@pytest.mark.parametrize("max_pool", [False, True])
def test_soft_dbof_sum_and_max(frames, max_pool):
  block = blocks.SoftDBoF(4, 3, add_batch_norm=True, max_pool=max_pool)
  out = block(tf.constant(frames), training=False).numpy()
  a = assignments_np(block, frames)
  expected = l2n(a.sum(1))
  if max_pool:
    expected = np.concatenate([expected, l2n(a.max(1))], axis=1)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_gated_dbof(frames):
  block = blocks.GatedDBoF(4, 3, add_batch_norm=True)
  out = block(tf.constant(frames), training=False).numpy()
  a = assignments_np(block, frames)
  gates = sigmoid(l2n(a.max(1)) @ block.dim_red.numpy() @ block.gate_weights.numpy() * BN_SCALE)
  np.testing.assert_allclose(out, l2n(gates * a.sum(1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "glu"])
def test_dbof_applies_its_activation(frames, activation):
  block = blocks.DBoF(4, 3, add_batch_norm=True, activation=activation)
  out = block(tf.constant(frames), training=False).numpy()
  z = np.einsum("bnf,fk->bnk", frames, block.assignment.cluster_weights.numpy()) * BN_SCALE
  z = np.clip(z, 0, 6) if activation == "relu" else z[..., :3] * sigmoid(z[..., 3:])
  np.testing.assert_allclose(out, np.concatenate([l2n(z.mean(1)), l2n(z.max(1))], 1),
                             rtol=1e-5, atol=1e-6)


def test_no_batch_norm_branches_have_their_bias(frames):
  block = blocks.SoftDBoF(4, 3, add_batch_norm=False, max_pool=False)
  out = block(tf.constant(frames), training=False).numpy()
  logits = np.einsum("bnf,fk->bnk", frames, block.assignment.cluster_weights.numpy())
  a = softmax(logits + block.assignment.norm.bias.numpy())
  np.testing.assert_allclose(out, l2n(a.sum(1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("remove_diag", [False, True])
def test_context_gate(remove_diag):
  rng = np.random.RandomState(1)
  x = rng.randn(3, 5).astype(np.float32)
  gate = blocks.ContextGate(5, add_batch_norm=True, remove_diag=remove_diag)
  g = gate.weights.numpy()
  z = x @ g - (np.diag(g) * x if remove_diag else 0)
  np.testing.assert_allclose(gate(tf.constant(x), training=False).numpy(),
                             x * sigmoid(z * BN_SCALE), rtol=1e-5, atol=1e-6)


def test_hidden_layer_forms():
  rng = np.random.RandomState(2)
  x = rng.randn(3, 6).astype(np.float32)
  affine = blocks.HiddenLayer(6, 4, init_stddev=0.5, add_batch_norm=True, relu=False)
  expected = x @ affine.weights.numpy() + affine.norm.bias.numpy()
  np.testing.assert_allclose(affine(tf.constant(x), False).numpy(), expected, rtol=1e-5,
                             atol=1e-6)
  bn_relu = blocks.HiddenLayer(6, 4, init_stddev=0.5, add_batch_norm=True, relu=True)
  expected = np.clip(x @ bn_relu.weights.numpy() * BN_SCALE, 0, 6)
  np.testing.assert_allclose(bn_relu(tf.constant(x), False).numpy(), expected, rtol=1e-5,
                             atol=1e-6)


def moe_np(x, head, v, m):
  gates = softmax((x @ head.gate_weights[0].numpy()).reshape(-1, m + 1))
  experts = sigmoid((x @ head.expert_weights.numpy() + head.expert_biases.numpy())
                    .reshape(-1, m))
  return (gates[:, :m] * experts).sum(1).reshape(-1, v)


def test_moe_class_major_layout():
  rng = np.random.RandomState(3)
  x = rng.randn(2, 6).astype(np.float32)
  head = blocks.MoeHead(6, vocab_size=4, num_mixtures=2, l2_penalty=1e-6)
  head.expert_biases.assign(rng.randn(8).astype(np.float32))
  out = head(tf.constant(x), training=False)["predictions"].numpy()
  np.testing.assert_allclose(out, moe_np(x, head, 4, 2), rtol=1e-5, atol=1e-6)
  # Class-major by hand for class 1 of video 0: gate columns 3..5, expert columns 2..3.
  g = softmax(x[0] @ head.gate_weights[0].numpy()[:, 3:6])
  e = sigmoid(x[0] @ head.expert_weights.numpy()[:, 2:4] + head.expert_biases.numpy()[2:4])
  assert out[0, 1] == pytest.approx(g[0] * e[0] + g[1] * e[1], rel=1e-5)
  l2 = 1e-6 * 0.5 * (np.sum(head.gate_weights[0].numpy() ** 2)
                     + np.sum(head.expert_weights.numpy() ** 2))
  assert float(head.regularization_loss()) == pytest.approx(l2, rel=1e-5)


def test_moe_probability_gating():
  rng = np.random.RandomState(4)
  x = rng.randn(2, 6).astype(np.float32)
  head = blocks.MoeHead(6, vocab_size=4, num_mixtures=2, prob_gating=True)
  p = moe_np(x, head, 4, 2)
  wp = head.prob_gate.weights.numpy()
  assert wp.shape == (4, 4)
  expected = p * sigmoid(p @ wp * BN_SCALE)
  np.testing.assert_allclose(head(tf.constant(x), False)["predictions"].numpy(), expected,
                             rtol=1e-5, atol=1e-6)
  # The probability gate is not l2-regularized, as in the original.
  l2 = 1e-8 * 0.5 * (np.sum(head.gate_weights[0].numpy() ** 2)
                     + np.sum(head.expert_weights.numpy() ** 2))
  assert float(head.regularization_loss()) == pytest.approx(l2, rel=1e-5)


def test_moe_low_rank_gating():
  rng = np.random.RandomState(5)
  x = rng.randn(2, 6).astype(np.float32)
  head = blocks.MoeHead(6, vocab_size=3, num_mixtures=1, low_rank_gating=2)
  g1, g2 = (w.numpy() for w in head.gate_weights)
  gates = softmax((x @ g1 @ g2).reshape(-1, 2))
  experts = sigmoid((x @ head.expert_weights.numpy()).reshape(-1, 1))
  np.testing.assert_allclose(head(tf.constant(x), False)["predictions"].numpy(),
                             (gates[:, :1] * experts).sum(1).reshape(-1, 3), rtol=1e-5)


def lstm_np(layer, x, lengths):
  kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
  b, units = x.shape[0], layer.units
  c, h = np.zeros((b, units)), np.zeros((b, units))
  for t in range(x.shape[1]):
    i, j, f, o = np.split(np.concatenate([x[:, t], h], 1) @ kernel + bias, 4, axis=1)
    new_c = c * sigmoid(f + 1.0) + sigmoid(i) * np.tanh(j)
    new_h = np.tanh(new_c) * sigmoid(o)
    alive = (t < lengths)[:, None]
    c, h = np.where(alive, new_c, c), np.where(alive, new_h, h)
  return c, h


def gru_np(layer, x, lengths):
  b, units = x.shape[0], layer.units
  h = np.zeros((b, units))
  for t in range(x.shape[1]):
    xh = np.concatenate([x[:, t], h], 1)
    r, u = np.split(sigmoid(xh @ layer.gate_kernel.numpy() + layer.gate_bias.numpy()), 2, 1)
    cand = np.tanh(np.concatenate([x[:, t], r * h], 1) @ layer.candidate_kernel.numpy()
                   + layer.candidate_bias.numpy())
    new_h = u * h + (1 - u) * cand
    h = np.where((t < lengths)[:, None], new_h, h)
  return h


def test_lstm_matches_tf1_equations_with_sequence_lengths():
  rng = np.random.RandomState(6)
  x = rng.randn(3, 6, 4).astype(np.float32)
  lengths = np.array([6, 2, 0], np.int32)
  layer = blocks.LSTMLayer(4, 5)
  layer.bias.assign(rng.randn(20).astype(np.float32) * 0.1)
  (c, h), = blocks.run_stacked_rnn([layer], tf.constant(x), tf.constant(lengths))
  c_np, h_np = lstm_np(layer, x, lengths)
  np.testing.assert_allclose(c.numpy(), c_np, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(h.numpy(), h_np, rtol=1e-4, atol=1e-5)
  assert np.all(h.numpy()[2] == 0)  # a zero-length video keeps the zero state


def test_gru_matches_tf1_equations_and_stacks():
  rng = np.random.RandomState(7)
  x = rng.randn(2, 5, 3).astype(np.float32)
  lengths = np.array([5, 3], np.int32)
  layers = [blocks.GRULayer(3, 4), blocks.GRULayer(4, 4)]
  np.testing.assert_allclose(layers[0].gate_bias.numpy(), 1.0)
  h1, h2 = blocks.run_stacked_rnn(layers, tf.constant(x), tf.constant(lengths))
  h1_np = gru_np(layers[0], x, lengths)
  # The second layer reads the first layer's outputs (zero after each sequence's end).
  outputs = np.zeros((2, 5, 4))
  h = np.zeros((2, 4))
  for t in range(5):
    h = gru_np(layers[0], x[:, :t + 1], np.minimum(lengths, t + 1))
    outputs[:, t] = np.where((t < lengths)[:, None], h, 0)
  np.testing.assert_allclose(h1.numpy(), h1_np, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(h2.numpy(), gru_np(layers[1], outputs, lengths), rtol=1e-4,
                             atol=1e-5)


def test_affine_frames_products_and_their_gradients():
  # y = x scale + offset; the products and the gradients of scale, offset, W and A must be
  # those of the explicit y (numpy forward, TF's own gradient of the explicit form).
  rng = np.random.RandomState(7)
  x, a = rng.randn(2, 5, 3), rng.rand(2, 5, 4)
  w, scale, offset = rng.randn(3, 4), rng.rand(3) + 0.5, rng.randn(3)
  y = x * scale + offset

  def products(project, sums, variables):
    with tf.GradientTape() as tape:
      logits = project()
      first, second = sums()
      loss = (tf.reduce_sum(tf.sin(logits)) + tf.reduce_sum(tf.cos(first))
              + tf.reduce_sum(tf.sin(second)))
    return [logits, first, second], tape.gradient(loss, variables)

  variables = [tf.Variable(v) for v in (scale, offset, w, a)]
  s, o, wv, av = variables
  frames = lambda: blocks.AffineFrames(tf.constant(x), s, o)
  ours, our_gradients = products(
      lambda: frames().project(wv),
      lambda: frames().weighted_sums(tf.convert_to_tensor(av), second_order=True), variables)
  explicit = lambda: tf.constant(x) * s + o
  theirs, their_gradients = products(
      lambda: tf.matmul(tf.reshape(explicit(), [10, 3]), wv),
      lambda: (tf.matmul(explicit(), av, transpose_a=True),
               tf.matmul(tf.square(explicit()), av, transpose_a=True)), variables)
  np.testing.assert_allclose(ours[0].numpy(), y.reshape(10, 3) @ w, rtol=1e-10)
  np.testing.assert_allclose(ours[1].numpy(), np.einsum("btf,btk->bfk", y, a), rtol=1e-10)
  np.testing.assert_allclose(ours[2].numpy(), np.einsum("btf,btk->bfk", y * y, a), rtol=1e-10)
  for mine, reference in zip(our_gradients, their_gradients):
    np.testing.assert_allclose(mine.numpy(), reference.numpy(), rtol=1e-9)
  # Per feature block, with that block's scale and offset.
  parts = blocks.AffineFrames(tf.constant(x), s, o).split([2, 1])
  np.testing.assert_allclose(parts[1].project(wv[2:]).numpy(), y[..., 2:].reshape(10, 1) @ w[2:],
                             rtol=1e-10)
