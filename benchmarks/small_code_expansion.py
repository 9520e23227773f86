"""Checks the small-code expansion of NAC's denominator that docs/results.md uses.

    python benchmarks/small_code_expansion.py

For codes z_k in a batch of K and a noisy code z~ = m * z_i (m: independent signs, -1 with
probability p), with beta = 1/2 log((1 - p) / p), the denominator of Eq. 19 expands for small
codes as

    E_m[logsumexp_k(beta z~ . z_k)] - log K
        = beta (1 - 2p) z_i . mean_k z_k
          + beta^2 / 2 [sum_d z_id^2 S_dd + (1 - 2p)^2 sum_{d != e} z_id z_ie S_de] + O(z^3),

S the batch covariance of the codes, because E[m_d m_e] is 1 for d = e and (1 - 2p)^2
otherwise. Covariance between bits is weighted (1 - 2p)^2 relative to each bit's own
variance: 0.64 at p = 0.1, 0.04 at p = 0.4. The script compares the expansion with a Monte
Carlo estimate of the exact expectation on random codes of the size NAC's are measured at
(||z||^2 of a few out of D), for several p, and prints both: they agree to the Monte Carlo
error where beta ||z||^2 is about 1 or less (p >= 0.4 here), within 2 % at p = 0.3, and
drift apart at small p, where beta is large.
"""
import numpy as np
from scipy.special import logsumexp


def expansion(z, i, flip_prob):
    beta = 0.5 * np.log((1 - flip_prob) / flip_prob)
    covariance = np.cov(z, rowvar=False, bias=True)
    off_diagonal = covariance - np.diag(np.diag(covariance))
    first = beta * (1 - 2 * flip_prob) * z[i] @ z.mean(0)
    second = 0.5 * beta ** 2 * (np.sum(z[i] ** 2 * np.diag(covariance))
                                + (1 - 2 * flip_prob) ** 2 * z[i] @ off_diagonal @ z[i])
    return first + second


def monte_carlo(z, i, flip_prob, samples, rng):
    beta = 0.5 * np.log((1 - flip_prob) / flip_prob)
    signs = np.where(rng.random((samples, z.shape[1])) < flip_prob, -1.0, 1.0)
    values = logsumexp(beta * (signs * z[i]) @ z.T, axis=1) - np.log(len(z))
    return values.mean(), values.std() / np.sqrt(samples)


def main():
    rng = np.random.default_rng(0)
    num_codes, dim = 256, 128
    # Correlated codes with a common offset, ||z||^2 about 5 of 128 (the hashing runs end at
    # 6.4): the regime the expansion is about.
    mixing = 0.3 * rng.normal(size=(dim, dim)) / np.sqrt(dim) + np.eye(dim)
    z = np.tanh(0.2 * rng.normal(size=(num_codes, dim)) @ mixing + 0.02)
    print(f"||z||^2 = {np.mean(np.sum(z ** 2, 1)):.2f} of {dim}")
    print(f"{'p':>5} {'(1-2p)^2':>9} {'beta ||z_i||^2':>15} {'Monte Carlo':>12} {'+-':>9} "
          f"{'expansion':>10}")
    for flip_prob in (0.05, 0.1, 0.2, 0.3, 0.4, 0.45):
        exact, error = monte_carlo(z, 0, flip_prob, 200_000, rng)
        beta = 0.5 * np.log((1 - flip_prob) / flip_prob)
        print(f"{flip_prob:5.2f} {(1 - 2 * flip_prob) ** 2:9.2f} {beta * z[0] @ z[0]:15.2f} "
              f"{exact:12.6f} {error:9.6f} {expansion(z, 0, flip_prob):10.6f}")


if __name__ == "__main__":
    main()
