"""NAC-MQ: NAC with momentum networks and a queue of momentum codes (Eq. 20)."""
import keras
import tensorflow as tf

from nac_tf.methods.base import (MomentumQueueMethod, PairLoss, binary_codes, loss_precision,
                                 write_into_queue)
from nac_tf.methods.registry import (FLIP_PROB, L2_WEIGHT, MQ_BETA, MQ_INFERENCE_WEIGHT,
                                     MQ_NEGATIVES_SETTING)
from nac_tf.objectives import (inference_likelihood_loss, nac_mq_loss,
                               nac_mq_mutual_information_bound)


class NACMQ(MomentumQueueMethod):
    """NAC whose denominator samples come from a queue of M momentum codes.

    Eq. 20 scores the online noisy code z~ with the momentum inference network r^, so the
    online inference network phi receives no gradient from it. phi is trained by its own
    likelihood of the other view's noisy code (stop-gradient, Eq. 13-15) on a stop-gradient
    copy of h, so the encoder's objective stays exactly Eq. 20; its EMA r^ is then a useful
    posterior. The lambda ||z||^2 term keeps the online code norms close to the queued
    momentum codes (the paper's stabiliser, lambda = 0.1).

    The denominator holds the current batch's momentum codes too (`mq_negatives`, see
    `nac_tf.methods.registry.MQ_NEGATIVES`): by default they are written into the queue
    before the loss, as the authors' CIFAR code does, so a fresh queue of near-zero entries
    still gives every code real negatives; after the step the queue keeps them (the same
    write).

    `flip_prob`: the channel's p; `queue_size` M; `momentum` m of the EMA networks;
    `l2_weight` lambda; `queue_init_scale`: std of the initial queue entries. `mq_beta` and
    `mq_inference_weight` reproduce the authors' CIFAR code when set to "divide" and 2
    (their denominator z~.v / beta; their likelihood term, a sum of the two views' means).
    """

    def __init__(self, encoder, config, *, flip_prob=FLIP_PROB.default,
                 l2_weight=L2_WEIGHT.default, mq_negatives=MQ_NEGATIVES_SETTING.default,
                 mq_beta=MQ_BETA.default, mq_inference_weight=MQ_INFERENCE_WEIGHT.default,
                 **kwargs):
        super().__init__(encoder, config, **kwargs)
        self.flip_prob = FLIP_PROB.check(flip_prob)
        self.l2_weight = L2_WEIGHT.check(l2_weight)
        self.mq_negatives = MQ_NEGATIVES_SETTING.check(mq_negatives)
        self.mq_beta = MQ_BETA.check(mq_beta)
        self.mq_inference_weight = MQ_INFERENCE_WEIGHT.check(mq_inference_weight)
        self.projection_head = self.make_head("projection_head")
        self.inference_network = self.make_head("inference_network")
        (self.momentum_encoder, self.momentum_projection_head,
         self.momentum_inference_network) = self.init_momentum(
            [self.encoder, self.projection_head, self.inference_network])

    def view_pair_loss(self, view1, view2, training):
        def online(images):
            h = self.encoder(images, training=training)
            # Online phi on a stop-gradient h: its likelihood term trains phi only.
            return (self.projection_head(h, training=training),
                    self.inference_network(tf.stop_gradient(h), training=training))

        def momentum(images):
            h = self.momentum_encoder(images, training=training)
            return (self.momentum_projection_head(h, training=training),
                    self.momentum_inference_network(h, training=training))

        a, logits = self.forward_views(online, view1, view2)
        a, logits = loss_precision(a), loss_precision(logits)
        codes = keras.ops.tanh(a)
        # The momentum networks follow the online BatchNorm mode (same forward_views).
        momentum_a, momentum_logits = self.forward_views(momentum, view1, view2)
        momentum_codes = tf.stop_gradient(keras.ops.tanh(loss_precision(momentum_a)))
        momentum_logits = tf.stop_gradient(loss_precision(momentum_logits))

        signs = self.flip_signs(tf.shape(codes), self.flip_prob)
        queue = tf.convert_to_tensor(self.queue)
        positive_keys = None
        state = {"keys": momentum_codes}
        if self.mq_negatives == "batch_in_queue":
            # Gathered once: after the step the queue receives these same keys.
            state["global_keys"] = self.global_keys(momentum_codes)
            queue = write_into_queue(queue, tf.convert_to_tensor(self.queue_pointer),
                                     state["global_keys"])
        elif self.mq_negatives == "positive_key":
            positive_keys = momentum_codes
        code_loss = nac_mq_loss(codes, momentum_logits, signs, self.flip_prob, queue, self.l2_weight,
                                positive_keys=positive_keys, beta_rule=self.mq_beta)
        likelihood_loss = inference_likelihood_loss(logits, keras.ops.cast(signs, codes.dtype)
                                                    * codes)
        # The bound of Eq. 18 holds for binary codes c = sgn(a), not for their relaxation.
        mi_bound = nac_mq_mutual_information_bound(
            binary_codes(a), momentum_logits, signs, self.flip_prob, binary_codes(queue),
            positive_keys=None if positive_keys is None else binary_codes(positive_keys))
        num_images = tf.shape(view1)[0]
        metrics = {"mi_bound": mi_bound, "code_loss": code_loss,
                   "inference_loss": likelihood_loss,
                   "code_norm_sq": keras.ops.mean(keras.ops.sum(codes * codes, axis=-1))}
        return PairLoss(code_loss + self.mq_inference_weight * likelihood_loss, metrics,
                        a[:num_images], state)
