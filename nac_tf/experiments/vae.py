"""A VAE whose encoder is a (pretrained) nac_tf encoder (paper Sec. 4.4, Table 5).

    image x in [0, 1] -> encoder (nac_tf, restored from a pretraining run or randomly
    initialised) -> h -> linear layer -> (mean, log-variance) of q(z|x) = N(m, diag(e^v))
    z ~ q(z|x) (reparameterised) -> convolutional decoder -> per-sub-pixel logistic means
    prior p(z) = N(0, I)

Likelihood p(x|z): a discretized logistic per sub-pixel (PixelCNN++, one mixture component)
with a learned log-scale per colour channel. The paper does not say which it used; this one
is chosen because CIFAR-10 pixels are 8-bit integers, and the discretized logistic is a
proper probability over the 256 values, so log p(x) is a true discrete log-likelihood
reportable in nats per image and bits/dim, comparable with the CIFAR-10 literature (a
Gaussian or continuous Bernoulli density on [0, 1] is a density, not a probability, and its
values depend on an arbitrary dequantisation).

Optimisers: the paper fine-tunes the pretrained encoder while the fresh output layer learns
faster. Keras 3 has one learning rate per optimizer, and scaling gradients would not change
Adam's steps (its update is invariant to a constant gradient scale), so the model holds two
optimizers: `encoder_optimizer` for the encoder's variables and the compiled `optimizer` for
the linear output layer, the decoder and the pixel scales.
"""
import math

import keras
import numpy as np
import tensorflow as tf

from nac_tf.experiments import likelihood
from nac_tf.models import build_encoder

_DECODER_START = 4  # the decoder's first feature map is 4 x 4, doubled to the image size
_INITIAL_LOG_SCALE = -2.0  # logistic scale e^-2 ~ 0.14 on [-1, 1]: broad at the start


def decoder_upsamplings(image_size):
    """Number of stride-2 transposed convolutions from 4 x 4 to `image_size` (a power of
    two >= 4: 8 -> 1, 16 -> 2, 32 -> 3)."""
    ups = math.log2(image_size / _DECODER_START) if image_size >= _DECODER_START else -1
    if ups < 0 or ups != int(ups):
        raise ValueError(f"image_size={image_size} must be 4 times a power of two (4, 8, 16, "
                         "32, 64, ...) for the VAE decoder")
    return int(ups)


def build_decoder(latent_dim, image_shape, width=64, name="decoder"):
    """z [B, latent_dim] -> logistic means [B, H, W, C] on the [-1, 1] pixel scale.

    Dense to a 4 x 4 map of 2^n `width` channels, then n stride-2 transposed 4x4
    convolutions (ReLU) halving the channels, then a 3x3 convolution to C means: the usual
    DCGAN-style decoder, parametrised by the image size (32 px: three upsamplings).
    """
    height, image_width, channels = (int(d) for d in image_shape)
    if height != image_width:
        raise ValueError(f"image_shape={tuple(image_shape)} must be square for the decoder")
    ups = decoder_upsamplings(height)
    channels_now = width * 2 ** ups
    z = keras.Input((latent_dim,), name="z")
    x = keras.layers.Dense(_DECODER_START * _DECODER_START * channels_now,
                           activation="relu", name="project")(z)
    x = keras.layers.Reshape((_DECODER_START, _DECODER_START, channels_now))(x)
    for i in range(ups):
        channels_now //= 2
        x = keras.layers.Conv2DTranspose(channels_now, 4, strides=2, padding="same",
                                         activation="relu", name=f"up{i}")(x)
    means = keras.layers.Conv2D(channels, 3, padding="same", name="means")(x)
    return keras.Model(z, means, name=name)


def random_encoder(encoder, image_size, mean, std, stem="cifar"):
    """A randomly initialised nac_tf encoder (Table 5's "random init." row)."""
    return build_encoder(encoder, (image_size, image_size, 3), stem=stem, mean=mean, std=std)


def encoder_of_run(model_dir, pretrained=True):
    """(encoder, input statistics) of a pretraining run directory: its encoder with the
    latest checkpoint's weights, or (`pretrained=False`) the same architecture and input
    normalisation with fresh random weights, the baseline of equal shape."""
    from nac_tf.methods.from_config import resolve_stem
    from nac_tf.run_directory import read_run_config, restore_pretrained_method

    config, statistics = read_run_config(model_dir)
    if pretrained:
        _, method = restore_pretrained_method(model_dir)
        return method.encoder, statistics
    size = int(statistics["image_size"])
    return random_encoder(config.encoder, size, statistics["mean"], statistics["std"],
                          stem=resolve_stem(config, size)), statistics


class PretrainedEncoderVAE(keras.Model):
    """VAE with a nac_tf encoder, a linear posterior layer, a convolutional decoder and a
    discretized logistic likelihood (module docstring). Inputs: images in [0, 1] on the
    k / 255 grid, [B, H, W, C].

    encoder: a keras.Model images -> h [B, encoder_dim] (any `nac_tf.models` encoder);
    `encoder_dim` defaults to its output width. latent_dim: L, the width of z.
    image_shape: (H, W, C) of the images. seed: the draws of z.
    decoder_width: channels of the decoder's last upsampling (doubling towards 4 x 4).
    Compile with `compile(encoder_optimizer=..., optimizer=...)`: the second updates the
    posterior layer, the decoder and the pixel scales.
    """

    def __init__(self, encoder, latent_dim, image_shape, encoder_dim=None, decoder_width=64,
                 seed=0, **kwargs):
        super().__init__(**kwargs)
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim={latent_dim} must be a positive integer")
        self.latent_dim = int(latent_dim)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.encoder = encoder
        encoder_dim = encoder_dim or int(encoder.output_shape[-1])
        self.posterior = keras.layers.Dense(2 * self.latent_dim, name="posterior")
        self.posterior.build((None, encoder_dim))
        self.decoder = build_decoder(self.latent_dim, self.image_shape, decoder_width)
        self.pixel_log_scale = self.add_weight(
            shape=(self.image_shape[-1],), name="pixel_log_scale",
            initializer=keras.initializers.Constant(_INITIAL_LOG_SCALE))
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.encoder_optimizer = None
        self._trackers = {name: keras.metrics.Mean(name=name)
                          for name in ("loss", "kl", "reconstruction")}

    @property
    def head_variables(self):
        """What the compiled optimizer trains: everything but the encoder."""
        encoder_ids = {id(v) for v in self.encoder.trainable_variables}
        return [v for v in self.trainable_variables if id(v) not in encoder_ids]

    def compile(self, encoder_optimizer=None, optimizer=None, **kwargs):
        """`encoder_optimizer` for the encoder, `optimizer` for the rest (both required);
        both are built here on their own variables only."""
        if encoder_optimizer is None or optimizer is None:
            raise ValueError("encoder_optimizer and optimizer are both required: the encoder "
                             "is fine-tuned with its own learning rate")
        super().compile(optimizer=optimizer, **kwargs)
        self.encoder_optimizer = encoder_optimizer
        encoder_optimizer.build(self.encoder.trainable_variables)
        optimizer.build(self.head_variables)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def posterior_parameters(self, images, training=False):
        """(mean, log-variance) of q(z|x), each [B, L]."""
        h = self.encoder(images, training=training)
        mean, log_variance = tf.split(self.posterior(h), 2, axis=-1)
        return mean, log_variance

    def sample_posterior(self, mean, log_variance, num_samples=None):
        """z = m + e^(v/2) eps, eps ~ N(0, I) (reparameterisation): [B, L], or [K, B, L]."""
        shape = tf.shape(mean) if num_samples is None else tf.concat(
            [[num_samples], tf.shape(mean)], 0)
        eps = keras.random.normal(shape, dtype=mean.dtype, seed=self.seed_generator)
        return mean + tf.exp(0.5 * log_variance) * eps

    def reconstruction_log_likelihood(self, images, z, training=False):
        """log p(x|z) per image [B] for z [B, L]."""
        means = self.decoder(z, training=training)
        return likelihood.discretized_logistic_log_likelihood(images, means,
                                                              self.pixel_log_scale)

    def elbo_terms(self, images, training=False):
        """{"negative_elbo", "kl", "reconstruction"} per image [B], one sample of z
        ("reconstruction" is -log p(x|z), in nats)."""
        mean, log_variance = self.posterior_parameters(images, training)
        z = self.sample_posterior(mean, log_variance)
        log_px = self.reconstruction_log_likelihood(images, z, training)
        kl = likelihood.gaussian_kl_to_standard_normal(mean, log_variance)
        return {"negative_elbo": likelihood.negative_elbo(log_px, kl), "kl": kl,
                "reconstruction": -log_px}

    def call(self, images, training=False):
        return self.elbo_terms(images, training)["negative_elbo"]

    def _update_trackers(self, terms):
        loss = tf.reduce_mean(terms["negative_elbo"])
        self._trackers["loss"].update_state(loss)
        self._trackers["kl"].update_state(tf.reduce_mean(terms["kl"]))
        self._trackers["reconstruction"].update_state(tf.reduce_mean(terms["reconstruction"]))
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def train_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        encoder_vars = self.encoder.trainable_variables
        head_vars = self.head_variables
        with tf.GradientTape() as tape:
            terms = self.elbo_terms(images, training=True)
            loss = tf.reduce_mean(terms["negative_elbo"])
        gradients = tape.gradient(loss, encoder_vars + head_vars)
        self.encoder_optimizer.apply(gradients[:len(encoder_vars)], encoder_vars)
        self.optimizer.apply(gradients[len(encoder_vars):], head_vars)
        return self._update_trackers(terms)

    def test_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        return self._update_trackers(self.elbo_terms(images, training=False))

    @tf.function(reduce_retracing=True)
    def _importance_terms(self, images, mean, log_variance, num_samples):
        """(log p(x|z_k), log p(z_k), log q(z_k|x)), each [k, B], for k draws z_k ~ q(z|x);
        compiled, as evaluation decodes K x N images."""
        z = self.sample_posterior(mean, log_variance, num_samples)        # [k, B, L]
        tiled = tf.tile(images, [num_samples, 1, 1, 1])                    # k-major, as z
        log_px = tf.reshape(
            self.reconstruction_log_likelihood(tiled, tf.reshape(z, [-1, self.latent_dim])),
            [num_samples, -1])
        return (log_px, likelihood.standard_normal_log_density(z),
                likelihood.diagonal_gaussian_log_density(z, mean, log_variance))

    def importance_log_likelihood(self, images, num_samples, chunk_size=64):
        """log p(x) per image [B] estimated with `num_samples` K draws from q(z|x)
        (`likelihood.importance_sampled_log_likelihood`), decoded `chunk_size` draws at a
        time so that memory stays at chunk_size x B images."""
        if int(num_samples) < 1 or int(chunk_size) < 1:
            raise ValueError(f"num_samples={num_samples} and chunk_size={chunk_size} must be "
                             "positive integers")
        images = tf.convert_to_tensor(images, tf.float32)
        mean, log_variance = self.posterior_parameters(images, training=False)
        chunks = []
        for start in range(0, int(num_samples), int(chunk_size)):
            k = min(int(chunk_size), int(num_samples) - start)
            chunks.append(self._importance_terms(images, mean, log_variance, tf.constant(k)))
        log_px, log_pz, log_qz = (tf.concat(terms, axis=0) for terms in zip(*chunks))
        return likelihood.importance_sampled_log_likelihood(log_px, log_pz, log_qz)


def evaluate_vae(model, images, batch_size=100, importance_samples=100, chunk_size=64):
    """Test-set numbers of Table 5, in nats per image (means over `images`, uint8 or [0, 1]
    floats [N, H, W, C]): negative ELBO, KL, reconstruction, importance-sampled
    log-likelihood with K = `importance_samples`, and the latter as bits/dim."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    sums = {"negative_elbo": 0.0, "kl": 0.0, "reconstruction": 0.0, "log_likelihood": 0.0}
    for start in range(0, len(images), batch_size):
        batch = tf.constant(images[start:start + batch_size], tf.float32)
        terms = model.elbo_terms(batch, training=False)
        for key in ("negative_elbo", "kl", "reconstruction"):
            sums[key] += float(tf.reduce_sum(terms[key]))
        sums["log_likelihood"] += float(tf.reduce_sum(
            model.importance_log_likelihood(batch, importance_samples, chunk_size)))
    result = {key: value / len(images) for key, value in sums.items()}
    result["bits_per_dim"] = float(likelihood.bits_per_dim(
        result["log_likelihood"], int(np.prod(images.shape[1:]))))
    result["importance_samples"] = int(importance_samples)
    result["num_images"] = int(len(images))
    return result
