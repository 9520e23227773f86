"""NAC: neural activation coding over a noisy binary channel (Eq. 19)."""
import keras
import tensorflow as tf

from nac_tf import distribute
from nac_tf.methods.base import PairLoss, TwoViewMethod, binary_codes, loss_precision
from nac_tf.methods.registry import FLIP_PROB
from nac_tf.objectives import nac_loss, nac_mutual_information_bound


class NAC(TwoViewMethod):
    """Encoder f, projection head g (code z = tanh(a)) and inference network phi (logits r).

    phi reads the representation of one view and predicts the noisy code of the other view
    (the pairing happens inside `nac_loss`), so it cannot copy the code it is asked for.
    Negatives are the codes of the whole global batch, self included (as the authors do).
    `flip_prob`: the channel's bit-flip probability p in (0, 0.5).
    """

    def __init__(self, encoder, config, *, flip_prob=FLIP_PROB.default, **kwargs):
        super().__init__(encoder, config, **kwargs)
        self.flip_prob = FLIP_PROB.check(flip_prob)
        self.projection_head = self.make_head("projection_head")
        self.inference_network = self.make_head("inference_network")

    def view_pair_loss(self, view1, view2, training):
        def forward(images):
            h = self.encoder(images, training=training)
            return (self.projection_head(h, training=training),
                    self.inference_network(h, training=training))

        a, logits = self.forward_views(forward, view1, view2)
        # Losses in float32 at least whatever the compute dtype (mixed precision).
        a, logits = loss_precision(a), loss_precision(logits)
        codes = keras.ops.tanh(a)
        signs = self.flip_signs(tf.shape(codes), self.flip_prob)
        # The 2K codes of the global batch (the denominator of Eq. 19 is order-invariant;
        # the single-device order just makes the matrix literally the one-device one).
        negatives = distribute.gather_view_pairs(codes)
        p = self.flip_prob
        loss = nac_loss(codes, logits, signs, p, negatives=negatives)
        # The bound of Eq. 18 holds for the binary code c = sgn(a), not for its relaxation.
        codes_sign, negatives_sign = binary_codes(a), binary_codes(negatives)
        mi_bound = nac_mutual_information_bound(
            codes_sign, tf.stop_gradient(logits), signs, p, negatives=negatives_sign)
        num_images = tf.shape(view1)[0]
        return PairLoss(loss, {"mi_bound": mi_bound, "code_norm_sq": keras.ops.mean(
            keras.ops.sum(codes * codes, axis=-1))}, a[:num_images])
