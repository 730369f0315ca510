// kern::limits elementwise layers: ABRelu (Relu, LeakyRelu), Erf, Gelu. Each kernel map is
// the closed form of E[phi(u) phi(v)] and E[phi'(u) phi'(v)] for (u, v) ~ N(0, [[v1, k],
// [k, v2]]) (see limits.hpp), next to its finite twin.
#include "internal.hpp"

#include <kern/nn/activation.hpp>
#include <kern/nn/container.hpp>
#include <kern/ops.hpp>

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <numbers>

namespace kern::limits {
namespace {

constexpr double kPi = std::numbers::pi;

void require_gaussian(const Kernel& k, const std::string& op) {
  KERN_CHECK(k.is_gaussian, "limits::", op, ": the kernel maps of elementwise layers need "
             "Gaussian inputs (the output of a Dense or Conv, possibly pooled or normalized); "
             "put a Dense/Conv before it");
}

// ---- ABRelu(a, b) = a min(x, 0) + b max(x, 0): arc-cosine kernels (Cho & Saul 2009)
class ABReluImpl : public LayerImpl {
 public:
  ABReluImpl(double a, double b) : a_(a), b_(b) {}
  std::string name() const override { return fmt::format("ABRelu({}, {})", a_, b_); }
  void apply(Kernel& k) const override {
    require_gaussian(k, name());
    const double a = a_, b = b_;
    const double factor = (a - b) * (a - b) / (2 * kPi), mean_sq = (a * a + b * b) / 2;
    detail::map_entries(k, [=](double k12, double v1, double v2, double* kdot) {
      // (r - k)(r + k), not r^2 - k^2: exact 0 for identical inputs (sqrt(fl(v^2)) == v), where
      // an FMA-contracted v1 v2 - k^2 leaves the rounding error of k^2 (theta ~ 1e-8)
      const double r = std::sqrt(v1 * v2);
      const double s = std::sqrt(std::max((r - k12) * (r + k12), 0.0));
      const double angle = detail::atan2_vec(s, k12);  // unconditional: the loop vectorizes
      const double theta = ((s == 0.0) & (k12 == 0.0)) ? kPi / 2 : angle;
      *kdot = mean_sq - factor * theta;
      return factor * s + *kdot * k12;
    });
    k.is_gaussian = false;
  }
  std::shared_ptr<nn::Module> twin(TwinShape&, TwinContext&) const override {
    const double a = a_, b = b_;
    if (a == 0.0 && b == 1.0) return std::make_shared<nn::ReLU>();
    return std::make_shared<nn::Functional>(
        [a, b](const Tensor& x) { return relu(x) * b - relu(-x) * a; }, name());
  }

 private:
  double a_, b_;
};

// ---- Erf(a, b, c) = a erf(b x) + c: Williams' arcsine kernel (1997)
class ErfImpl : public LayerImpl {
 public:
  ErfImpl(double a, double b, double c) : a_(a), b_(b), c_(c) {}
  std::string name() const override { return fmt::format("Erf({}, {}, {})", a_, b_, c_); }
  void apply(Kernel& k) const override {
    require_gaussian(k, name());
    const double a2 = a_ * a_, b2 = b_ * b_, c2 = c_ * c_;
    detail::map_entries(k, [=](double k12, double v1, double v2, double* kdot) {
      const double kk = b2 * k12, prod = (1 + 2 * b2 * v1) * (1 + 2 * b2 * v2);
      const double r = std::sqrt(prod);
      const double root = std::sqrt(std::max((r - 2 * kk) * (r + 2 * kk), 0.0));
      *kdot = a2 * b2 * 4 / (kPi * root);
      return a2 * 2 / kPi * detail::atan2_vec(2 * kk, root) + c2;
    });
    k.is_gaussian = false;
  }
  std::shared_ptr<nn::Module> twin(TwinShape&, TwinContext&) const override {
    const double a = a_, b = b_, c = c_;
    return std::make_shared<nn::Functional>(
        [a, b, c](const Tensor& x) { return erf(x * b) * a + c; }, name());
  }

 private:
  double a_, b_, c_;
};

// ---- Gelu (exact: x Phi(x)): closed form of Tsuchida et al. (arXiv:2002.08517), as nt's
class GeluImpl : public LayerImpl {
 public:
  std::string name() const override { return "Gelu"; }
  void apply(Kernel& k) const override {
    require_gaussian(k, name());
    detail::map_entries(k, [](double k12, double v1, double v2, double* kdot) {
      const double prod = v1 * v2, prod1 = (v1 + 1) * (v2 + 1);
      const double r = std::sqrt(prod1);
      const double delta_sq = (r - k12) * (r + k12), delta = std::sqrt(std::max(delta_sq, 0.0));
      const double angle = detail::atan2_vec(k12, delta);
      const double nngp =
          ((k12 * k12 + prod * delta_sq) / (prod1 * delta) + k12 * angle) / (2 * kPi) + 0.25 * k12;
      const double first =
          (1 / delta_sq + (1 - prod) / prod1 + 1) * k12 / delta / (2 * kPi);
      *kdot = first + 0.25 + angle / (2 * kPi);
      return nngp;
    });
    k.is_gaussian = false;
  }
  std::shared_ptr<nn::Module> twin(TwinShape&, TwinContext&) const override {
    return std::make_shared<nn::GELU>();
  }
};

}  // namespace

Layer Relu() { return ABRelu(0.0, 1.0); }
Layer LeakyRelu(double alpha) { return ABRelu(alpha, 1.0); }
Layer ABRelu(double a, double b) { return Layer(std::make_shared<ABReluImpl>(a, b)); }
Layer Erf(double a, double b, double c) { return Layer(std::make_shared<ErfImpl>(a, b, c)); }
Layer Gelu() { return Layer(std::make_shared<GeluImpl>()); }

}  // namespace kern::limits
