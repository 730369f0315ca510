#pragma once
// Rank statistics for experiments that ask "does metric X predict outcome Y?" (ntk_nas,
// architecture-search studies): Kendall's tau-b with its two-sided p-value, as
// scipy.stats.kendalltau computes them (method "auto").
#include <vector>

namespace kern::tools {

struct KendallTau {
  double tau = 0;  // tau-b in [-1, 1]; NaN when a variable is constant or fewer than 2 pairs
  double p = 1;    // two-sided p-value of tau = 0; NaN together with tau
  int64_t n = 0;   // pairs used (entries where both values are finite)
};

/// Kendall's tau-b of x and y (same length; entries where either is NaN/inf are dropped).
/// p-value: exact (the permutation distribution of discordant pairs) without ties and for
/// n <= 33, as scipy does; otherwise the normal approximation with the tie-corrected variance.
/// Throws kern::Error when the lengths differ.
KendallTau kendall_tau(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace kern::tools
