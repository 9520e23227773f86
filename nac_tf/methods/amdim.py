"""AMDIM (Bachman, Hjelm and Buchwalter, NeurIPS 2019): multiscale NCE across views, in the
shared two-view trainer.

The encoder f is an AMDIM encoder (`nac_tf.models.amdim`): h = f_1 [N, D] is its output and
the representation every evaluation reads; `amdim_feature_maps(encoder)` also gives the 5x5
and 7x7 feature maps f_5, f_7 with the same weights. The method owns the embeddings phi_5 and
phi_7 (`AMDIMEmbedding`, the authors' FakeRKHSConvNet; phi_1 is the identity) and, with
mixture components, the mixture network m_k (`MixtureFeatures`, AMDIM Sec. 3.7). The loss
is `nac_tf.objectives.amdim_loss`: 1->5, 1->7 and 5->5 NCE in both directions across the
two views (AMDIM Sec. 3.5).
"""
import keras
import tensorflow as tf

from nac_tf import distribute
from nac_tf.methods.base import PairLoss, TwoViewMethod
from nac_tf.methods.registry import (AMDIM_CLIP_VALUE, AMDIM_MIXTURE_COMPONENTS,
                                     AMDIM_MIXTURE_ENTROPY_WEIGHT, AMDIM_REGULARIZATION_WEIGHT)
from nac_tf.models import AMDIMEmbedding, MixtureFeatures, amdim_feature_maps
from nac_tf.objectives import amdim_loss

# Folded into the stateless seed (seed, step), so that the source locations are a stream of
# their own (the channel noise of `flip_signs` uses the seed itself).
_LOCATION_STREAM = 5


class AMDIM(TwoViewMethod):
    """Encoder f (h = f_1), embeddings phi_5 and phi_7, optional mixture network m_k.

    Per view pair, every row predicts the other view's features of the same image: f_1 ->
    every location of f_5 and of f_7, and one f_5 location, drawn uniformly per row and
    step, -> every location of f_5; the other images' locations of the whole global batch
    are the negatives. Hyperparameters: `amdim_regularization_weight` (lambda of the
    squared-score regulariser, 4e-2) and `amdim_clip_value` (c of c tanh(s / c), 20), AMDIM
    Sec. 3.3; `amdim_mixture_components` (k, 0: the plain 1->7 task) and
    `amdim_mixture_entropy_weight` (alpha of Eq. 6), AMDIM Sec. 3.7.

    No projection head: the hash codes of the export and the code statistics of the step
    are the signs of f_1 (`CODES_FROM_FEATURES`), the vector AMDIM's scores read.
    """

    CODES_FROM_FEATURES = True

    def __init__(self, encoder, config, *,
                 amdim_regularization_weight=AMDIM_REGULARIZATION_WEIGHT.default,
                 amdim_clip_value=AMDIM_CLIP_VALUE.default,
                 amdim_mixture_components=AMDIM_MIXTURE_COMPONENTS.default,
                 amdim_mixture_entropy_weight=AMDIM_MIXTURE_ENTROPY_WEIGHT.default, **kwargs):
        super().__init__(encoder, config, **kwargs)
        self.regularization_weight = AMDIM_REGULARIZATION_WEIGHT.check(
            amdim_regularization_weight)
        self.clip_value = AMDIM_CLIP_VALUE.check(amdim_clip_value)
        self.mixture_components = int(AMDIM_MIXTURE_COMPONENTS.check(amdim_mixture_components))
        self.mixture_entropy_weight = AMDIM_MIXTURE_ENTROPY_WEIGHT.check(
            amdim_mixture_entropy_weight)
        self.feature_maps = amdim_feature_maps(encoder)
        width = int(encoder.output_shape[-1])
        self.embedding_5 = self.make_embedding(width, "embedding_5")
        self.embedding_7 = self.make_embedding(width, "embedding_7")
        self.mixture = None
        if self.mixture_components:
            self.mixture = MixtureFeatures(self.mixture_components,
                                           config.head_hidden_dim or width, name="mixture")

    def make_embedding(self, width, name):
        """phi_5 or phi_7: a feature map [N, H, W, C] -> [N, H, W, width] (the authors'
        FakeRKHSConvNet without hidden BatchNorm, their CIFAR default use_bn=0; its output
        BatchNorm follows the run's BatchNorm mode, as the heads of the other methods)."""
        return AMDIMEmbedding(width, synchronized_batch_norm=(
            self.method_config.synchronized_batch_norm), name=name)

    def source_locations(self, rows, locations):
        """The f_5 location (row-major, in [0, `locations`)) that is each of this replica's
        `rows` rows' 5->5 source at this step.

        As `flip_signs`: drawn for the whole global batch [2K] from the stateless seed
        (run seed, optimizer step) and cut to this replica's rows, so a global row gets the
        same location whatever the number of replicas, fresh every step, reproducible after
        a resume. Integers from Philox, which XLA draws alike.
        """
        seed = tf.random.experimental.stateless_fold_in(self.step_seed(), _LOCATION_STREAM)
        global_rows = rows * distribute.num_replicas_in_context()
        drawn = tf.random.stateless_uniform([global_rows], seed=seed, minval=0,
                                            maxval=locations, dtype=tf.int32, alg="philox")
        return distribute.replica_view_pair_rows(drawn)

    def view_pair_loss(self, view1, view2, training):
        def forward(images):
            f1, f5, f7 = self.feature_maps(images, training=training)
            outputs = (f1, self.embedding_5(f5, training=training),
                       self.embedding_7(f7, training=training))
            if self.mixture is not None:
                outputs += (self.mixture(f1),)
            return outputs

        # Losses in float32 whatever the compute dtype (mixed precision).
        outputs = [keras.ops.cast(x, "float32")
                   for x in self.forward_views(forward, view1, view2)]
        f1, f5, f7 = outputs[:3]
        num_images = tf.shape(view1)[0]
        _, height5, width5, _ = f5.shape
        locations = self.source_locations(2 * num_images, height5 * width5)
        targets5 = targets7 = None
        offset = 0
        if distribute.num_replicas_in_context() > 1:
            # The consequents of the whole global batch in the single-device layout, with
            # their gradients flowing back to the replica that computed them (as SimCLR's
            # negatives): every replica's rows are trained by the total loss.
            targets5 = distribute.gather_view_pairs(
                keras.ops.reshape(f5, (2 * num_images, height5 * width5, -1)))
            targets7 = distribute.gather_view_pairs(
                keras.ops.reshape(f7, (2 * num_images, f7.shape[1] * f7.shape[2], -1)))
            offset = distribute.replica_id() * num_images
        loss, metrics = amdim_loss(
            f1, f5, f7, locations, targets5, targets7, image_offset=offset,
            regularization_weight=self.regularization_weight, clip_value=self.clip_value,
            f1_mixture=outputs[3] if self.mixture is not None else None,
            mixture_entropy_weight=self.mixture_entropy_weight if self.mixture is not None
            else None)
        return PairLoss(loss, metrics, f1[:num_images])
