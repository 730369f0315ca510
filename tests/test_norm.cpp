// Softmax family, layer_norm, batch_norm and dropout: values from the definitions, first and
// second derivatives by finite differences, running statistics, errors.
#include <omp.h>

#include <cmath>

#include "backend_paths.hpp"
#include "gradcheck.hpp"

using namespace kern;
using kern::testing::Fn;

namespace {

Tensor f64(std::initializer_list<double> v, const Shape& shape) {
  return tensor(v, DType::Float64).reshape(shape);
}

Tensor rnd(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return randn(s, DType::Float64, &g);
}

}  // namespace

// ---------------------------------------------------------------- softmax / log_softmax

TEST_CASE("softmax and log_softmax of [0, ln 2, ln 3] are [1, 2, 3] / 6", "[activation]") {
  Tensor x = tensor({0.0, std::log(2.0), std::log(3.0)}, DType::Float64);
  Tensor want = tensor({1.0 / 6, 2.0 / 6, 3.0 / 6}, DType::Float64);
  REQUIRE(max_abs_diff(softmax(x, 0), want) < 1e-15);
  REQUIRE(max_abs_diff(log_softmax(x, -1), log(want)) < 1e-15);
  // Shift invariance and no overflow at large logits (the max is subtracted).
  Tensor big = x + 1000.0;
  REQUIRE(max_abs_diff(softmax(big, 0), want) < 1e-12);
  REQUIRE(max_abs_diff(log_softmax(big, 0), log(want)) < 1e-12);
  Tensor neg = tensor({-1000.0, 0.0}, DType::Float64);
  REQUIRE(log_softmax(neg, 0).to_vector<double>()[0] == Approx(-1000.0));
}

TEST_CASE("softmax along any dim of a non-contiguous tensor", "[activation]") {
  Tensor x = rnd({3, 4, 5}, 1).transpose(0, 2);  // [5, 4, 3], non-contiguous
  for (int64_t d = 0; d < 3; ++d) {
    Tensor y = softmax(x, d);
    REQUIRE(max_abs_diff(sum(y, {d}), ones(sum(y, {d}).shape(), DType::Float64)) < 1e-14);
    // Definition: exp(x) / sum exp(x).
    Tensor e = exp(x);
    REQUIRE(max_abs_diff(y, e / sum(e, {d}, true)) < 1e-14);
    REQUIRE(max_abs_diff(log_softmax(x, d), x - logsumexp(x, {d}, true)) < 1e-13);
  }
  // float32 agrees with float64.
  Tensor y32 = softmax(x.to(DType::Float32), 1).to(DType::Float64);
  REQUIRE(max_abs_diff(y32, softmax(x, 1)) < 1e-6);
}

TEST_CASE("softmax and log_softmax gradients", "[activation][gradcheck][gradgradcheck]") {
  const std::vector<Tensor> in{rnd({3, 4}, 2)};
  for (int64_t d : {0, 1}) {
    Fn sm = [d](const std::vector<Tensor>& v) { return softmax(v[0], d); };
    Fn lsm = [d](const std::vector<Tensor>& v) { return log_softmax(v[0], d); };
    KERN_GRADCHECK(sm, in);
    KERN_GRADCHECK(lsm, in);
    KERN_GRADGRADCHECK(sm, in);
    KERN_GRADGRADCHECK(lsm, in);
  }
  // Third order through create_graph: d^3/dx^3 of sum(softmax) is zero (sum is constant 1).
  Tensor x = rnd({4}, 3).requires_grad_();
  Tensor w = rnd({4}, 4);
  Tensor g1 = grad({dot(softmax(x, 0), w)}, {x}, {}, {.create_graph = true})[0];
  Tensor g2 = grad({dot(g1, w)}, {x}, {}, {.create_graph = true})[0];
  Tensor g3 = grad({dot(g2, w)}, {x})[0];
  REQUIRE(std::isfinite(g3.sum().item()));
}

TEST_CASE("softmax and log_softmax: oneDNN fast path agrees with the reference (float32)", "[activation][backend]") {
  using testing::Path, testing::Primitive;
  for (const Shape& shape : {Shape{7, 33}, Shape{2, 5, 3, 4}, Shape{1000}, Shape{64, 1}}) {
    Tensor x = rnd(shape, 30).to(DType::Float32) * 4.0;
    for (int64_t d = 0; d < x.dim(); ++d) {
      INFO("shape " << fmt::format("{}", shape) << " dim " << d);
      Tensor fs, fl, rs, rl;
      const auto fast = testing::paths_of([&] {
        fs = softmax(x, d);
        fl = log_softmax(x, d);
      });
      const auto ref = testing::paths_of([&] {
        BackendGuard guard(Backend::Reference);
        rs = softmax(x, d);
        rl = log_softmax(x, d);
      });
      INFO("fast side: " << testing::describe(fast) << "; reference side: " << testing::describe(ref));
      REQUIRE(fast(Primitive::Softmax, Path::Fast) == 2);
      REQUIRE(fast.total(Path::Reference) == 0);
      REQUIRE(ref(Primitive::Softmax, Path::Reference) == 2);
      REQUIRE(ref.total(Path::Fast) == 0);
      REQUIRE(max_abs_diff(fs, rs) < 1e-6);
      REQUIRE(max_abs_diff(fl, rl) < 1e-5);
    }
  }
  // The fast path keeps the reference backward.
  Tensor x = rnd({4, 6}, 31).to(DType::Float32).requires_grad_();
  Tensor g = rnd({4, 6}, 32).to(DType::Float32);
  Tensor gf = grad({softmax(x, 1)}, {x}, {g})[0];
  BackendGuard ref(Backend::Reference);
  REQUIRE(max_abs_diff(gf, grad({softmax(x, 1)}, {x}, {g})[0]) < 1e-6);
}

// ---------------------------------------------------------------- layer_norm

TEST_CASE("layer_norm of [1, 2, 3, 4] from the definition", "[norm]") {
  Tensor x = f64({1, 2, 3, 4, 2, 2, 2, 6}, {2, 4});
  const double eps = 1e-5;
  Tensor y = layer_norm(x, {4}, {}, {}, eps);
  // row 0: mean 2.5, biased var 1.25; row 1: mean 3, var 3.
  const double r0 = 1 / std::sqrt(1.25 + eps), r1 = 1 / std::sqrt(3.0 + eps);
  Tensor want = f64({-1.5 * r0, -0.5 * r0, 0.5 * r0, 1.5 * r0, -r1, -r1, -r1, 3 * r1}, {2, 4});
  REQUIRE(max_abs_diff(y, want) < 1e-14);
  Tensor w = f64({1, 2, 3, 4}, {4}), b = f64({0, 0, 1, -1}, {4});
  Tensor ya = layer_norm(x, {4}, w, b, eps);
  REQUIRE(max_abs_diff(ya, want * w + b) < 1e-14);
  // Two normalized dims: the same as flattening them.
  Tensor x3 = rnd({2, 3, 4}, 5);
  REQUIRE(max_abs_diff(layer_norm(x3, {3, 4}), layer_norm(x3.reshape({2, 12}), {12}).reshape({2, 3, 4})) < 1e-14);
  // float32 agrees with float64.
  REQUIRE(max_abs_diff(layer_norm(x3.to(DType::Float32), {4}).to(DType::Float64), layer_norm(x3, {4})) < 1e-5);
}

TEST_CASE("layer_norm gradients with and without affine", "[norm][gradcheck][gradgradcheck]") {
  const std::vector<Tensor> affine{rnd({2, 3, 4}, 6), rnd({3, 4}, 7), rnd({3, 4}, 8)};
  Fn f_aff = [](const std::vector<Tensor>& v) { return layer_norm(v[0], {3, 4}, v[1], v[2], 1e-5); };
  KERN_GRADCHECK(f_aff, affine);
  KERN_GRADGRADCHECK(f_aff, affine);
  const std::vector<Tensor> plain{rnd({3, 5}, 9)};
  Fn f_plain = [](const std::vector<Tensor>& v) { return layer_norm(v[0], {5}); };
  KERN_GRADCHECK(f_plain, plain);
  KERN_GRADGRADCHECK(f_plain, plain);
  // weight only, non-contiguous input
  const std::vector<Tensor> wonly{rnd({4, 3}, 10), rnd({4}, 11)};
  Fn f_w = [](const std::vector<Tensor>& v) { return layer_norm(v[0].t(), {4}, v[1]); };
  KERN_GRADCHECK(f_w, wonly);
  KERN_GRADGRADCHECK(f_w, wonly);
}

TEST_CASE("layer_norm rejects bad shapes", "[norm][errors]") {
  Tensor x = rnd({2, 3, 4}, 12);
  REQUIRE_THROWS_WITH(layer_norm(x, {3}), Catch::Contains("layer_norm") && Catch::Contains("[3]") &&
                                              Catch::Contains("[2, 3, 4]"));
  REQUIRE_THROWS_WITH(layer_norm(x, {4}, rnd({3}, 1)), Catch::Contains("layer_norm") &&
                                                          Catch::Contains("weight") && Catch::Contains("[3]"));
  REQUIRE_THROWS_AS(layer_norm(x, {1, 2, 3, 4}), Error);
}

TEST_CASE("layer_norm: oneDNN fast path agrees with the reference (float32)", "[norm][backend]") {
  Tensor x = (rnd({6, 5, 48}, 33) * 3.0 + 1.0).to(DType::Float32);
  Tensor w = rnd({48}, 34).to(DType::Float32), b = rnd({48}, 35).to(DType::Float32);
  Tensor w2 = rnd({5, 48}, 36).to(DType::Float32);
  using testing::Path, testing::Primitive;
  Tensor f_aff, f_plain, f_w, f_b;
  const auto fast = testing::paths_of([&] {
    f_aff = layer_norm(x, {48}, w, b, 1e-6), f_plain = layer_norm(x, {48}), f_w = layer_norm(x, {5, 48}, w2);
    f_b = layer_norm(x, {48}, {}, b);
  });
  INFO("fast side: " << testing::describe(fast));
  REQUIRE(fast(Primitive::LayerNorm, Path::Fast) == 4);
  REQUIRE(fast.total(Path::Reference) == 0);
  BackendGuard ref(Backend::Reference);
  const auto before = backend::path_counts();
  REQUIRE(max_abs_diff(f_aff, layer_norm(x, {48}, w, b, 1e-6)) < 1e-5);
  REQUIRE(max_abs_diff(f_plain, layer_norm(x, {48})) < 1e-5);
  REQUIRE(max_abs_diff(f_w, layer_norm(x, {5, 48}, w2)) < 1e-5);
  REQUIRE(max_abs_diff(f_b, layer_norm(x, {48}, {}, b)) < 1e-5);
  const auto ref_paths = backend::path_counts() - before;
  INFO("reference side: " << testing::describe(ref_paths));
  REQUIRE(ref_paths(Primitive::LayerNorm, Path::Reference) == 4);
  REQUIRE(ref_paths.total(Path::Fast) == 0);
}

// ---------------------------------------------------------------- batch_norm

TEST_CASE("batch_norm training step: output and running stats by hand", "[norm]") {
  // N = 2, C = 2, S = 2. Channel 0 holds {1, 3, 5, 7}: mean 4, biased var 5, unbiased 20/3.
  // Channel 1 holds {0, 0, 0, 4}: mean 1, biased var 3, unbiased 4.
  Tensor x = f64({1, 3, 0, 0, 5, 7, 0, 4}, {2, 2, 2});
  Tensor rm = f64({0.5, -1}, {2}), rv = f64({1, 2}, {2});
  Tensor w = f64({2, 1}, {2}), b = f64({0, 1}, {2});
  const double eps = 1e-5, mom = 0.1;
  Tensor y = batch_norm(x, rm, rv, w, b, true, mom, eps);
  const double s0 = 2 / std::sqrt(5 + eps), s1 = 1 / std::sqrt(3 + eps);
  Tensor want = f64({-3 * s0, -1 * s0, -s1 + 1, -s1 + 1, 1 * s0, 3 * s0, -s1 + 1, 3 * s1 + 1}, {2, 2, 2});
  REQUIRE(max_abs_diff(y, want) < 1e-14);
  REQUIRE(max_abs_diff(rm, f64({0.9 * 0.5 + 0.1 * 4, 0.9 * -1 + 0.1 * 1}, {2})) < 1e-15);
  REQUIRE(max_abs_diff(rv, f64({0.9 * 1 + 0.1 * 20.0 / 3, 0.9 * 2 + 0.1 * 4}, {2})) < 1e-15);
  // Eval mode uses (and leaves alone) the running statistics.
  Tensor rm0 = rm.clone(), rv0 = rv.clone();
  Tensor ye = batch_norm(x, rm, rv, w, b, false, mom, eps);
  Tensor want_e = (x - rm0.reshape({2, 1})) / sqrt(rv0.reshape({2, 1}) + eps) * w.reshape({2, 1}) + b.reshape({2, 1});
  REQUIRE(max_abs_diff(ye, want_e) < 1e-14);
  REQUIRE(max_abs_diff(rm, rm0) == 0.0);
  REQUIRE(max_abs_diff(rv, rv0) == 0.0);
  // Without running stats training still normalizes; a 4-D input normalizes per channel.
  Tensor x4 = rnd({3, 2, 4, 5}, 13);
  Tensor y4 = batch_norm(x4, {}, {}, {}, {}, true);
  REQUIRE(max_abs_diff(mean(y4, {0, 2, 3}), zeros({2}, DType::Float64)) < 1e-14);
  REQUIRE(max_abs_diff(var(y4, {0, 2, 3}, 0), ones({2}, DType::Float64)) < 1e-4);
  // float32 agrees with float64.
  Tensor y4f = batch_norm(x4.to(DType::Float32), {}, {}, {}, {}, true).to(DType::Float64);
  REQUIRE(max_abs_diff(y4f, y4) < 1e-5);
}

TEST_CASE("batch_norm gradients in train and eval mode", "[norm][gradcheck][gradgradcheck]") {
  const std::vector<Tensor> in{rnd({3, 2, 4}, 14), rnd({2}, 15), rnd({2}, 16)};
  Fn train = [](const std::vector<Tensor>& v) { return batch_norm(v[0], {}, {}, v[1], v[2], true); };
  KERN_GRADCHECK(train, in);
  KERN_GRADGRADCHECK(train, in);
  // Running stats are updated on every call but must not affect the output or its gradient.
  Tensor rm = zeros({2}, DType::Float64), rv = ones({2}, DType::Float64);
  Fn train_rs = [rm, rv](const std::vector<Tensor>& v) {
    return batch_norm(v[0], rm, rv, v[1], v[2], true, 0.1, 1e-3);
  };
  KERN_GRADCHECK(train_rs, in);
  const std::vector<Tensor> in4{rnd({2, 3, 2, 2}, 17)};
  Fn plain4 = [](const std::vector<Tensor>& v) { return batch_norm(v[0], {}, {}, {}, {}, true); };
  KERN_GRADCHECK(plain4, in4);
  KERN_GRADGRADCHECK(plain4, in4);
  Tensor erm = rnd({2}, 18), erv = exp(rnd({2}, 19));
  Fn eval = [erm, erv](const std::vector<Tensor>& v) { return batch_norm(v[0], erm, erv, v[1], v[2], false); };
  KERN_GRADCHECK(eval, in);
  KERN_GRADGRADCHECK(eval, in);
}

TEST_CASE("batch_norm rejects bad arguments", "[norm][errors]") {
  Tensor x = rnd({4, 3, 2}, 20);
  REQUIRE_THROWS_WITH(batch_norm(x, {}, {}, rnd({2}, 1), {}, true),
                      Catch::Contains("batch_norm") && Catch::Contains("weight") && Catch::Contains("[4, 3, 2]"));
  REQUIRE_THROWS_WITH(batch_norm(x, {}, {}, {}, {}, false), Catch::Contains("batch_norm") && Catch::Contains("eval"));
  REQUIRE_THROWS_WITH(batch_norm(rnd({1, 3}, 2), {}, {}, {}, {}, true),
                      Catch::Contains("batch_norm") && Catch::Contains("more than 1 value"));
  REQUIRE_THROWS_WITH(batch_norm(rnd({4}, 3), {}, {}, {}, {}, true), Catch::Contains("batch_norm") &&
                                                                        Catch::Contains("[4]"));
}

// ---------------------------------------------------------------- dropout

TEST_CASE("dropout: scaled mask, seeded and thread-count independent", "[dropout]") {
  Tensor x = ones({4000}, DType::Float64);
  const double p = 0.3;
  const int threads = get_num_threads();
  Generator g1(42), g2(42);
  set_num_threads(1);
  Tensor a = dropout(x, p, true, &g1);
  set_num_threads(2);
  Tensor b = dropout(x, p, true, &g2);
  set_num_threads(threads);
  REQUIRE(max_abs_diff(a, b) == 0.0);
  auto v = a.to_vector<double>();
  int64_t kept = 0;
  for (double e : v) {
    REQUIRE((e == 0.0 || std::abs(e - 1 / (1 - p)) < 1e-15));
    kept += e != 0.0;
  }
  // 4000 Bernoulli(0.7) draws: mean 2800, std ~29.
  REQUIRE(std::abs(kept - 2800) < 150);
  Generator g3(43);
  REQUIRE(max_abs_diff(dropout(x, p, true, &g3), a) > 0.0);
  // eval and p = 0 are the identity; p = 1 drops everything.
  REQUIRE(max_abs_diff(dropout(x, p, false), x) == 0.0);
  REQUIRE(max_abs_diff(dropout(x, 0.0, true), x) == 0.0);
  REQUIRE(max_abs_diff(dropout(x, 1.0, true), zeros_like(x)) == 0.0);
}

TEST_CASE("dropout gradients", "[dropout][gradcheck][gradgradcheck]") {
  const std::vector<Tensor> in{rnd({3, 5}, 21)};
  Fn f = [](const std::vector<Tensor>& v) {
    Generator g(7);  // the same mask on every call
    return dropout(v[0] * v[0], 0.4, true, &g);
  };
  KERN_GRADCHECK(f, in);
  KERN_GRADGRADCHECK(f, in);
  Tensor x = rnd({6}, 22).requires_grad_();
  Generator g(3);
  Tensor y = dropout(x, 0.5, true, &g);
  Tensor gx = grad({y.sum()}, {x})[0];
  REQUIRE(max_abs_diff(gx, y.detach() / x.detach()) < 1e-14);  // the mask itself
}

TEST_CASE("dropout rejects p outside [0, 1]", "[dropout][errors]") {
  Tensor x = rnd({2, 3}, 23);
  REQUIRE_THROWS_WITH(dropout(x, 1.5, true), Catch::Contains("dropout") && Catch::Contains("1.5") &&
                                                 Catch::Contains("[2, 3]"));
  REQUIRE_THROWS_WITH(dropout(x, -0.1, false), Catch::Contains("dropout"));
}
