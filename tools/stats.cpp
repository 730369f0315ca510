// Kendall's tau-b (see kern/tools/stats.hpp).
#include <kern/error.hpp>
#include <kern/tools/stats.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>

namespace kern::tools {
namespace {

// P(D <= k) for D = the number of inversions of a uniform random permutation of n items (the
// null distribution of the discordant pairs without ties), from the Mahonian numbers:
// count_i[k] = sum_{j < i} count_{i-1}[k - j]. Counts are normalized per step (doubles: 33!
// would not fit an integer type; ratios keep full relative precision).
double inversions_cdf(int64_t n, int64_t k) {
  std::vector<double> p{1.0};
  for (int64_t i = 2; i <= n; ++i) {
    std::vector<double> next(p.size() + static_cast<size_t>(i - 1), 0.0);
    // sliding-window sum of width i over p
    double window = 0.0;
    for (size_t m = 0; m < next.size(); ++m) {
      if (m < p.size()) window += p[m];
      if (m >= static_cast<size_t>(i) && m - static_cast<size_t>(i) < p.size()) window -= p[m - static_cast<size_t>(i)];
      next[m] = window / static_cast<double>(i);
    }
    p = std::move(next);
  }
  double cdf = 0.0;
  for (int64_t m = 0; m <= k && m < static_cast<int64_t>(p.size()); ++m) cdf += p[static_cast<size_t>(m)];
  return cdf;
}

// sum over tie groups of f(t), t = group size.
template <class F>
double tie_sum(const std::vector<double>& v, F f) {
  std::map<double, int64_t> groups;
  for (double x : v) ++groups[x];
  double s = 0.0;
  for (const auto& [value, t] : groups) s += f(static_cast<double>(t));
  return s;
}

}  // namespace

KendallTau kendall_tau(const std::vector<double>& x, const std::vector<double>& y) {
  KERN_CHECK(x.size() == y.size(), "kendall_tau: x has ", x.size(), " values but y has ", y.size());
  std::vector<double> a, b;
  for (size_t i = 0; i < x.size(); ++i)
    if (std::isfinite(x[i]) && std::isfinite(y[i])) a.push_back(x[i]), b.push_back(y[i]);
  KendallTau r;
  r.n = static_cast<int64_t>(a.size());
  const int64_t n = r.n;
  int64_t concordant = 0, discordant = 0, tied_x = 0, tied_y = 0;  // tied_x: tied in x only
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) {
      const double dx = a[j] - a[i], dy = b[j] - b[i];
      if (dx == 0 && dy == 0) continue;
      if (dx == 0) ++tied_x;
      else if (dy == 0) ++tied_y;
      else if ((dx > 0) == (dy > 0)) ++concordant;
      else ++discordant;
    }
  const double cd = static_cast<double>(concordant + discordant);
  const double denom = std::sqrt((cd + static_cast<double>(tied_x)) * (cd + static_cast<double>(tied_y)));
  if (n < 2 || denom == 0.0) {
    r.tau = r.p = std::nan("");
    return r;
  }
  r.tau = static_cast<double>(concordant - discordant) / denom;
  const double m = static_cast<double>(n);
  // ties as scipy counts them: t(t-1)/2 pairs per group of size t (in x, in y)
  const double xtie = tie_sum(a, [](double t) { return t * (t - 1) / 2; });
  const double ytie = tie_sum(b, [](double t) { return t * (t - 1) / 2; });
  const int64_t pairs = n * (n - 1) / 2;
  if (xtie == 0 && ytie == 0 && (n <= 33 || std::min(discordant, pairs - discordant) <= 1)) {
    const int64_t tail = std::min(discordant, pairs - discordant);
    r.p = std::min(1.0, 2.0 * inversions_cdf(n, tail));
    return r;
  }
  // Normal approximation of S = C - D with the tie-corrected variance (Kendall 1970, eq. 4.3).
  const double x0 = tie_sum(a, [](double t) { return t * (t - 1) * (t - 2); });
  const double y0 = tie_sum(b, [](double t) { return t * (t - 1) * (t - 2); });
  const double x1 = tie_sum(a, [](double t) { return t * (t - 1) * (2 * t + 5); });
  const double y1 = tie_sum(b, [](double t) { return t * (t - 1) * (2 * t + 5); });
  double var = (m * (m - 1) * (2 * m + 5) - x1 - y1) / 18.0 + 2.0 * xtie * ytie / (m * (m - 1));
  if (n > 2) var += x0 * y0 / (9.0 * m * (m - 1) * (m - 2));
  const double z = static_cast<double>(concordant - discordant) / std::sqrt(var);
  r.p = std::erfc(std::abs(z) / std::sqrt(2.0));
  return r;
}

}  // namespace kern::tools
