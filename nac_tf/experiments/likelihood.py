"""Densities and bounds of a VAE with a diagonal Gaussian posterior (paper Sec. 4.4, Table 5):
the closed-form KL to the standard normal prior, the negative ELBO, the discretized logistic
pixel likelihood and the importance-sampled log-likelihood estimate.

Pure functions of tensors; every one keeps the dtype of its inputs (float64 in the tests).
Log-densities are in nats; a per-image value sums over every latent or sub-pixel dimension.
"""
import math

import tensorflow as tf

# Pixels are integers 0..255, modelled on [-1, 1]: bin k covers k/127.5 - 1 +- 1/255.
PIXEL_LEVELS = 256
_HALF_BIN = 1.0 / (PIXEL_LEVELS - 1)


def _sum_over_non_batch(values, batch_dims):
    axes = list(range(batch_dims, len(values.shape)))
    return tf.reduce_sum(values, axis=axes) if axes else values


def gaussian_kl_to_standard_normal(mean, log_variance):
    """KL(N(mean, diag(exp(log_variance))) || N(0, I)) per row of [..., L] in closed form
    (Kingma & Welling 2014, App. B): 1/2 sum_l (exp(v_l) + m_l^2 - 1 - v_l)."""
    return 0.5 * tf.reduce_sum(tf.exp(log_variance) + tf.square(mean) - 1.0 - log_variance,
                               axis=-1)


def diagonal_gaussian_log_density(z, mean, log_variance):
    """log N(z; mean, diag(exp(log_variance))) summed over the last axis; broadcasts (the
    K samples of the importance-sampling estimate share one mean per image)."""
    log_two_pi = tf.constant(math.log(2.0 * math.pi), z.dtype)
    return -0.5 * tf.reduce_sum(
        log_two_pi + log_variance + tf.square(z - mean) * tf.exp(-log_variance), axis=-1)


def standard_normal_log_density(z):
    """log N(z; 0, I) summed over the last axis: the prior p(z)."""
    log_two_pi = tf.constant(math.log(2.0 * math.pi), z.dtype)
    return -0.5 * tf.reduce_sum(log_two_pi + tf.square(z), axis=-1)


def discretized_logistic_log_likelihood(pixels, mean, log_scale, batch_dims=1):
    """log p(x | z) of 8-bit images under a discretized logistic per sub-pixel (Salimans et
    al. 2017, PixelCNN++ Sec. 2.1, one component): the logistic(mean, exp(log_scale)) mass of
    the pixel's bin on [-1, 1], the two edge bins taking the tails, so the 256 bins sum to 1.

    pixels: [..., H, W, C] in [0, 1] on the grid k / 255 (rounded to it here); mean: same
    shape, on the [-1, 1] scale; log_scale: broadcastable to it (a learned value per
    channel). Returns the sum over the last three axes and any others beyond `batch_dims`.

    The mass of an inner bin, sigmoid(a) - sigmoid(b) with a = (x + 1/255 - mean) / s and
    b = (x - 1/255 - mean) / s, is computed as sigmoid(a) sigmoid(-b) (1 - exp(b - a)):
    an identity whose logarithm has no cancellation in either tail, unlike the difference.
    """
    dtype = mean.dtype
    pixels = tf.cast(pixels, dtype)
    levels = tf.round(pixels * (PIXEL_LEVELS - 1))
    x = levels / ((PIXEL_LEVELS - 1) / 2.0) - 1.0
    inverse_scale = tf.exp(-log_scale)
    centred = x - mean
    upper = (centred + _HALF_BIN) * inverse_scale
    lower = (centred - _HALF_BIN) * inverse_scale
    log_upper_cdf = tf.math.log_sigmoid(upper)           # log F(x + 1/255)
    log_one_minus_lower_cdf = tf.math.log_sigmoid(-lower)  # log (1 - F(x - 1/255))
    # b - a = -2 / (255 s) < 0, so log(1 - exp(b - a)) = log(-expm1(b - a)) is finite.
    log_width = tf.math.log(-tf.math.expm1(lower - upper))
    inner = log_upper_cdf + log_one_minus_lower_cdf + log_width
    log_mass = tf.where(levels <= 0, log_upper_cdf,
                        tf.where(levels >= PIXEL_LEVELS - 1, log_one_minus_lower_cdf, inner))
    return _sum_over_non_batch(log_mass, batch_dims)


def negative_elbo(log_likelihood, kl):
    """-ELBO = -E_q[log p(x|z)] + KL(q(z|x) || p(z)) (Kingma & Welling 2014, eq. 3), from a
    Monte Carlo estimate of the expected log-likelihood and the closed-form KL."""
    return kl - log_likelihood


def importance_sampled_log_likelihood(log_likelihood, log_prior, log_posterior):
    """log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K (Burda et
    al. 2016, eq. 8), with z_k ~ q(z|x): inputs [K, B], result [B].

    A lower bound in expectation that tightens as K grows; exact for any K when q is the
    true posterior (every weight is then p(x)). logsumexp subtracts the largest log-weight,
    so weights far below e^-700 still count.
    """
    log_weights = log_likelihood + log_prior - log_posterior
    num_samples = tf.cast(tf.shape(log_weights)[0], log_weights.dtype)
    return tf.reduce_logsumexp(log_weights, axis=0) - tf.math.log(num_samples)


def bits_per_dim(log_likelihood_nats, num_dims):
    """-log p(x) in bits per sub-pixel, the usual unit for discrete image likelihoods."""
    return -log_likelihood_nats / (num_dims * math.log(2.0))
