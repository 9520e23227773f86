"""SimCLR baseline: NT-Xent on l2-normalised projections (Eq. 21-22)."""
import keras
import tensorflow as tf

from nac_tf import distribute
from nac_tf.methods.base import PairLoss, TwoViewMethod, loss_precision
from nac_tf.methods.registry import TEMPERATURE
from nac_tf.objectives import nt_xent_loss


class SimCLR(TwoViewMethod):
    """Encoder + projection head; negatives are all other views of the global batch.
    `temperature`: tau of NT-Xent."""

    def __init__(self, encoder, config, *, temperature=TEMPERATURE.default, **kwargs):
        super().__init__(encoder, config, **kwargs)
        self.temperature = TEMPERATURE.check(temperature)
        self.projection_head = self.make_head("projection_head")

    def view_pair_loss(self, view1, view2, training):
        def forward(images):
            return self.projection_head(self.encoder(images, training=training),
                                        training=training)

        a = loss_precision(self.forward_views(forward, view1, view2))
        unit = keras.ops.normalize(a, axis=-1, order=2)
        # Replica order [rep0 view1, rep0 view2, rep1 view1, ...]: this replica's 2k rows are
        # one contiguous block starting at replica_id * 2k, which is where nt_xent_loss masks
        # each row's own similarity. The logsumexp over the other rows does not depend on
        # their order, so the loss is the single-device one.
        negatives = distribute.gather_across_replicas(unit)
        offset = distribute.replica_id() * tf.shape(a)[0]
        loss = nt_xent_loss(a, self.temperature, negatives=negatives,
                            negatives_offset=offset)
        return PairLoss(loss, {}, a[:tf.shape(view1)[0]])
