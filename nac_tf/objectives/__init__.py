"""Training objectives, one module per family: NAC (Eq. 19) and NAC-MQ (Eq. 20) in
`nac_tf.objectives.nac`, the SimCLR NT-Xent (Eq. 21-22) and MoCo-v2 InfoNCE baselines in
`nac_tf.objectives.contrastive`, and AMDIM's multiscale NCE (`amdim_loss`, `amdim_nce_loss`)
with its mixture-based 1->7 variant (`amdim_mixture_nce_loss`) in `nac_tf.objectives.amdim`.
Equation and section numbers are the NAC paper's unless marked "AMDIM" (Bachman, Hjelm and
Buchwalter, NeurIPS 2019).

Pure `keras.ops` functions of tensors: no layers, no state, no TensorFlow calls, so they run
eagerly, under `tf.function` and inside `tf.distribute` replica contexts, in float32 or float64
(everything is computed in the dtype of the first argument). A hyperparameter that is a setting
is checked by its declaration (`nac_tf.methods.registry`) when given as a Python number.

Batch layout shared by every function: N = 2K rows, rows 0..K-1 are the first views and rows
K..2K-1 the second views of the same K images, so the other view of row i is
pi(i) = (i + K) mod 2K. Functions that take per-row "own" predictions (inference-network logits,
momentum keys) pair row i with the prediction of row pi(i) themselves: a network reading one
view predicts the code of the other view, so it cannot copy the code it is scored on.
"""
from nac_tf.objectives.amdim import amdim_loss, amdim_mixture_nce_loss, amdim_nce_loss
from nac_tf.objectives.contrastive import info_nce_loss, nt_xent_loss
from nac_tf.objectives.nac import (inference_likelihood_loss, nac_loss, nac_mq_loss,
                                   nac_mq_mutual_information_bound,
                                   nac_mutual_information_bound)

__all__ = ["amdim_loss", "amdim_mixture_nce_loss", "amdim_nce_loss", "inference_likelihood_loss",
           "info_nce_loss", "nac_loss", "nac_mq_loss", "nac_mq_mutual_information_bound",
           "nac_mutual_information_bound", "nt_xent_loss"]
