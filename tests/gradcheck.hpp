#pragma once
// Finite-difference gradient checks (float64), first and second order, for the op tests.
//
// gradcheck: for a random cotangent v, compares d<f(x), v>/dx from autograd with central
// differences of <f(x), v> in every input element.
// gradgradcheck: runs gradcheck on x -> d<f(x), v>/dx computed with create_graph, i.e.
// checks the derivative of the backward pass itself.
#include <kern/kern.hpp>

#include <catch2/catch.hpp>

#include <functional>
#include <string>
#include <vector>

namespace kern::testing {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

struct CheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-4;
  uint64_t seed = 1234;
};

inline std::vector<Tensor> leaves(const std::vector<Tensor>& xs) {
  std::vector<Tensor> out;
  for (auto& x : xs) {
    Tensor t = x.detach();
    if (is_floating(t.dtype())) t.requires_grad_(true);
    out.push_back(t);
  }
  return out;
}

/// Returns an empty string on success, else a description of the worst mismatch.
inline std::string gradcheck_report(const Fn& f, const std::vector<Tensor>& inputs, CheckOptions o = {}) {
  Generator gen(o.seed);
  auto xs = leaves(inputs);
  Tensor out = f(xs);
  Tensor v = randn(out.shape(), out.dtype(), &gen);
  std::vector<Tensor> diff_inputs;
  std::vector<size_t> which;
  for (size_t i = 0; i < xs.size(); ++i)
    if (xs[i].requires_grad()) {
      diff_inputs.push_back(xs[i]);
      which.push_back(i);
    }
  // An output that does not depend on the inputs through the graph (e.g. the gradient of a
  // linear op, in gradgradcheck) has a zero derivative.
  std::vector<Tensor> analytic;
  if (out.requires_grad()) {
    analytic = grad({out}, diff_inputs, {v}, {.allow_unused = true});
  } else {
    for (auto& d : diff_inputs) analytic.push_back(zeros_like(d));
  }
  auto objective = [&](const std::vector<Tensor>& ps) {
    NoGradGuard ng;
    return dot(f(ps), v).item();
  };
  std::string report;
  double worst = 0;
  for (size_t k = 0; k < which.size(); ++k) {
    const size_t i = which[k];
    Tensor base = xs[i].detach().contiguous().clone().detach();
    auto an = analytic[k].contiguous().to_vector<double>();
    for (int64_t e = 0; e < base.numel(); ++e) {
      std::vector<Tensor> ps = xs;
      auto perturbed = [&](double delta) {
        Tensor p = base.clone().detach();
        Tensor flat = p.reshape({-1});
        const double old = flat.select(0, e).item();
        flat.narrow(0, e, 1).fill_(old + delta);
        ps[i] = p;
        return objective(ps);
      };
      const double num = (perturbed(o.eps) - perturbed(-o.eps)) / (2 * o.eps);
      const double err = std::abs(num - an[e]);
      const double tol = o.atol + o.rtol * std::abs(num);
      if (err > tol && err - tol > worst) {
        worst = err - tol;
        report = fmt::format("input {} element {}: analytic {} vs numeric {} (|diff| {})", i, e, an[e], num, err);
      }
    }
  }
  return report;
}

inline std::string gradgradcheck_report(const Fn& f, const std::vector<Tensor>& inputs, CheckOptions o = {}) {
  Generator gen(o.seed + 1);
  Tensor v;
  {
    auto probe = leaves(inputs);
    NoGradGuard ng;
    v = randn(f(probe).shape(), inputs[0].dtype(), &gen);
  }
  Fn backward_fn = [&](const std::vector<Tensor>& given) {
    // The numeric path passes plain tensors under NoGradGuard: make them leaves again.
    EnableGradGuard eg;
    std::vector<Tensor> xs;
    for (auto& x : given) {
      if (x.requires_grad() || !is_floating(x.dtype())) {
        xs.push_back(x);
      } else {
        Tensor t = x.detach();
        t.requires_grad_(true);
        xs.push_back(t);
      }
    }
    Tensor out = f(xs);
    std::vector<Tensor> diff;
    for (auto& x : xs)
      if (x.requires_grad()) diff.push_back(x);
    if (diff.empty() || !out.requires_grad()) return zeros({1}, inputs[0].dtype());
    auto g = grad({out}, diff, {v}, {.create_graph = true, .allow_unused = true});
    std::vector<Tensor> flat;
    for (auto& t : g) flat.push_back(t.reshape({-1}));
    return cat(flat, 0);
  };
  return gradcheck_report(backward_fn, inputs, o);
}

}  // namespace kern::testing

#define KERN_GRADCHECK(f, inputs, ...)                                              \
  do {                                                                              \
    auto kern_report_ = ::kern::testing::gradcheck_report(f, inputs, ##__VA_ARGS__); \
    INFO(kern_report_);                                                             \
    REQUIRE(kern_report_.empty());                                                  \
  } while (0)

#define KERN_GRADGRADCHECK(f, inputs, ...)                                              \
  do {                                                                                  \
    auto kern_report_ = ::kern::testing::gradgradcheck_report(f, inputs, ##__VA_ARGS__); \
    INFO(kern_report_);                                                                 \
    REQUIRE(kern_report_.empty());                                                      \
  } while (0)
