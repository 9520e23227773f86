"""The expected-ties mode in closed form: E[AP@k] over uniformly random orders inside every
group of equal distance, and the weights of the exact expected mean over queries (the
derivations are in the docstrings; `average_precisions` summarises them)."""
import numpy as np


def harmonic_table(num_items):
    """H[j] = sum_{i<=j} 1/i for j = 0..N, accumulated in extended precision where available."""
    table = np.zeros(num_items + 1, np.longdouble)
    np.cumsum(1.0 / np.arange(1, num_items + 1, dtype=np.longdouble), out=table[1:])
    return table


def _expected_group_sum(n, r, s, c, harmonic):
    """E[sum over the group's relevant ranks of precision@rank], random order in the group.

    A group of n items (r relevant) fills ranks s+1..s+n with c relevant items ranked before
    it. Rank s+t holds a relevant item with probability r/n; given that, the number of
    relevant items among the t-1 group ranks before it is hypergeometric with mean
    (t-1)(r-1)/(n-1). Precision@(s+t) is linear in that number, so

      E = sum_t (r/n) (c + 1 + (t-1)(r-1)/(n-1)) / (s+t)
        = (r/n) [ (c+1) dH + (r-1)/(n-1) (n - (s+1) dH) ],   dH = H_{s+n} - H_s,

    using sum_t (t-1)/(s+t) = n - (s+1) dH; the (r-1)/(n-1) term is 0 when n = 1.
    Arrays of any common shape; groups with n = 0 give 0.
    """
    n = np.asarray(n, np.float64)
    r = np.asarray(r, np.float64)
    s_int = np.asarray(s, np.intp)
    n_int = np.asarray(n, np.intp)
    delta_h = harmonic[s_int + n_int] - harmonic[s_int]
    later = n - (s_int + 1) * delta_h  # sum_t (t-1)/(s+t), in extended precision
    pair_rate = np.divide(r - 1, n - 1, out=np.zeros_like(n), where=n > 1)
    inner = (np.asarray(c, np.float64) + 1) * delta_h + pair_rate * later
    share = np.divide(r, n, out=np.zeros_like(n), where=n > 0)
    return np.asarray(share * inner, np.float64)


def expected_ap_at_k(total, relevant, top_k, harmonic):
    """Exact E[AP@k] (AP@k = 0 without relevant item in the top k) and P(one is there).

    Groups wholly inside the top k contribute their expected precision sums A (above); their
    relevant count c is fixed. At most one boundary group (n items, r relevant, starting
    after rank s) is cut: m = k - s of its items enter the top k, Y of them relevant,
    Y ~ Hypergeometric(n, r, m). Given Y = y the y relevant ranks are a uniform subset of
    the m, so E[B | y] = (y/m) [ (c+1) dH_m + (y-1)/(m-1) (m - (s+1) dH_m) ] with
    dH_m = H_{s+m} - H_s; the denominator c + y is fixed given y, hence

      E[AP@k] = sum_y P(Y=y) (A + E[B | y]) / (c + y)   over y with c + y > 0.

    total, relevant: int [c_rows, buckets]. Returns (expected AP@k, inclusion probability).
    """
    rows = total.shape[0]
    before = np.cumsum(total, axis=1) - total
    relevant_before = np.cumsum(relevant, axis=1) - relevant
    inside = before + total <= top_k
    group_sums = _expected_group_sum(total, relevant, before, relevant_before, harmonic)
    a = np.where(inside, group_sums, 0.0).sum(axis=1)
    c = np.where(inside, relevant, 0).sum(axis=1)
    cut = (before < top_k) & (before + total > top_k)
    has_cut = cut.any(axis=1)
    expected = np.divide(a, c, out=np.zeros(rows), where=c > 0)
    inclusion = (c > 0).astype(np.float64)
    cut_rows = np.flatnonzero(has_cut)
    if cut_rows.size == 0:
        return expected, inclusion
    column = np.argmax(cut[cut_rows], axis=1)
    n = total[cut_rows, column]
    r = relevant[cut_rows, column]
    s = before[cut_rows, column]
    # A few rows at a time: each row spans every possible Y, up to min(r, k) values.
    for part in np.array_split(np.arange(cut_rows.size), -(-cut_rows.size // 64)):
        rows_of_part = cut_rows[part]
        expected[rows_of_part], inclusion[rows_of_part] = _expected_cut_group(
            n[part], r[part], s[part], top_k - s[part], c[rows_of_part], a[rows_of_part],
            harmonic)
    return expected, inclusion


def _expected_cut_group(n, r, s, m, c, a, harmonic):
    """E[AP@k] and P(c + Y > 0) for rows whose top k cuts a group (see `expected_ap_at_k`)."""
    low = np.maximum(0, m - (n - r))
    high = np.minimum(r, m)
    y = low[:, None] + np.arange(int((high - low).max()) + 1)[None, :]
    valid = y <= high[:, None]
    # Hypergeometric pmf from the ratio P(y+1)/P(y), in logs, normalised per row.
    y_prev = y[:, :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = (np.log((r[:, None] - y_prev) * (m[:, None] - y_prev), dtype=np.float64)
                     - np.log((y_prev + 1) * (n[:, None] - r[:, None] - m[:, None] + y_prev + 1),
                              dtype=np.float64))
    log_pmf = np.zeros(y.shape)
    log_pmf[:, 1:] = np.cumsum(np.where(valid[:, 1:], log_ratio, 0.0), axis=1)
    log_pmf = np.where(valid, log_pmf, -np.inf)
    pmf = np.exp(log_pmf - log_pmf.max(axis=1, keepdims=True))
    pmf /= pmf.sum(axis=1, keepdims=True)
    delta_h = (harmonic[s + m] - harmonic[s])[:, None]
    later = m[:, None] - (s[:, None] + 1) * delta_h
    pair_rate = np.divide(y - 1, (m - 1)[:, None], out=np.zeros(y.shape),
                          where=(m > 1)[:, None] & valid)
    boundary_sum = np.asarray(
        y / m[:, None] * ((c[:, None] + 1) * delta_h + pair_rate * later), np.float64)
    denominator = c[:, None] + y
    counted = valid & (denominator > 0)
    value = np.divide(a[:, None] + boundary_sum, denominator, out=np.zeros(y.shape),
                      where=counted)
    inclusion = np.where(c > 0, 1.0, np.where(counted, pmf, 0.0).sum(axis=1))
    return (pmf * value).sum(axis=1), inclusion


def _poisson_binomial(probabilities):
    """pmf of the number of successes of independent Bernoulli(p_j) trials."""
    pmf = np.ones(1)
    for p in probabilities:
        pmf = np.concatenate([pmf * (1 - p), [0.0]]) + np.concatenate([[0.0], pmf * p])
    return pmf


def mean_weights(inclusion):
    """Weights w: E[mean AP over counted queries | some query counts] = sum_q w_q E[AP_q | counted].

    Query q counts (I_q = 1) with probability p_q, independently of the other queries (each
    query's tie order is drawn independently), and I_q * AP_q is independent of
    M_q = sum_{j != q} I_j, so (reading 0/0 as 0)

      E[sum_q I_q AP_q / sum_j I_j] = sum_q p_q E[AP_q | I_q = 1] E[1 / (1 + M_q)].

    With K sure queries and the uncertain ones' count Y (Poisson-binomial), M_q = K - 1 + Y
    for a sure q, and K + Y_{-q} for an uncertain q, whose leave-one-out pmf is deconvolved
    from Y's pmf in the numerically stable direction. The result is divided by
    P(some query counts). Deterministic inclusion gives the plain mean: w = 1/K.
    """
    weights = np.zeros(inclusion.shape)
    sure = inclusion >= 1.0
    uncertain = np.flatnonzero((inclusion > 0.0) & ~sure)
    num_sure = int(sure.sum())
    p = inclusion[uncertain]
    pmf = _poisson_binomial(p)
    count_values = np.arange(pmf.size, dtype=np.float64)
    if num_sure:
        weights[sure] = np.sum(pmf / (num_sure + count_values))
    if p.size:
        # Y_{-q} pmf g solves pmf = g * [1-p, p]; divide forward when p <= 1/2 and backward
        # otherwise, so every step multiplies the rounding error by at most 1.
        forward = p <= 0.5
        p_forward, p_backward = p[forward], p[~forward]
        sum_forward, sum_backward = np.zeros(p_forward.size), np.zeros(p_backward.size)
        g = np.zeros(p_forward.size)
        for i in range(p.size):  # g_i = (pmf_i - p g_{i-1}) / (1 - p)
            g = (pmf[i] - p_forward * g) / (1 - p_forward)
            sum_forward += g / (num_sure + 1 + i)
        g = np.zeros(p_backward.size)
        for i in range(p.size, 0, -1):  # g_{i-1} = (pmf_i - (1 - p) g_i) / p
            g = (pmf[i] - (1 - p_backward) * g) / p_backward
            sum_backward += g / (num_sure + i)
        expectation = np.empty(p.size)
        expectation[forward], expectation[~forward] = sum_forward, sum_backward
        weights[uncertain] = expectation
    weights *= inclusion
    any_counts = 1.0 if num_sure else 1.0 - pmf[0]
    if any_counts <= 0.0:
        return np.zeros(inclusion.shape)
    return weights / any_counts
