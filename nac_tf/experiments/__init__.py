"""Code of the paper's side experiments, used by the benchmarks only (not by the trainer,
the commands or the export).

- `vae`: the VAE of Table 5 on a (pretrained) nac_tf encoder; `likelihood`: its KL, ELBO
  and importance-sampled log-likelihood.
- `linear_regions`: linear regions of a ReLU MLP on data (Fig. 1).
"""
