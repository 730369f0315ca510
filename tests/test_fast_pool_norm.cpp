// The oneDNN max-pooling forward (framework/backend/dnnl_pool.cpp) on inputs the op table
// cannot hold (finite differences need distinct values): ties, NaN and -inf, where the fast
// path must reproduce kern's first-maximum indices exactly. Every comparison also checks
// which path ran (kern::backend::path_counts).
#include "backend_paths.hpp"
#include "gradcheck.hpp"

#include <cmath>
#include <limits>

using namespace kern;

namespace {

// Values and d<max_pool2d(x), v>/dx (which lands on the recorded indices) on one backend.
struct PoolRun {
  Tensor out, grad;
};
// `fast_kernel`: must the oneDNN kernel run (Backend::Fast) or kern's loops (a fallback or
// Backend::Reference)?
PoolRun run_max_pool(const Tensor& x32, const Pool2dParams& p, Backend b, bool fast_kernel) {
  using testing::Path, testing::Primitive;
  BackendGuard guard(b);
  Tensor x = x32.detach();
  x.requires_grad_(true);
  Tensor y;
  const auto paths = testing::paths_of([&] { y = max_pool2d(x, p); });
  INFO("paths: " << testing::describe(paths));
  REQUIRE(paths(Primitive::MaxPool2d, Path::Fast) == (fast_kernel ? 1u : 0u));
  REQUIRE(paths(Primitive::MaxPool2d, Path::Reference) == (fast_kernel ? 0u : 1u));
  Generator vg(3);
  Tensor v = randn(y.shape(), DType::Float32, &vg);
  return {y.detach(), grad({y}, {x}, {v})[0]};
}

Pool2dParams pool_params(int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  Pool2dParams q;
  q.kernel = {k, k};
  q.stride = {s, s};
  q.padding = {p, p};
  q.ceil_mode = ceil_mode;
  return q;
}

// Elementwise equality with NaN == NaN.
bool same(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  auto va = a.contiguous().to_vector<float>(), vb = b.contiguous().to_vector<float>();
  for (size_t i = 0; i < va.size(); ++i)
    if (!(va[i] == vb[i] || (std::isnan(va[i]) && std::isnan(vb[i])))) return false;
  return true;
}

}  // namespace

TEST_CASE("max_pool2d fast path keeps the first maximum on ties", "[backend][pool]") {
  struct Case {
    Shape shape;
    int64_t k, s, p;
    bool ceil_mode;
  };
  // Small planes run oneDNN's simple nchw kernel, large ones its jit kernel: both are checked.
  for (const Case& c : {Case{{1, 3, 7, 7}, 3, 2, 1, false}, Case{{8, 16, 24, 24}, 2, 2, 0, false},
                        Case{{8, 16, 23, 23}, 3, 2, 1, true}, Case{{4, 16, 25, 25}, 3, 1, 1, false},
                        Case{{8, 16, 24, 24}, 5, 3, 2, true}}) {
    DYNAMIC_SECTION("shape " << fmt::format("{}", c.shape) << " kernel " << c.k << " stride " << c.s << " padding "
                             << c.p << " ceil_mode " << c.ceil_mode) {
      Generator g(1);
      // Three distinct values: nearly every window has tied maxima.
      Tensor x = randint(0, 3, c.shape, &g).to(DType::Float32) - 5.0;
      const auto p = pool_params(c.k, c.s, c.p, c.ceil_mode);
      auto fast = run_max_pool(x, p, Backend::Fast, true), ref = run_max_pool(x, p, Backend::Reference, false);
      CHECK(same(fast.out, ref.out));
      CHECK(same(fast.grad, ref.grad));
    }
  }
}

TEST_CASE("max_pool2d fast path propagates NaN and handles -inf windows like the reference", "[backend][pool]") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float lowest = std::numeric_limits<float>::lowest();
  Generator g(2);
  const auto p = pool_params(3, 2, 1, true);
  SECTION("NaN inputs (the fast path falls back to kern's loops)") {
    Tensor x = randn({4, 16, 13, 13}, DType::Float32, &g);
    x.select(0, 1).select(0, 3).select(0, 4).select(0, 5).fill_(nan);
    x.select(0, 2).select(0, 0).select(0, 0).select(0, 0).fill_(nan);
    auto fast = run_max_pool(x, p, Backend::Fast, false), ref = run_max_pool(x, p, Backend::Reference, false);
    CHECK(std::isnan(fast.out.select(0, 2).select(0, 0).select(0, 0).select(0, 0).item()));
    CHECK(same(fast.out, ref.out));
    CHECK(same(fast.grad, ref.grad));
  }
  SECTION("windows of only -inf or -FLT_MAX (oneDNN's starting value)") {
    Tensor x = randn({4, 16, 13, 13}, DType::Float32, &g);
    x.select(0, 0).select(0, 1).fill_(-inf);            // a whole plane of -inf
    x.select(0, 1).select(0, 2).narrow(0, 0, 3).fill_(lowest);  // rows of -FLT_MAX
    x.select(0, 3).select(0, 5).narrow(1, 4, 3).fill_(-inf);    // -inf columns next to finite values
    auto fast = run_max_pool(x, p, Backend::Fast, true), ref = run_max_pool(x, p, Backend::Reference, false);
    CHECK(kern::max(fast.out.select(0, 0).select(0, 1)).item() == -inf);
    CHECK(same(fast.out, ref.out));
    CHECK(same(fast.grad, ref.grad));
  }
}
