// kern::tools::kendall_tau against scipy.stats.kendalltau (scipy 1.10.1, method "auto";
// the values were printed by the script in the comment below, not by kern).
//   from scipy.stats import kendalltau
//   for x, y in cases: r = kendalltau(x, y); print(repr(r.statistic), repr(r.pvalue))
#include <kern/error.hpp>
#include <kern/tools/stats.hpp>
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

using Catch::Matchers::WithinRel;
using kern::tools::kendall_tau;

TEST_CASE("kendall_tau agrees with scipy (exact p without ties)", "[stats]") {
  // n = 7, no ties: scipy's exact permutation p-value
  auto a = kendall_tau({0.1, 0.5, 0.3, 0.9, 0.7, 0.2, 0.8}, {0.61, 0.72, 0.65, 0.91, 0.70, 0.60, 0.88});
  CHECK_THAT(a.tau, WithinRel(0.8095238095238096, 1e-12));
  CHECK_THAT(a.p, WithinRel(0.010714285714285714, 1e-10));
  CHECK(a.n == 7);
  // n = 9, no ties
  auto d = kendall_tau({0.3, -0.2, 0.8, 0.1, 0.5, 0.05, -0.4, 0.9, 0.6},
                       {0.80, 0.79, 0.85, 0.81, 0.83, 0.78, 0.77, 0.86, 0.84});
  CHECK_THAT(d.tau, WithinRel(0.8888888888888888, 1e-12));
  CHECK_THAT(d.p, WithinRel(0.00024250440917107584, 1e-10));
  // perfectly reversed, n = 10: p = 2 / 10!
  auto c = kendall_tau({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {10, 9, 8, 7, 6, 5, 4, 3, 2, 1});
  CHECK_THAT(c.tau, WithinRel(-1.0, 1e-12));
  CHECK_THAT(c.p, WithinRel(5.511463844797178e-07, 1e-10));
}

TEST_CASE("kendall_tau agrees with scipy with ties (tau-b, tie-corrected normal p)", "[stats]") {
  auto b = kendall_tau({3, 1, 4, 1, 5, 9, 2, 6, 5}, {2, 7, 1, 8, 2, 8, 1, 8, 2});
  CHECK_THAT(b.tau, WithinRel(0.1910789265895446, 1e-12));
  CHECK_THAT(b.p, WithinRel(0.5077374466452402, 1e-10));
}

TEST_CASE("kendall_tau drops non-finite pairs, is NaN for constant input, checks lengths", "[stats]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto a = kendall_tau({0.1, nan, 0.5, 0.3, 0.9, 0.7, 0.2, 0.8},
                       {0.61, 0.5, 0.72, 0.65, 0.91, 0.70, 0.60, 0.88});
  CHECK(a.n == 7);
  CHECK_THAT(a.tau, WithinRel(0.8095238095238096, 1e-12));
  auto k = kendall_tau({1, 1, 1}, {1, 2, 3});
  CHECK(std::isnan(k.tau));
  CHECK_THROWS_AS(kendall_tau({1, 2}, {1, 2, 3}), kern::Error);
}
