// Autograd engine: accumulation, grad(), higher order, errors, anomaly mode, functional.
#include "gradcheck.hpp"

using namespace kern;

TEST_CASE("backward accumulates into leaves and grad() returns gradients", "[autograd]") {
  Tensor x = tensor({1.0, 2.0, 3.0}, DType::Float64).requires_grad_();
  Tensor y = (x * x).sum();
  y.backward();
  REQUIRE(max_abs_diff(x.grad(), tensor({2.0, 4.0, 6.0}, DType::Float64)) == 0.0);
  Tensor z = (x * 3.0).sum();
  z.backward();
  REQUIRE(max_abs_diff(x.grad(), tensor({5.0, 7.0, 9.0}, DType::Float64)) == 0.0);
  REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("second time"));
}

TEST_CASE("third derivative of x^4 by repeated create_graph", "[autograd][gradgradcheck]") {
  Tensor x = tensor({1.5}, DType::Float64).requires_grad_();
  Tensor y = pow(x, 4.0).sum();
  Tensor g1 = grad({y}, {x}, {}, {.create_graph = true})[0];
  Tensor g2 = grad({g1.sum()}, {x}, {}, {.create_graph = true})[0];
  Tensor g3 = grad({g2.sum()}, {x})[0];
  REQUIRE(g1.item() == Approx(4 * 1.5 * 1.5 * 1.5));
  REQUIRE(g2.item() == Approx(12 * 1.5 * 1.5));
  REQUIRE(g3.item() == Approx(24 * 1.5));
}

// The engine adds a gradient contribution into the slot's own buffer when nothing else holds
// it (framework/ops/accumulate.hpp). Fan-out with contiguous, permuted (strided) and shared
// (add's backward hands one tensor to both inputs) contributions: the result equals the closed
// form, equals the create_graph run (always out of place) bit for bit, and no tensor the
// caller holds is modified.
TEST_CASE("gradient accumulation in place equals the out-of-place sums", "[autograd]") {
  Generator gen(4);
  Tensor x = randn({3, 4, 5}, DType::Float64, &gen).requires_grad_();
  Tensor w = randn({5, 3, 4}, DType::Float64, &gen);
  auto f = [&] {
    Tensor h = x * 2.0;                                   // one intermediate used four times
    Tensor p = h.permute({2, 0, 1});                      // its gradient arrives permuted
    return (h * h).sum() + (p * w).sum() + (h + h).sum() + (h * 3.0).sum();
  };
  Tensor go = scalar_tensor(1.5, DType::Float64);
  const Tensor go_before = go.clone();
  Tensor g_fast = grad({f()}, {x}, {go})[0];
  Tensor g_graph = grad({f()}, {x}, {go}, {.create_graph = true})[0];
  // d/dx: 2 * (2h + w^T + 2 + 3) with h = 2x, times go
  Tensor expected = (x * 8.0 + w.permute({1, 2, 0}) * 2.0 + 10.0) * 1.5;
  REQUIRE(max_abs_diff(g_fast, expected) <= 1e-12);
  REQUIRE(max_abs_diff(g_fast, g_graph.detach()) == 0.0);
  REQUIRE(max_abs_diff(go, go_before) == 0.0);
  // a retained intermediate gradient and a second pass are unaffected
  Tensor h = x * 2.0;
  Tensor y = (h * h).sum() + (h * 3.0).sum();
  auto gs = grad({y}, {h, x}, {}, {.retain_graph = true});
  Tensor gh = gs[0].clone();
  auto gs2 = grad({y}, {h, x});
  REQUIRE(max_abs_diff(gs[0], gh) == 0.0);
  REQUIRE(max_abs_diff(gs2[1], gs[1]) == 0.0);
  REQUIRE(max_abs_diff(gs[1], (h.detach() * 2.0 + 3.0) * 2.0) <= 1e-12);
}

TEST_CASE("broadcast gradients are reduced to input shapes", "[autograd]") {
  Tensor a = randn({3, 1}, DType::Float64).requires_grad_();
  Tensor b = randn({4}, DType::Float64).requires_grad_();
  (a * b).sum().backward();
  REQUIRE(a.grad().shape() == Shape{3, 1});
  REQUIRE(b.grad().shape() == Shape{4});
  REQUIRE(a.grad().select(0, 0).item() == Approx(b.sum().item()));
}

TEST_CASE("grad() of non-leaf targets, unused inputs and no_grad", "[autograd][errors]") {
  Tensor x = randn({5}, DType::Float64).requires_grad_();
  Tensor h = x * 2.0;
  Tensor y = (h * h).sum();
  auto g = grad({y}, {h}, {}, {.retain_graph = true});
  REQUIRE(max_abs_diff(g[0], h.detach() * 2.0) < 1e-12);
  Tensor unused = randn({2}, DType::Float64).requires_grad_();
  REQUIRE_THROWS_WITH(grad({y}, {unused}, {}, {.retain_graph = true}), Catch::Contains("not used"));
  REQUIRE(grad({y}, {unused}, {}, {.retain_graph = true, .allow_unused = true})[0].sum().item() == 0.0);
  {
    NoGradGuard ng;
    REQUIRE_FALSE((x * 2.0).requires_grad());
  }
  REQUIRE_THROWS_WITH(grad({(x * 2.0)}, {x}), Catch::Contains("grad_output is required"));
}

TEST_CASE("anomaly mode names the op that produced NaN", "[autograd][errors]") {
  AnomalyGuard guard;
  Tensor x = tensor({-1.0, 4.0}, DType::Float64).requires_grad_();
  REQUIRE_THROWS_WITH(log(x), Catch::Contains("anomaly") && Catch::Contains("log"));
  Tensor z = tensor({0.0}, DType::Float64).requires_grad_();
  Tensor s = sqrt(z);  // forward is finite (0); backward divides by 0
  REQUIRE_THROWS_WITH(s.sum().backward(), Catch::Contains("backward of op 'sqrt'") && Catch::Contains("NaN/Inf"));
}

TEST_CASE("functional vjp, jvp, hvp and jacobian agree", "[autograd][functional]") {
  Generator gen(3);
  Tensor W = randn({3, 4}, DType::Float64, &gen);
  TensorFn f = [&](const std::vector<Tensor>& p) { return tanh(matmul(W, p[0])); };
  Tensor x = randn({4}, DType::Float64, &gen), t = randn({4}, DType::Float64, &gen);
  Tensor J = jacobian(f, {x})[0];
  REQUIRE(J.shape() == Shape{3, 4});
  // J against its closed form diag(1 - tanh^2) W.
  Tensor y = tanh(matmul(W, x));
  Tensor Jref = (1.0 - y * y).unsqueeze(1) * W;
  REQUIRE(max_abs_diff(J, Jref) < 1e-12);
  auto jv = jvp(f, {x}, {t});
  REQUIRE(max_abs_diff(jv.tangent_out, matmul(Jref, t)) < 1e-12);
  Tensor u = randn({3}, DType::Float64, &gen);
  auto vj = vjp(f, {x}, u);
  REQUIRE(max_abs_diff(vj.grads[0], matmul(u, Jref)) < 1e-12);
  TensorFn scalar = [&](const std::vector<Tensor>& p) { return f(p).pow(2.0).sum(); };
  Tensor H = hessian(scalar, x);
  auto hv = hvp(scalar, {x}, {t});
  REQUIRE(max_abs_diff(hv.hvp[0], matmul(H, t)) < 1e-10);
  REQUIRE(max_abs_diff(H, H.t()) < 1e-10);
}
