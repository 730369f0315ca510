// tools::linearize: f_lin(x; theta) = f(x; theta0) + J(x; theta0)(theta - theta0), checked in
// float64 against the explicit Jacobian (kern::jacobian, contracted in plain loops), finite
// differences, and gradient-descent / Adam trajectories computed independently.
#include <kern/functional.hpp>
#include <kern/kern.hpp>
#include <kern/nn/functional_call.hpp>
#include <kern/optim/optim.hpp>
#include <kern/tools/limits/limits.hpp>
#include <kern/tools/linearize.hpp>
#include <kern/tools/ntk.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

using namespace kern;

namespace {

std::vector<double> vec(const Tensor& t) {
  Tensor c = t.detach().to(DType::Float64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// [N, 3] -> [N, 2], tanh: curved in its parameters, so f_lin != f away from theta0.
std::shared_ptr<nn::Module> mlp(uint64_t seed) {
  manual_seed(seed);
  auto m = std::make_shared<nn::Sequential>(nn::Linear(3, 5), nn::Tanh(), nn::Linear(5, 2));
  m->to(DType::Float64);
  return m;
}

// The model's parameters (in named_parameters order) and names.
struct Flat {
  std::vector<std::string> names;
  std::vector<Tensor> params;
};
Flat flat(const nn::Module& m) {
  Flat f;
  for (auto& [n, p] : m.named_parameters()) f.names.push_back(n), f.params.push_back(p.detach().clone());
  return f;
}

// The Jacobian of x -> model(x; ps) at ps, as one row-major [O_total, P_total] matrix
// (O_total = outputs of the batch, P_total = all parameter entries in order).
struct Jac {
  std::vector<double> j;
  int64_t rows = 0, cols = 0;
};
Jac jacobian_of(const std::shared_ptr<nn::Module>& model, const Flat& f, const Tensor& x) {
  TensorFn fn = [&](const std::vector<Tensor>& ps) {
    nn::StateDict sub;
    for (size_t i = 0; i < ps.size(); ++i) sub.emplace_back(f.names[i], ps[i]);
    return nn::functional_call(*model, sub, x);
  };
  auto blocks = kern::jacobian(fn, f.params);
  Jac J;
  J.rows = blocks[0].numel() / f.params[0].numel();
  for (auto& p : f.params) J.cols += p.numel();
  J.j.assign(J.rows * J.cols, 0.0);
  int64_t off = 0;
  for (size_t b = 0; b < blocks.size(); ++b) {
    const int64_t pn = f.params[b].numel();
    auto v = vec(blocks[b]);  // [rows, pn]
    for (int64_t r = 0; r < J.rows; ++r)
      for (int64_t c = 0; c < pn; ++c) J.j[r * J.cols + off + c] = v[r * pn + c];
    off += pn;
  }
  return J;
}

std::vector<double> concat(const std::vector<Tensor>& ts) {
  std::vector<double> out;
  for (auto& t : ts) {
    auto v = vec(t);
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

std::vector<double> matvec(const Jac& J, const std::vector<double>& d) {  // J d
  std::vector<double> out(J.rows, 0.0);
  for (int64_t r = 0; r < J.rows; ++r)
    for (int64_t c = 0; c < J.cols; ++c) out[r] += J.j[r * J.cols + c] * d[c];
  return out;
}

std::vector<double> tmatvec(const Jac& J, const std::vector<double>& g) {  // J^T g
  std::vector<double> out(J.cols, 0.0);
  for (int64_t r = 0; r < J.rows; ++r)
    for (int64_t c = 0; c < J.cols; ++c) out[c] += J.j[r * J.cols + c] * g[r];
  return out;
}

// Sets the linearized module's parameters to theta0 + a * d (d given per parameter).
void set_theta(tools::Linearized& lin, const Flat& f0, const std::vector<Tensor>& d, double a) {
  NoGradGuard ng;
  auto own = lin.named_parameters();
  for (size_t i = 0; i < own.size(); ++i) {
    REQUIRE(own[i].first == f0.names[i]);
    own[i].second.copy_(f0.params[i] + d[i] * a);
  }
}

std::vector<Tensor> random_like(const Flat& f, uint64_t seed) {
  Generator g(seed);
  std::vector<Tensor> out;
  for (auto& p : f.params) out.push_back(randn(p.shape(), DType::Float64, &g));
  return out;
}

}  // namespace

TEST_CASE("linearize: f_lin(theta0) equals f(theta0) and the parameters mirror the model's", "[linearize]") {
  auto model = mlp(1);
  Generator g(7);
  Tensor x = randn({4, 3}, DType::Float64, &g);
  auto lin = tools::linearize(model);
  std::vector<std::string> a, b;
  for (auto& [n, p] : model->named_parameters()) a.push_back(n);
  for (auto& [n, p] : lin->named_parameters()) b.push_back(n);
  CHECK(a == b);
  Tensor y = (*model)(x), yl = (*lin)(x);
  CHECK(yl.shape() == y.shape());
  CHECK(max_abs_diff(vec(yl), vec(y)) <= 1e-14);
  CHECK(max_abs_diff(vec(lin->forward0(x)), vec(y)) == 0.0);
}

TEST_CASE("linearize: f_lin is exactly affine in theta with slope J d", "[linearize]") {
  // also through parameterization multipliers: the NTK-parameterized twin of limits
  namespace L = kern::limits;
  Generator gen(3);
  auto twin = L::serial({L::Dense({.W_std = 1.5, .b_std = 0.1}), L::Erf(), L::Dense({.W_std = 1.5, .b_std = 0.1})})
                  .twin(3, 6, 2, {0, 0}, &gen);
  for (auto model : {mlp(2), twin}) {
    Generator g(11);
    Tensor x = randn({5, 3}, DType::Float64, &g);
    Flat f0 = flat(*model);
    Jac J = jacobian_of(model, f0, x);
    auto d = random_like(f0, 5);
    const auto jd = matvec(J, concat(d));
    const auto y0 = vec((*model)(x));
    auto lin = tools::linearize(model);
    for (double a : {0.5, -2.0, 3.0}) {
      set_theta(*lin, f0, d, a);
      auto yl = vec((*lin)(x));
      std::vector<double> expect(y0.size());
      for (size_t i = 0; i < y0.size(); ++i) expect[i] = y0[i] + a * jd[i];
      CHECK(max_abs_diff(yl, expect) <= 1e-12);
    }
    // the model itself is untouched and is curved: f(theta0 + 3 d) is not f_lin there
    CHECK(max_abs_diff(vec((*model)(x)), y0) == 0.0);
  }
}

TEST_CASE("linearize: gradients are J^T g, match finite differences, and differentiate again", "[linearize]") {
  auto model = mlp(4);
  Generator g(13);
  Tensor x = randn({4, 3}, DType::Float64, &g);
  Flat f0 = flat(*model);
  Jac J = jacobian_of(model, f0, x);
  auto lin = tools::linearize(model);
  set_theta(*lin, f0, random_like(f0, 9), 0.3);  // away from theta0: the gradient must not depend on theta
  Tensor cot = randn({4, 2}, DType::Float64, &g);
  std::vector<Tensor> theta = lin->parameters();

  // backward(): .grad == J^T g
  lin->zero_grad();
  sum((*lin)(x) * cot).backward();
  std::vector<Tensor> grads;
  for (auto& t : theta) grads.push_back(t.grad());
  const auto jtg = tmatvec(J, vec(cot));
  CHECK(max_abs_diff(concat(grads), jtg) <= 1e-12);

  // central differences of <f_lin, g> in every parameter entry (exact up to rounding: affine)
  std::vector<double> fd;
  for (auto& t : theta) {
    for (int64_t k = 0; k < t.numel(); ++k) {
      double vals[2];
      for (int s = 0; s < 2; ++s) {
        NoGradGuard ng;
        Tensor e = t.reshape({-1}).narrow(0, k, 1);
        const double old = e.item();
        e.fill_(old + (s == 0 ? 1e-4 : -1e-4));
        vals[s] = sum((*lin)(x) * cot).item();
        e.fill_(old);
      }
      fd.push_back((vals[0] - vals[1]) / 2e-4);
    }
  }
  CHECK(max_abs_diff(fd, jtg) <= 1e-9);

  // second order: the Hessian of 1/2 ||f_lin - y||^2 is J^T J (the Gauss-Newton matrix of f)
  Tensor y = randn({4, 2}, DType::Float64, &g);
  Tensor r = (*lin)(x) - y;
  auto gr = kern::grad({0.5 * sum(r * r)}, theta, {}, {.create_graph = true});
  auto v = random_like(f0, 21);
  Tensor gv;
  for (size_t i = 0; i < gr.size(); ++i) gv = gv.defined() ? gv + sum(gr[i] * v[i]) : sum(gr[i] * v[i]);
  auto hv = kern::grad({gv}, theta);
  CHECK(max_abs_diff(concat(hv), tmatvec(J, matvec(J, concat(v)))) <= 1e-12);
}

TEST_CASE("linearize: SGD on the linearized MLP follows the affine model's gradient descent", "[linearize]") {
  // MSE (mean over N*O) gradient descent on f0 + J delta, computed from the explicit Jacobian:
  //   delta_{k+1} = delta_k - lr * 2/(N O) J^T (f0 + J delta_k - y)
  auto model = mlp(5);
  Generator g(17);
  Tensor x = randn({6, 3}, DType::Float64, &g), y = randn({6, 2}, DType::Float64, &g);
  Flat f0 = flat(*model);
  Jac J = jacobian_of(model, f0, x);
  const auto y0 = vec((*model)(x)), yt = vec(y);
  const double lr = 0.3;
  std::vector<double> delta(J.cols, 0.0);
  auto lin = tools::linearize(model);
  optim::SGD opt(lin->parameters(), {.lr = lr});
  for (int step = 0; step < 5; ++step) {
    auto jd = matvec(J, delta);
    std::vector<double> res(jd.size());
    for (size_t i = 0; i < res.size(); ++i) res[i] = y0[i] + jd[i] - yt[i];
    auto gr = tmatvec(J, res);
    for (int64_t c = 0; c < J.cols; ++c) delta[c] -= lr * 2.0 / static_cast<double>(res.size()) * gr[c];

    opt.zero_grad();
    mse_loss((*lin)(x), y).backward();
    opt.step();
  }
  auto theta = concat(lin->parameters()), t0 = concat(f0.params);
  for (size_t i = 0; i < t0.size(); ++i) theta[i] -= t0[i];
  CHECK(max_abs_diff(theta, delta) <= 1e-12);
  // the model's own parameters did not move
  CHECK(max_abs_diff(concat(model->parameters()), t0) == 0.0);
}

TEST_CASE("linearize: Adam on a linear model trains exactly like the model (f_lin == f)", "[linearize]") {
  manual_seed(8);
  auto model = std::make_shared<nn::Linear>(4, 3);
  model->to(DType::Float64);
  Generator g(23);
  Tensor x = randn({7, 4}, DType::Float64, &g), y = randn({7, 3}, DType::Float64, &g);
  auto lin = tools::linearize(model);
  optim::Adam a(model->parameters(), {.lr = 0.05}), b(lin->parameters(), {.lr = 0.05});
  for (int step = 0; step < 6; ++step) {
    a.zero_grad();
    mse_loss((*model)(x), y).backward();
    a.step();
    b.zero_grad();
    mse_loss((*lin)(x), y).backward();
    b.step();
  }
  CHECK(max_abs_diff(concat(lin->parameters()), concat(model->parameters())) <= 1e-12);
  CHECK(max_abs_diff(vec((*lin)(x)), vec((*model)(x))) <= 1e-12);
}

TEST_CASE("linearize: the parameterization's records and learning-rate multipliers carry over", "[linearize]") {
  namespace L = kern::limits;
  Generator gen(3);
  auto twin = L::serial({L::Dense({.W_std = 1.5}), L::Relu(), L::Dense({.W_std = 1.5})}).twin(3, 8, 2, {0, 0}, &gen);
  auto lin = tools::linearize(twin);
  auto ga = optim::param_groups(*twin, {.family = optim::Family::SGD});
  auto gb = optim::param_groups(*lin, {.family = optim::Family::SGD});
  REQUIRE(ga.size() == gb.size());
  for (size_t i = 0; i < ga.size(); ++i) {
    CHECK(ga[i].lr_mult == gb[i].lr_mult);
    CHECK(ga[i].params.size() == gb[i].params.size());
  }
}

TEST_CASE("linearize: bad params0 and inputs are errors naming the parameter", "[linearize]") {
  auto model = mlp(6);
  auto own = model->named_parameters();
  nn::StateDict p0(own.begin(), own.end());

  auto wrong_name = p0;
  wrong_name[1].first = "0.bais";
  CHECK_THROWS_WITH(tools::linearize(model, wrong_name),
                    Catch::Contains("0.bais") && Catch::Contains("missing names (1): 0.bias"));

  auto wrong_shape = p0;
  wrong_shape[2].second = zeros({2, 4}, DType::Float64);
  CHECK_THROWS_WITH(tools::linearize(model, wrong_shape),
                    Catch::Contains("2.weight: expected") && Catch::Contains("[2, 5]") && Catch::Contains("[2, 4]"));

  auto wrong_dtype = p0;
  wrong_dtype[0].second = wrong_dtype[0].second.to(DType::Float32);
  CHECK_THROWS_WITH(tools::linearize(model, wrong_dtype), Catch::Contains("0.weight"));

  auto missing = p0;
  missing.pop_back();
  CHECK_THROWS_WITH(tools::linearize(model, missing), Catch::Contains("missing names (1): 2.bias"));

  auto lin = tools::linearize(model, p0);
  Tensor x = zeros({2, 3}, DType::Float64).requires_grad_(true);
  CHECK_THROWS_WITH((*lin)(x), Catch::Contains("Linearized") && Catch::Contains("input"));
  CHECK_THROWS_AS((*lin)(zeros({2, 4}, DType::Float64)), Error);

  // to(dtype) converts theta only: forward names the parameter instead of mixing dtypes
  lin->to(DType::Float32);
  CHECK_THROWS_WITH((*lin)(zeros({2, 3}, DType::Float32)),
                    Catch::Contains("Linearized: parameter '0.weight' is float32") &&
                        Catch::Contains("theta0 and the model are float64"));
}

TEST_CASE("linearize: tools::ntk of the linearized model is the model's NTK at theta0, at any theta",
          "[linearize]") {
  // f_lin is affine in theta, so its tangent kernel J(theta0) J(theta0)^T never moves; the
  // reference is the explicit Jacobian's J J^T, contracted here.
  auto model = mlp(12);
  Generator g(29);
  Tensor x = randn({3, 3}, DType::Float64, &g);
  Flat f0 = flat(*model);
  Jac J = jacobian_of(model, f0, x);
  std::vector<double> jjt(J.rows * J.rows, 0.0);
  for (int64_t a = 0; a < J.rows; ++a)
    for (int64_t b = 0; b < J.rows; ++b)
      for (int64_t c = 0; c < J.cols; ++c) jjt[a * J.rows + b] += J.j[a * J.cols + c] * J.j[b * J.cols + c];
  auto lin = tools::linearize(model);
  set_theta(*lin, f0, random_like(f0, 31), 1.5);
  for (auto method : {tools::NtkMethod::Auto, tools::NtkMethod::Contraction, tools::NtkMethod::Vector}) {
    auto k = vec(tools::ntk(*lin, x, tools::NtkOptions().method(method)));
    CHECK(max_abs_diff(k, jjt) <= 1e-12);
  }
}
