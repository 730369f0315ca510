// PyTorch-made reference values for a tanh MLP (tests/data/mlp_tanh.safetensors, see
// /work/shared/fixtures/README.md): gradients, Hessian-vector products and the empirical NTK.
#include <kern/io/safetensors.hpp>

#include "gradcheck.hpp"

using namespace kern;

namespace {

struct Mlp {
  io::SafetensorsFile file = io::load_safetensors(KERN_TEST_DATA_DIR "/mlp_tanh.safetensors");
  std::vector<std::string> names{"param.0.weight", "param.0.bias", "param.2.weight",
                                 "param.2.bias",   "param.4.weight", "param.4.bias"};
  std::vector<Tensor> params() const {
    std::vector<Tensor> p;
    for (auto& n : names) p.push_back(file.get(n));
    return p;
  }
  static Tensor forward(const std::vector<Tensor>& p, const Tensor& x) {
    Tensor h = tanh(linear(x, p[0], p[1]));
    h = tanh(linear(h, p[2], p[3]));
    return linear(h, p[4], p[5]);
  }
  // 0.5 * mean_n sum_o (f - y)^2
  Tensor mse(const std::vector<Tensor>& p) const {
    Tensor d = forward(p, file.get("x")) - file.get("y");
    return sum(d * d) * (0.5 / static_cast<double>(d.size(0)));
  }
  // mean_n [logsumexp_o f - f_label]
  Tensor ce(const std::vector<Tensor>& p) const {
    Tensor f = forward(p, file.get("x"));
    Tensor picked = gather(f, 1, file.get("labels").reshape({-1, 1})).reshape({-1});
    return mean(logsumexp(f, {1}) - picked);
  }
  Tensor loss(const std::string& which, const std::vector<Tensor>& p) const {
    return which == "mse" ? mse(p) : ce(p);
  }
};

Tensor flat_cat(const std::vector<Tensor>& ts) {
  std::vector<Tensor> f;
  for (auto& t : ts) f.push_back(t.reshape({-1}));
  return cat(f, 0);
}

std::vector<Tensor> unflatten(const Tensor& v, const std::vector<Tensor>& like) {
  std::vector<Tensor> out;
  int64_t at = 0;
  for (auto& t : like) {
    out.push_back(v.narrow(0, at, t.numel()).reshape(t.shape()));
    at += t.numel();
  }
  return out;
}

}  // namespace

TEST_CASE("MLP gradients equal PyTorch's", "[fixture]") {
  Mlp m;
  for (std::string which : {"mse", "ce"}) {
    INFO(which);
    auto p = m.params();
    for (auto& t : p) t.requires_grad_(true);
    Tensor loss = m.loss(which, p);
    REQUIRE(std::abs(loss.item() - m.file.get("loss." + which).item()) < 1e-12);
    Tensor g = flat_cat(grad({loss}, p));
    REQUIRE(max_abs_diff(g, m.file.get("grad." + which)) < 1e-10);
  }
}

TEST_CASE("MLP Hessian-vector products equal PyTorch's Hessian times v", "[fixture]") {
  Mlp m;
  Generator gen(5);
  for (std::string which : {"mse", "ce"}) {
    INFO(which);
    Tensor H = m.file.get("hessian." + which);
    auto p = m.params();
    for (int k = 0; k < 5; ++k) {
      Tensor v = randn({H.size(0)}, DType::Float64, &gen);
      auto fn = [&](const std::vector<Tensor>& ps) { return m.loss(which, ps); };
      auto r = hvp(fn, p, unflatten(v, p));
      REQUIRE(max_abs_diff(flat_cat(r.hvp), matmul(H, v)) < 1e-9);
    }
  }
}

TEST_CASE("MLP empirical NTK from per-output vjps equals PyTorch's", "[fixture][ntk]") {
  Mlp m;
  Tensor x = m.file.get("x").narrow(0, 0, 4);
  auto p = m.params();
  auto fn = [&](const std::vector<Tensor>& ps) { return Mlp::forward(ps, x); };
  // One vjp per (sample, output) cotangent e_{n,o} gives the Jacobian row d f_{n,o} / d theta.
  std::vector<Tensor> rows;
  for (int64_t n = 0; n < 4; ++n)
    for (int64_t o = 0; o < 3; ++o) {
      Tensor e = zeros({4, 3}, DType::Float64);
      e.select(0, n).narrow(0, o, 1).fill_(1.0);
      rows.push_back(flat_cat(vjp(fn, p, e).grads));
    }
  Tensor J = stack(rows, 0);  // [12, P]
  Tensor K = matmul(J, J.t()).reshape({4, 3, 4, 3});
  REQUIRE(max_abs_diff(K, m.file.get("ntk")) < 1e-10);
}
