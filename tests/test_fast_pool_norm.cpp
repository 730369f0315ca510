// The oneDNN pooling and batch_norm forwards (framework/backend/dnnl_pool.cpp, dnnl_norm.cpp)
// on inputs the op table cannot hold (finite differences need distinct values): ties, NaN and
// -inf for max_pool2d, whose fast path must reproduce kern's first-maximum indices exactly,
// and the oneDNN batch_norm kernel with its batch statistics (called directly: batch_norm
// does not route to it while kOneDnnBatchNorm in framework/ops/norm.cpp is off).
#include "gradcheck.hpp"

#include "../framework/backend/backend.hpp"

#include <cmath>
#include <limits>

using namespace kern;

namespace {

// Values and d<max_pool2d(x), v>/dx (which lands on the recorded indices) on one backend.
struct PoolRun {
  Tensor out, grad;
};
PoolRun run_max_pool(const Tensor& x32, const Pool2dParams& p, Backend b) {
  BackendGuard guard(b);
  Tensor x = x32.detach();
  x.requires_grad_(true);
  Tensor y = max_pool2d(x, p);
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
      auto fast = run_max_pool(x, p, Backend::Fast), ref = run_max_pool(x, p, Backend::Reference);
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
    auto fast = run_max_pool(x, p, Backend::Fast), ref = run_max_pool(x, p, Backend::Reference);
    CHECK(std::isnan(fast.out.select(0, 2).select(0, 0).select(0, 0).select(0, 0).item()));
    CHECK(same(fast.out, ref.out));
    CHECK(same(fast.grad, ref.grad));
  }
  SECTION("windows of only -inf or -FLT_MAX (oneDNN's starting value)") {
    Tensor x = randn({4, 16, 13, 13}, DType::Float32, &g);
    x.select(0, 0).select(0, 1).fill_(-inf);            // a whole plane of -inf
    x.select(0, 1).select(0, 2).narrow(0, 0, 3).fill_(lowest);  // rows of -FLT_MAX
    x.select(0, 3).select(0, 5).narrow(1, 4, 3).fill_(-inf);    // -inf columns next to finite values
    auto fast = run_max_pool(x, p, Backend::Fast), ref = run_max_pool(x, p, Backend::Reference);
    CHECK(kern::max(fast.out.select(0, 0).select(0, 1)).item() == -inf);
    CHECK(same(fast.out, ref.out));
    CHECK(same(fast.grad, ref.grad));
  }
}

TEST_CASE("batch_norm fast path: batch statistics and running-stat update match the reference", "[backend][norm]") {
  Generator g(4);
  Tensor x = randn({6, 5, 7, 9}, DType::Float32, &g) * 3.0 + 2.0;
  Tensor w = randn({5}, DType::Float32, &g), b = randn({5}, DType::Float32, &g);
  auto run = [&](Backend be) {
    BackendGuard guard(be);
    Tensor rm = full({5}, 0.5), rv = full({5}, 2.0);
    Tensor y = batch_norm(x, rm, rv, w, b, true, 0.3, 1e-3);
    return std::vector<Tensor>{y, rm, rv};
  };
  auto fast = run(Backend::Fast), ref = run(Backend::Reference);
  for (size_t i = 0; i < fast.size(); ++i) {
    INFO("result " << i << " (output, running_mean, running_var)");
    CHECK(max_abs_diff(fast[i], ref[i]) <= 1e-4 * std::max(1.0, max_abs_diff(ref[i], zeros_like(ref[i]))));
  }
}

TEST_CASE("oneDNN batch_norm training forward matches the reference op and its batch statistics", "[backend][norm]") {
  Generator g(5);
  for (const Shape& shape : {Shape{6, 5, 7, 9}, Shape{16, 8}, Shape{2, 3, 11}}) {
    DYNAMIC_SECTION("shape " << fmt::format("{}", shape)) {
      const int64_t N = shape[0], C = shape[1], S = shape.numel() / (N * C);
      Tensor x = randn(shape, DType::Float32, &g) * 3.0 + 2.0;
      Tensor w = randn({C}, DType::Float32, &g), b = randn({C}, DType::Float32, &g);
      for (int affine = 0; affine < 2; ++affine) {
        INFO("affine " << affine);
        Tensor y = empty(shape, DType::Float32), m = empty({C}, DType::Float32), v = empty({C}, DType::Float32);
        backend::batch_norm_train_fast(x.data_ptr<float>(), affine ? w.data_ptr<float>() : nullptr,
                                       affine ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(), m.data_ptr<float>(),
                                       v.data_ptr<float>(), N, C, S, 1e-3f);
        BackendGuard guard(Backend::Reference);
        Tensor ref = affine ? batch_norm(x, {}, {}, w, b, true, 0.1, 1e-3) : batch_norm(x, {}, {}, {}, {}, true, 0.1, 1e-3);
        Tensor xs = x.reshape({N, C, S});
        CHECK(max_abs_diff(y, ref) <= 1e-4 * std::max(1.0, max_abs_diff(ref, zeros_like(ref))));
        CHECK(max_abs_diff(m, mean(xs, {0, 2})) <= 1e-5 * 10);
        CHECK(max_abs_diff(v, var(xs, {0, 2}, 0)) <= 1e-4 * 10);
      }
    }
  }
}
