"""The VAE of paper Sec. 4.4 (Table 5): its densities and bounds against float64 NumPy
references written from the equations, the importance-sampling estimator against a model
whose log p(x) is analytic, and the model itself (training, two optimizers, restoring a
pretraining run's encoder)."""
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import multivariate_normal

from nac_tf.experiments import likelihood
from nac_tf.experiments.vae import (PretrainedEncoderVAE, build_decoder, encoder_of_run,
                                    evaluate_vae, random_encoder)


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _np_discretized_logistic(pixels, mean, log_scale):
    """Reference, per sub-pixel: the logistic CDF difference over the bin of x = 2k/255 - 1
    (edges: the tails), from the definition, in 200-digit arithmetic (mpmath): in float64 the
    difference of two CDFs near 1 cancels to nothing a few scales away from the mean."""
    import mpmath

    mpmath.mp.dps = 200
    levels = np.round(pixels * 255.0)
    mean, log_scale = np.broadcast_arrays(mean, np.broadcast_to(log_scale, mean.shape))
    out = np.empty(levels.shape)
    for i in np.ndindex(levels.shape):
        k, m, s = int(levels[i]), mpmath.mpf(mean[i]), mpmath.exp(log_scale[i])
        x = mpmath.mpf(k) / mpmath.mpf("127.5") - 1
        half = mpmath.mpf(1) / 255
        cdf = lambda t: 1 / (1 + mpmath.exp(-(t - m) / s))  # noqa: E731
        upper = cdf(x + half) if k < 255 else mpmath.mpf(1)
        lower = cdf(x - half) if k > 0 else mpmath.mpf(0)
        out[i] = float(mpmath.log(upper - lower))
    return out


def test_kl_to_standard_normal_matches_numpy():
    rng = np.random.default_rng(0)
    mean, log_var = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    reference = 0.5 * np.sum(np.exp(log_var) + mean ** 2 - 1.0 - log_var, axis=-1)
    got = likelihood.gaussian_kl_to_standard_normal(tf.constant(mean), tf.constant(log_var))
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-12)  # float64 round-off
    # And against the KL by its definition, E_q[log q - log p], with scipy's densities:
    # Monte Carlo over 200 000 draws, standard error ~1e-2 here; tolerance 0.05.
    z = mean[0] + np.exp(0.5 * log_var[0]) * rng.normal(size=(200_000, 5))
    q = multivariate_normal(mean[0], np.diag(np.exp(log_var[0])))
    monte_carlo = np.mean(q.logpdf(z) - multivariate_normal(np.zeros(5)).logpdf(z))
    assert abs(monte_carlo - reference[0]) < 0.05


def test_gaussian_log_densities_match_scipy():
    rng = np.random.default_rng(1)
    z, mean, log_var = (rng.normal(size=(4, 3)) for _ in range(3))
    got = likelihood.diagonal_gaussian_log_density(*(tf.constant(a) for a in (z, mean, log_var)))
    reference = [multivariate_normal(m, np.diag(np.exp(v))).logpdf(x)
                 for x, m, v in zip(z, mean, log_var)]
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-12)
    np.testing.assert_allclose(likelihood.standard_normal_log_density(tf.constant(z)).numpy(),
                               multivariate_normal(np.zeros(3)).logpdf(z), rtol=1e-12)


def test_discretized_logistic_matches_numpy_and_normalises():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(3, 4, 4, 3)) / 255.0
    pixels[0, 0, 0] = [0.0, 1.0, 0.5]  # both edge bins appear
    mean = rng.uniform(-1.2, 1.2, size=pixels.shape)
    log_scale = np.array([-3.0, -1.5, 0.0])
    got = likelihood.discretized_logistic_log_likelihood(
        tf.constant(pixels), tf.constant(mean), tf.constant(log_scale))
    reference = _np_discretized_logistic(pixels, mean, log_scale).sum(axis=(1, 2, 3))
    # float64 against 200 digits: the identity loses a few ulps per sub-pixel.
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-12)
    # The 256 bins of one sub-pixel are a probability distribution (sum 1 to 1e-12).
    levels = np.arange(256, dtype=np.float64).reshape(256, 1, 1, 1) / 255.0
    for m, v in ((0.3, -2.0), (-0.99, -5.0), (1.5, 0.5)):
        log_mass = likelihood.discretized_logistic_log_likelihood(
            tf.constant(levels), tf.fill([256, 1, 1, 1], tf.constant(m, tf.float64)),
            tf.constant(v, tf.float64))
        assert abs(np.exp(log_mass.numpy()).sum() - 1.0) < 1e-12
    # 150 scales from the mean the float64 CDF difference is 1 - 1 = 0 (log 0); the
    # identity keeps the mass, e^-150.
    pixel, mean, log_scale = np.full((1, 1, 1, 1), 200 / 255), np.full((1, 1, 1, 1), -1.0), \
        np.full(1, math.log(0.0125))
    far = likelihood.discretized_logistic_log_likelihood(
        tf.constant(pixel), tf.constant(mean), tf.constant(log_scale))
    assert far.numpy()[0] < -100
    np.testing.assert_allclose(far.numpy(), _np_discretized_logistic(pixel, mean, log_scale)
                               .sum(axis=(1, 2, 3)), rtol=1e-12)


def test_negative_elbo_and_bits_per_dim():
    rng = np.random.default_rng(3)
    log_px, kl = rng.normal(size=6) * 100, rng.uniform(0, 30, size=6)
    np.testing.assert_allclose(
        likelihood.negative_elbo(tf.constant(log_px), tf.constant(kl)).numpy(), kl - log_px,
        rtol=1e-14)
    assert likelihood.bits_per_dim(-3072 * math.log(2.0) * 4.5, 3072) == pytest.approx(4.5)


def _linear_gaussian(seed=4, latent=2, data=4, sigma=0.5):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, sigma^2 I) with orthogonal columns of W, so that
    the exact posterior is diagonal: N(S W^T (x - b) / sigma^2, S), S = (I + W^T W /
    sigma^2)^-1; marginal x ~ N(b, W W^T + sigma^2 I)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(data, latent)))
    w = q * np.array([1.5, 0.7])[:latent]
    b = rng.normal(size=data)
    x = rng.multivariate_normal(b, w @ w.T + sigma ** 2 * np.eye(data), size=5)
    post_var = 1.0 / (1.0 + np.diag(w.T @ w) / sigma ** 2)
    post_mean = (x - b) @ w / sigma ** 2 * post_var
    true = multivariate_normal(b, w @ w.T + sigma ** 2 * np.eye(data)).logpdf(x)
    return dict(rng=rng, w=w, b=b, x=x, sigma=sigma, post_mean=post_mean,
                post_var=post_var, true=true)


def _is_estimate(model, proposal_mean, proposal_var, num_samples):
    """The library's estimate with z_k drawn (NumPy, float64) from N(mean, diag(var))."""
    rng, w, b, x = model["rng"], model["w"], model["b"], model["x"]
    z = proposal_mean + np.sqrt(proposal_var) * rng.normal(
        size=(num_samples,) + proposal_mean.shape)
    log_px = likelihood.diagonal_gaussian_log_density(
        tf.constant(x), tf.constant(z @ w.T + b),
        tf.constant(np.full(x.shape[-1], 2 * math.log(model["sigma"]))))
    log_pz = likelihood.standard_normal_log_density(tf.constant(z))
    log_qz = likelihood.diagonal_gaussian_log_density(
        tf.constant(z), tf.constant(proposal_mean),
        tf.constant(np.log(np.broadcast_to(proposal_var, proposal_mean.shape))))
    return likelihood.importance_sampled_log_likelihood(log_px, log_pz, log_qz).numpy()


def test_importance_sampling_is_exact_with_the_true_posterior():
    model = _linear_gaussian()
    for k in (1, 3, 50):
        got = _is_estimate(model, model["post_mean"], model["post_var"], k)
        np.testing.assert_allclose(got, model["true"], atol=1e-6, rtol=0)


def test_importance_sampling_converges_with_a_poor_proposal():
    """Proposal: the posterior with twice its variance (over-dispersed, so the weights have
    finite variance). With K = 1 the estimate is E_q[log w] = log p(x) - KL(q || post), here
    log p(x) - 0.307 (2 x 0.5 (2 - 1 - ln 2)); with K = 20 000 the bias ~ Var(w)/(2K) ~ 1e-5
    and the standard deviation ~ sqrt(1/3 / K) = 0.004: tolerance 0.02 (5 sd)."""
    model = _linear_gaussian()
    single = np.mean([_is_estimate(model, model["post_mean"], 2 * model["post_var"], 1)
                      for _ in range(2000)], axis=0)
    expected_gap = 2 * 0.5 * (2.0 - 1.0 - math.log(2.0))
    np.testing.assert_allclose(single - model["true"], -expected_gap, atol=0.05)
    many = _is_estimate(model, model["post_mean"], 2 * model["post_var"], 20_000)
    np.testing.assert_allclose(many, model["true"], atol=0.02, rtol=0)


def test_importance_sampling_is_stable_for_huge_log_weights():
    log_w = tf.constant([[-1e4, 5.0], [-1e4 + math.log(3.0), 5.0]], tf.float64)
    got = likelihood.importance_sampled_log_likelihood(log_w, tf.zeros_like(log_w),
                                                       tf.zeros_like(log_w)).numpy()
    np.testing.assert_allclose(got, [-1e4 + math.log(2.0), 5.0], rtol=1e-14)


@pytest.mark.parametrize("size,ups", [(8, 1), (16, 2), (32, 3)])
def test_decoder_shapes(size, ups):
    decoder = build_decoder(6, (size, size, 3), width=8)
    assert decoder(tf.zeros([2, 6])).shape == (2, size, size, 3)
    assert sum(isinstance(layer, keras.layers.Conv2DTranspose)
               for layer in decoder.layers) == ups


def test_decoder_refuses_other_sizes():
    with pytest.raises(ValueError, match="image_size=12"):
        build_decoder(6, (12, 12, 3))


def _digits(size=8, count=256):
    from nac_tf.data.catalog import load_source

    source = load_source("digits", image_size=size)
    return source.train_images[:count].astype(np.float32) / 255.0


def _vae(size=8, latent=4, seed=0):
    keras.utils.set_random_seed(seed)
    encoder = random_encoder("small_cnn", size, (0.5,) * 3, (0.25,) * 3)
    return PretrainedEncoderVAE(encoder, latent, (size, size, 3), decoder_width=8, seed=seed)


def test_elbo_terms_match_numpy_at_the_posterior_mean(monkeypatch):
    vae = _vae()
    images = tf.constant(_digits(count=5))
    monkeypatch.setattr(vae, "sample_posterior", lambda mean, log_var, k=None: mean)
    terms = vae.elbo_terms(images)
    mean, log_var = (t.numpy().astype(np.float64) for t in vae.posterior_parameters(images))
    means = vae.decoder(tf.constant(mean, tf.float32)).numpy().astype(np.float64)
    log_px = _np_discretized_logistic(images.numpy().astype(np.float64), means,
                                      vae.pixel_log_scale.numpy().astype(np.float64))
    kl = 0.5 * np.sum(np.exp(log_var) + mean ** 2 - 1 - log_var, axis=-1)
    # float32 model against a float64 reference: about 1e-6 relative per term, summed over
    # 192 sub-pixels.
    np.testing.assert_allclose(terms["kl"].numpy(), kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(terms["negative_elbo"].numpy(), kl - log_px.sum(axis=(1, 2, 3)),
                               rtol=1e-4)


def test_model_importance_weights_pair_each_draw_with_its_image(monkeypatch):
    """With fixed distinct draws z_kb = m_b + 0.3 k (k = 0..K-1), the model's estimate equals
    the float64 NumPy estimate from the equations; a mix-up of images and draws in the tiled
    decoder batch would not. float32 model: tolerance 1e-4 relative."""
    vae = _vae()
    images = tf.constant(_digits(count=3))
    num_samples = 4
    monkeypatch.setattr(vae, "sample_posterior", lambda mean, log_var, k=None: mean[None] + 0.3
                        * tf.reshape(tf.range(k, dtype=mean.dtype), [-1, 1, 1]))
    got = vae.importance_log_likelihood(images, num_samples, chunk_size=num_samples).numpy()
    mean, log_var = (t.numpy().astype(np.float64) for t in vae.posterior_parameters(images))
    scales = vae.pixel_log_scale.numpy().astype(np.float64)
    pixels = images.numpy().astype(np.float64)
    log_w = np.empty((num_samples, 3))
    for k in range(num_samples):
        z = mean + 0.3 * k
        means = vae.decoder(tf.constant(z, tf.float32)).numpy().astype(np.float64)
        log_px = _np_discretized_logistic(pixels, means, scales).sum(axis=(1, 2, 3))
        log_pz = multivariate_normal(np.zeros(z.shape[1])).logpdf(z)
        log_qz = [multivariate_normal(m, np.diag(np.exp(v))).logpdf(x)
                  for x, m, v in zip(z, mean, log_var)]
        log_w[k] = log_px + log_pz - log_qz
    reference = np.log(np.mean(np.exp(log_w - log_w.max(0)), axis=0)) + log_w.max(0)
    np.testing.assert_allclose(got, reference, rtol=1e-4)


def test_compile_needs_both_optimizers():
    with pytest.raises(ValueError, match="encoder_optimizer"):
        _vae().compile(optimizer=keras.optimizers.Adam())


def test_vae_trains_on_digits_and_the_encoder_has_its_own_learning_rate():
    vae = _vae()
    images = _digits()
    encoder_before = [v.numpy().copy() for v in vae.encoder.trainable_variables]
    decoder_before = [v.numpy().copy() for v in vae.decoder.trainable_variables]
    vae.compile(encoder_optimizer=keras.optimizers.Adam(0.0),
                optimizer=keras.optimizers.Adam(3e-3))
    before = evaluate_vae(vae, images, batch_size=128, importance_samples=2)
    history = vae.fit(images, batch_size=32, epochs=4, shuffle=True, verbose=0)
    after = evaluate_vae(vae, images, batch_size=128, importance_samples=2)
    assert all(np.isfinite(history.history["loss"]))
    assert after["negative_elbo"] < before["negative_elbo"] - 50  # nats/image; starts ~600
    # Learning rate 0 for the encoder: untouched; the decoder moved.
    for a, v in zip(encoder_before, vae.encoder.trainable_variables):
        np.testing.assert_array_equal(a, v.numpy())
    assert any(not np.array_equal(a, v.numpy())
               for a, v in zip(decoder_before, vae.decoder.trainable_variables))
    # Now fine-tune the encoder too: its weights change.
    vae.encoder_optimizer.learning_rate.assign(1e-3)
    vae.fit(images[:64], batch_size=32, epochs=1, verbose=0)
    assert any(not np.array_equal(a, v.numpy())
               for a, v in zip(encoder_before, vae.encoder.trainable_variables))


def test_importance_log_likelihood_bounds_the_elbo():
    """E[log p-hat_K] >= ELBO (Burda et al. 2016, Thm. 1); averaged over 128 images the
    K = 32 estimate beats the mean one-sample ELBO (the gap at random init is ~KL-sized)."""
    vae = _vae()
    vae.compile(encoder_optimizer=keras.optimizers.Adam(1e-3),
                optimizer=keras.optimizers.Adam(3e-3))
    images = _digits(count=128)
    vae.fit(images, batch_size=32, epochs=2, verbose=0)
    result = evaluate_vae(vae, images, batch_size=64, importance_samples=32, chunk_size=10)
    assert np.isfinite(result["log_likelihood"])
    assert result["log_likelihood"] > -result["negative_elbo"]
    assert result["bits_per_dim"] == pytest.approx(
        -result["log_likelihood"] / (8 * 8 * 3 * math.log(2.0)))


def test_encoder_restored_from_a_pretraining_run(tiny_run):
    config = tiny_run.config  # the session's shared run (tests/conftest.py): 8 px digits
    directory = os.path.join(config.model_dir, "checkpoints")
    checkpoint = tf.train.load_checkpoint(directory)
    encoder, statistics = encoder_of_run(config.model_dir)
    assert statistics["image_size"] == 8
    # The restored weights are the checkpoint's: every encoder variable equals a tensor
    # stored in the checkpoint file, read back here without the model (optimizer slots left
    # out), and training moved them away from any fresh initialisation (below).
    stored = [checkpoint.get_tensor(name) for name, _ in tf.train.list_variables(directory)
              if "OPTIMIZER_SLOT" not in name and "VARIABLE_VALUE" in name]
    for variable in encoder.weights:
        value = variable.numpy()
        assert any(t.shape == value.shape and np.array_equal(t, value) for t in stored), \
            variable.path
    baseline, _ = encoder_of_run(config.model_dir, pretrained=False)
    assert [v.shape for v in baseline.weights] == [v.shape for v in encoder.weights]
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(baseline.trainable_weights, encoder.trainable_weights))
    # The VAE takes the restored encoder as it is.
    vae = PretrainedEncoderVAE(encoder, 4, (8, 8, 3), decoder_width=8)
    assert vae.encoder is encoder
    vae.compile(encoder_optimizer=keras.optimizers.Adam(1e-4),
                optimizer=keras.optimizers.Adam(1e-3))
    vae.fit(_digits(count=32), batch_size=16, epochs=1, verbose=0)


def test_resnet_tiny_vae_on_16px_digits_takes_finite_steps():
    keras.utils.set_random_seed(1)
    encoder = random_encoder("resnet_tiny", 16, (0.5,) * 3, (0.25,) * 3)
    vae = PretrainedEncoderVAE(encoder, 4, (16, 16, 3), decoder_width=8)
    vae.compile(encoder_optimizer=keras.optimizers.Adam(1e-4),
                optimizer=keras.optimizers.Adam(1e-3))
    history = vae.fit(_digits(size=16, count=32), batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(vae.importance_log_likelihood(_digits(size=16, count=4), 3, 2)).all()
