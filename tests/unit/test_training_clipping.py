"""Fast gradient-norm registry functions against brute-force per-example gradients."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tensorflow_privacy.privacy.fast_gradient_clipping import clip_grads  # noqa: E402

from secure_maas.training import architectures, clipping  # noqa: E402

MAX_RELATIVE_ERROR = 1e-4


def per_example_loss(y, logits, weights=None):
    loss = tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    return loss if weights is None else loss * weights


def brute_force_norms(model, x, y, variables):
    """The norm of each example's gradient, one example at a time."""
    norms = []
    for i in range(x.shape[0]):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(per_example_loss(y[i : i + 1], model(x[i : i + 1])))
        grads = tape.gradient(loss, variables)
        norms.append(np.sqrt(sum(float(tf.reduce_sum(tf.square(g))) for g in grads)))
    return np.array(norms)


def fast_norms(model, x, y, variables, num_microbatches=None):
    norms = clip_grads.compute_gradient_norms(
        model,
        clipping.make_layer_registry(),
        x,
        y,
        per_example_loss_fn=per_example_loss,
        num_microbatches=num_microbatches,
        trainable_vars=variables,
    )
    return norms.numpy()


def check(model, x, y, layer_name):
    """Whole-model norms and the norms of one layer's variables, fast vs brute force."""
    assert clipping.plan_clipping(model, clipping.make_layer_registry()).fast
    for variables in (model.trainable_variables, model.get_layer(layer_name).trainable_variables):
        expected = brute_force_norms(model, x, y, variables)
        got = fast_norms(model, x, y, variables)
        assert np.all(expected > 0)
        rel = np.max(np.abs(got - expected) / expected)
        assert rel < MAX_RELATIVE_ERROR, (layer_name, rel, got, expected)


def data(shape, batch=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(batch, *shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, classes, size=batch))
    return x, y


@pytest.mark.parametrize(
    ("padding", "strides", "dilation", "use_bias"),
    [
        ("same", 1, 1, True),
        ("valid", 1, 1, False),
        ("same", 2, 1, True),
        ("valid", 1, 2, True),
    ],
)
def test_conv2d_norms_match_brute_force(padding, strides, dilation, use_bias) -> None:
    tf.keras.utils.set_random_seed(1)
    inp = tf.keras.Input((7, 6, 2))
    h = tf.keras.layers.Conv2D(
        4,
        (3, 2),
        padding=padding,
        strides=strides,
        dilation_rate=dilation,
        use_bias=use_bias,
        activation="tanh",
        name="conv",
    )(inp)
    h = tf.keras.layers.Conv2D(5, 2, padding="same", name="conv2")(h)
    h = tf.keras.layers.Flatten()(h)
    out = tf.keras.layers.Dense(3, name="out")(h)
    model = tf.keras.Model(inp, out)
    x, y = data((7, 6, 2))
    check(model, x, y, "conv")


def test_conv2d_gram_and_direct_forms_agree() -> None:
    """Both ways of computing the norm are used (chosen by cost); they must agree."""
    rng = np.random.default_rng(3)
    a = tf.constant(rng.normal(size=(4, 5, 3)).astype(np.float32))
    g = tf.constant(rng.normal(size=(4, 5, 2)).astype(np.float32))
    direct = tf.reduce_sum(tf.square(tf.einsum("bpk,bpc->bkc", a, g)), axis=[1, 2])
    gram = tf.reduce_sum(
        tf.matmul(a, a, transpose_b=True) * tf.matmul(g, g, transpose_b=True), axis=[1, 2]
    )
    np.testing.assert_allclose(direct.numpy(), gram.numpy(), rtol=1e-5)
    wide = tf.constant(rng.normal(size=(4, 2, 30)).astype(np.float32))
    np.testing.assert_allclose(
        clipping.sum_of_outer_sqr_norms(wide, g[:, :2]).numpy(),
        tf.reduce_sum(tf.square(tf.einsum("bpk,bpc->bkc", wide, g[:, :2])), axis=[1, 2]).numpy(),
        rtol=1e-5,
    )


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_recurrent_norms_match_brute_force(kind, return_sequences) -> None:
    tf.keras.utils.set_random_seed(2)
    layer_cls = tf.keras.layers.LSTM if kind == "lstm" else tf.keras.layers.GRU
    inp = tf.keras.Input((5, 3))
    h = tf.keras.layers.Dense(4, name="proj")(inp)
    h = layer_cls(6, return_sequences=return_sequences, name="rnn")(h)
    if return_sequences:
        h = tf.keras.layers.GlobalAveragePooling1D()(h)
    out = tf.keras.layers.Dense(3, name="out")(h)
    model = tf.keras.Model(inp, out)
    x, y = data((5, 3))
    check(model, x, y, "rnn")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_registry_output_equals_the_keras_layer(kind) -> None:
    """The unrolled recurrence inside the registry function computes what Keras computes."""
    tf.keras.utils.set_random_seed(4)
    layer = (tf.keras.layers.LSTM if kind == "lstm" else tf.keras.layers.GRU)(5)
    x, _ = data((4, 3))
    expected = layer(x)
    fn = clipping.lstm_layer_computation if kind == "lstm" else clipping.gru_layer_computation
    with tf.GradientTape() as tape:
        _, outputs, _ = fn(layer, (x,), {}, tape)
    np.testing.assert_allclose(outputs.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_microbatched_norms_match_brute_force() -> None:
    tf.keras.utils.set_random_seed(5)
    inp = tf.keras.Input((4, 4, 1))
    h = tf.keras.layers.Conv2D(3, 2, name="conv")(inp)
    h = tf.keras.layers.Flatten()(h)
    out = tf.keras.layers.Dense(3, name="out")(h)
    model = tf.keras.Model(inp, out)
    x, y = data((4, 4, 1), batch=6)
    got = fast_norms(model, x, y, model.trainable_variables, num_microbatches=3)
    expected = []
    for m in range(3):
        with tf.GradientTape() as tape:
            xs, ys = x[2 * m : 2 * m + 2], y[2 * m : 2 * m + 2]
            loss = tf.reduce_mean(per_example_loss(ys, model(xs)))
        grads = tape.gradient(loss, model.trainable_variables)
        expected.append(np.sqrt(sum(float(tf.reduce_sum(tf.square(g))) for g in grads)))
    np.testing.assert_allclose(got, np.array(expected), rtol=MAX_RELATIVE_ERROR)


@pytest.mark.parametrize("arch", ["mlp", "cnn", "lstm", "gru", "transformer"])
def test_every_architecture_takes_the_fast_path_with_exact_norms(arch) -> None:
    tf.keras.utils.set_random_seed(6)
    model = architectures.build_model(arch, (8, 8), 4, logits=True)
    plan = clipping.plan_clipping(model, clipping.make_layer_registry())
    assert plan.path == clipping.FAST, plan.reason
    x, y = data((8, 8), batch=4, classes=4)
    expected = brute_force_norms(model, x, y, model.trainable_variables)
    got = fast_norms(model, x, y, model.trainable_variables)
    assert np.max(np.abs(got - expected) / expected) < MAX_RELATIVE_ERROR


def test_an_unregistered_layer_sends_the_model_to_the_per_example_path() -> None:
    inp = tf.keras.Input((5, 3))
    h = tf.keras.layers.SimpleRNN(4, name="simple")(inp)
    out = tf.keras.layers.Dense(2)(h)
    plan = clipping.plan_clipping(tf.keras.Model(inp, out), clipping.make_layer_registry())
    assert plan.path == clipping.PER_EXAMPLE
    assert "simple (SimpleRNN)" in plan.reason


def test_an_unsupported_configuration_is_named() -> None:
    inp = tf.keras.Input((5, 3))
    h = tf.keras.layers.GRU(4, reset_after=False, name="old_gru")(inp)
    out = tf.keras.layers.Dense(2)(h)
    plan = clipping.plan_clipping(tf.keras.Model(inp, out), clipping.make_layer_registry())
    assert plan.path == clipping.PER_EXAMPLE
    assert "old_gru (GRU)" in plan.reason and "reset_after" in plan.reason
