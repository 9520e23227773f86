"""SimCLR baseline: NT-Xent on l2-normalised projections (Eq. 21-22)."""
import keras
import tensorflow as tf

from nac_tf import distribute
from nac_tf.methods.base import PairLoss, TwoViewMethod
from nac_tf.objectives import nt_xent_loss


class SimCLR(TwoViewMethod):
    """Encoder + projection head; negatives are all other views of the global batch."""

    def __init__(self, encoder, config, **kwargs):
        super().__init__(encoder, config, **kwargs)
        self.projection_head = self.make_head("projection_head")

    def view_pair_loss(self, view1, view2, training):
        h = self.encode_views(view1, view2, training)
        a = keras.ops.cast(self.projection_head(h, training=training), "float32")
        unit = keras.ops.normalize(a, axis=-1, order=2)
        negatives = distribute.gather_across_replicas(unit)
        # This replica's rows start at replica_id * local rows inside the gathered matrix.
        offset = distribute.replica_id() * tf.shape(a)[0]
        loss = nt_xent_loss(a, self.method_config.temperature, negatives=negatives,
                            negatives_offset=offset)
        return PairLoss(loss, {}, a[:tf.shape(view1)[0]])
