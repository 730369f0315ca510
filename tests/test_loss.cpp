// Losses: values from the definitions (torch.nn.functional semantics), first and second
// derivatives for every reduction and label smoothing, errors.
#include <kern/io/safetensors.hpp>

#include <cmath>

#include "gradcheck.hpp"

using namespace kern;
using kern::testing::Fn;

namespace {

Tensor rnd(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return randn(s, DType::Float64, &g);
}

Tensor labels(std::vector<int64_t> v) { return from_vector<int64_t>(v, {static_cast<int64_t>(v.size())}); }

}  // namespace

TEST_CASE("cross_entropy of uniform logits is ln C", "[loss]") {
  Tensor logits = full({4, 7}, 0.3, DType::Float64);
  Tensor t = labels({0, 3, 6, 2});
  REQUIRE(cross_entropy(logits, t).item() == Approx(std::log(7.0)).epsilon(1e-14));
  REQUIRE(cross_entropy(logits, t, 0.0, "sum").item() == Approx(4 * std::log(7.0)).epsilon(1e-14));
  REQUIRE(max_abs_diff(cross_entropy(logits, t, 0.25, "none"), full({4}, std::log(7.0), DType::Float64)) < 1e-14);
}

TEST_CASE("cross_entropy and nll_loss from the definitions", "[loss]") {
  // Row 0: softmax([0, ln 2, ln 3]) = [1, 2, 3] / 6; row 1: softmax([0, 0, ln 2]) = [1, 1, 2] / 4.
  Tensor logits = tensor({0.0, std::log(2.0), std::log(3.0), 0.0, 0.0, std::log(2.0)}, DType::Float64).reshape({2, 3});
  Tensor t = labels({2, 0});
  const double n0 = -std::log(3.0 / 6), n1 = -std::log(1.0 / 4);
  REQUIRE(max_abs_diff(cross_entropy(logits, t, 0.0, "none"), tensor({n0, n1}, DType::Float64)) < 1e-14);
  REQUIRE(cross_entropy(logits, t).item() == Approx((n0 + n1) / 2).epsilon(1e-14));
  REQUIRE(cross_entropy(logits, t, 0.0, "sum").item() == Approx(n0 + n1).epsilon(1e-14));
  // Label smoothing eps: (1 - eps) * nll + eps * mean_c(-log p_c).
  const double eps = 0.2;
  const double u0 = -(std::log(1.0 / 6) + std::log(2.0 / 6) + std::log(3.0 / 6)) / 3;
  const double u1 = -(std::log(1.0 / 4) + std::log(1.0 / 4) + std::log(2.0 / 4)) / 3;
  const double s0 = (1 - eps) * n0 + eps * u0, s1 = (1 - eps) * n1 + eps * u1;
  REQUIRE(max_abs_diff(cross_entropy(logits, t, eps, "none"), tensor({s0, s1}, DType::Float64)) < 1e-14);
  REQUIRE(cross_entropy(logits, t, eps).item() == Approx((s0 + s1) / 2).epsilon(1e-14));
  // nll_loss picks -log_probs[i, t_i]; cross_entropy = nll_loss(log_softmax).
  Tensor lp = tensor({-1.0, -2.0, -3.0, -4.0, -5.0, -6.0}, DType::Float64).reshape({2, 3});
  REQUIRE(max_abs_diff(nll_loss(lp, t, "none"), tensor({3.0, 4.0}, DType::Float64)) == 0.0);
  REQUIRE(nll_loss(lp, t).item() == 3.5);
  REQUIRE(nll_loss(lp, t, "sum").item() == 7.0);
  Tensor x = rnd({5, 4}, 1);
  Tensor tt = labels({3, 0, 1, 1, 2});
  REQUIRE(max_abs_diff(cross_entropy(x, tt), nll_loss(log_softmax(x, 1), tt)) < 1e-15);
  // float32 (oneDNN logsoftmax on the fast backend) agrees to float precision.
  REQUIRE(std::abs(cross_entropy(x.to(DType::Float32), tt).item() - cross_entropy(x, tt).item()) < 1e-5);
}

TEST_CASE("cross_entropy, its gradient and Hessian equal PyTorch's on the tanh MLP fixture", "[loss][fixture]") {
  // tests/data/mlp_tanh.safetensors: loss.ce = F.cross_entropy(mlp(x), labels) (mean), grad.ce
  // and hessian.ce over all parameters flattened in order (see /work/shared/fixtures/README.md).
  auto file = io::load_safetensors(KERN_TEST_DATA_DIR "/mlp_tanh.safetensors");
  std::vector<Tensor> p;
  for (const char* n : {"param.0.weight", "param.0.bias", "param.2.weight", "param.2.bias", "param.4.weight",
                        "param.4.bias"})
    p.push_back(file.get(n).requires_grad_(true));
  Tensor x = file.get("x"), y = file.get("labels");
  Tensor f = linear(tanh(linear(tanh(linear(x, p[0], p[1])), p[2], p[3])), p[4], p[5]);
  Tensor loss = cross_entropy(f, y);
  REQUIRE(std::abs(loss.item() - file.get("loss.ce").item()) < 1e-12);
  auto g = grad({loss}, p, {}, {.create_graph = true});
  std::vector<Tensor> flat;
  for (auto& t : g) flat.push_back(t.reshape({-1}));
  Tensor gflat = cat(flat, 0);
  REQUIRE(max_abs_diff(gflat.detach(), file.get("grad.ce")) < 1e-10);
  // One Hessian-vector product through cross_entropy's second derivative.
  Generator gen(3);
  Tensor v = randn(gflat.shape(), DType::Float64, &gen);
  auto hv = grad({dot(gflat, v)}, p);
  std::vector<Tensor> hflat;
  for (auto& t : hv) hflat.push_back(t.reshape({-1}));
  REQUIRE(max_abs_diff(cat(hflat, 0), matmul(file.get("hessian.ce"), v)) < 1e-9);
}

TEST_CASE("mse_loss from the definition", "[loss]") {
  Tensor a = tensor({1.0, 2.0, 4.0}, DType::Float64), b = tensor({0.0, 4.0, 1.0}, DType::Float64);
  REQUIRE(mse_loss(a, b).item() == Approx((1.0 + 4.0 + 9.0) / 3).epsilon(1e-15));
  REQUIRE(mse_loss(a, b, "sum").item() == 14.0);
  REQUIRE(max_abs_diff(mse_loss(a, b, "none"), tensor({1.0, 4.0, 9.0}, DType::Float64)) == 0.0);
}

TEST_CASE("loss gradients for every reduction", "[loss][gradcheck][gradgradcheck]") {
  Tensor t = labels({1, 0, 3});
  for (const char* red : {"mean", "sum", "none"}) {
    for (double eps : {0.0, 0.1}) {
      Fn ce = [t, red, eps](const std::vector<Tensor>& v) { return cross_entropy(v[0], t, eps, red); };
      const std::vector<Tensor> in{rnd({3, 4}, 2)};
      KERN_GRADCHECK(ce, in);
      KERN_GRADGRADCHECK(ce, in);
    }
    Fn nll = [t, red](const std::vector<Tensor>& v) { return nll_loss(v[0], t, red); };
    KERN_GRADCHECK(nll, {rnd({3, 4}, 3)});
    Fn mse = [red](const std::vector<Tensor>& v) { return mse_loss(v[0], v[1], red); };
    const std::vector<Tensor> pair{rnd({2, 3}, 4), rnd({2, 3}, 5)};
    KERN_GRADCHECK(mse, pair);
    KERN_GRADGRADCHECK(mse, pair);
  }
  // Composite through a layer: cross_entropy(x W^T) second order in W.
  Tensor x = rnd({3, 5}, 6);
  Fn lin = [x, t](const std::vector<Tensor>& v) { return cross_entropy(linear(x, v[0]), t, 0.05); };
  KERN_GRADGRADCHECK(lin, {rnd({4, 5}, 7)});
}

TEST_CASE("losses reject bad targets and reductions", "[loss][errors]") {
  Tensor x = rnd({3, 4}, 8);
  Tensor t = labels({0, 1, 2});
  REQUIRE_THROWS_WITH(cross_entropy(x, t.to(DType::Float64)),
                      Catch::Contains("cross_entropy") && Catch::Contains("int64") && Catch::Contains("[3]") &&
                          Catch::Contains("[3, 4]"));
  REQUIRE_THROWS_WITH(cross_entropy(x, labels({0, 1})),
                      Catch::Contains("cross_entropy") && Catch::Contains("[2]") && Catch::Contains("[3, 4]"));
  REQUIRE_THROWS_WITH(cross_entropy(x, labels({0, 4, 1})),
                      Catch::Contains("cross_entropy") && Catch::Contains("label 4") && Catch::Contains("C = 4"));
  REQUIRE_THROWS_WITH(cross_entropy(x, labels({0, -1, 1})),
                      Catch::Contains("cross_entropy") && Catch::Contains("label -1"));
  REQUIRE_THROWS_WITH(cross_entropy(x, t, 0.0, "avg"),
                      Catch::Contains("cross_entropy") && Catch::Contains("reduction") && Catch::Contains("avg"));
  REQUIRE_THROWS_WITH(cross_entropy(rnd({4}, 1), labels({0})),
                      Catch::Contains("cross_entropy") && Catch::Contains("[4]"));
  REQUIRE_THROWS_WITH(cross_entropy(x, t, 1.5), Catch::Contains("label_smoothing"));
  REQUIRE_THROWS_WITH(nll_loss(x, labels({0, 9, 1})), Catch::Contains("nll_loss") && Catch::Contains("label 9"));
  REQUIRE_THROWS_WITH(nll_loss(x, t, "Mean"), Catch::Contains("nll_loss") && Catch::Contains("Mean"));
  REQUIRE_THROWS_WITH(mse_loss(x, rnd({3, 1}, 2)),
                      Catch::Contains("mse_loss") && Catch::Contains("[3, 4]") && Catch::Contains("[3, 1]"));
  REQUIRE_THROWS_WITH(mse_loss(x, x, "total"), Catch::Contains("mse_loss") && Catch::Contains("total"));
}
