"""MoCo-v2 baseline: InfoNCE against a queue of momentum keys."""
import keras
import tensorflow as tf

from nac_tf.methods.base import MomentumQueueMethod, PairLoss
from nac_tf.methods.registry import TEMPERATURE
from nac_tf.objectives import info_nce_loss


class MoCoV2(MomentumQueueMethod):
    """Online encoder + MLP head (queries), momentum copies (keys), queue of keys.

    Symmetrised over the two views: each view's query is matched with the other view's
    momentum key, and both views' keys are enqueued. `temperature`: tau of InfoNCE;
    `queue_size`, `momentum`, `queue_init_scale`: the queue and EMA networks'.
    """

    def __init__(self, encoder, config, *, temperature=TEMPERATURE.default, **kwargs):
        super().__init__(encoder, config, **kwargs)
        self.temperature = TEMPERATURE.check(temperature)
        self.projection_head = self.make_head("projection_head")
        self.momentum_encoder, self.momentum_projection_head = self.init_momentum(
            [self.encoder, self.projection_head])

    def view_pair_loss(self, view1, view2, training):
        def online(images):
            return self.projection_head(self.encoder(images, training=training),
                                        training=training)

        def momentum(images):
            h = self.momentum_encoder(images, training=training)
            return self.momentum_projection_head(h, training=training)

        queries = keras.ops.cast(self.forward_views(online, view1, view2), "float32")
        # The momentum networks follow the online BatchNorm mode (same forward_views).
        keys = tf.stop_gradient(keras.ops.normalize(
            keras.ops.cast(self.forward_views(momentum, view1, view2), "float32"),
            axis=-1, order=2))
        loss = info_nce_loss(queries, keys, tf.convert_to_tensor(self.queue),
                             self.temperature)
        return PairLoss(loss, {}, queries[:tf.shape(view1)[0]], {"keys": keys})
