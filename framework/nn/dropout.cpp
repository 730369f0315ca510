// Dropout, DropPath.
#include <kern/nn/dropout.hpp>
#include <kern/ops/random.hpp>

namespace kern::nn {

Dropout::Dropout(const DropoutOptions& options) : options_(options) {
  KERN_CHECK(options.p() >= 0.0 && options.p() <= 1.0, "Dropout: p must be in [0, 1], got ",
             options.p());
}

Tensor Dropout::forward(const Tensor& x) {
  return dropout(x, options_.p(), is_training(), options_.generator());
}

std::string Dropout::extra_repr() const { return fmt::format("p={}", options_.p()); }

DropPath::DropPath(const DropPathOptions& options) : options_(options) {
  KERN_CHECK(options.drop_prob() >= 0.0 && options.drop_prob() <= 1.0,
             "DropPath: drop_prob must be in [0, 1], got ", options.drop_prob());
}

Tensor DropPath::forward(const Tensor& x) {
  // timm.layers.drop.drop_path.
  const double p = options_.drop_prob();
  if (p == 0.0 || !is_training()) return x;
  KERN_CHECK(x.dim() >= 1 && is_floating(x.dtype()), "DropPath: expected a floating input [N, *], got ",
             x.shape(), " ", x.dtype());
  const double keep = 1.0 - p;
  Shape mask_shape(static_cast<size_t>(x.dim()), 1);
  mask_shape[0] = x.size(0);
  // Bernoulli(keep) per sample: U[0, 1) < keep gives a {0, 1} mask of x's dtype (no grad).
  Tensor mask = rand(mask_shape, x.dtype(), options_.generator()) < keep;
  if (keep > 0.0 && options_.scale_by_keep()) mask = mask * (1.0 / keep);
  return x * mask;
}

std::string DropPath::extra_repr() const {
  return fmt::format("drop_prob={:.3f}", options_.drop_prob());
}

}  // namespace kern::nn
