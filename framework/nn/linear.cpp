// Linear, Flatten.
#include <kern/nn/init.hpp>
#include <kern/nn/linear.hpp>
#include <kern/ops/linalg.hpp>
#include <kern/ops/shape_ops.hpp>

#include <cmath>

namespace kern::nn {

Linear::Linear(const LinearOptions& options) : options_(options) {
  KERN_CHECK(options.in_features() >= 0 && options.out_features() >= 0,
             "Linear: in_features and out_features must be >= 0, got ", options.in_features(),
             " and ", options.out_features());
  weight = register_parameter("weight", empty({options.out_features(), options.in_features()}));
  if (options.bias()) bias = register_parameter("bias", empty({options.out_features()}));
  reset_parameters();
}

void Linear::reset_parameters(Generator* gen) {
  // torch.nn.Linear.reset_parameters: weight first, then bias (the order fixes the stream).
  init::kaiming_uniform_(weight.tensor(), std::sqrt(5.0), "fan_in", "leaky_relu", gen);
  if (bias.defined()) {
    const int64_t fan_in = options_.in_features();
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
    init::uniform_(bias.tensor(), -bound, bound, gen);
  }
}

Tensor Linear::forward(const Tensor& x) {
  KERN_CHECK(x.dim() >= 1 && x.size(-1) == options_.in_features(), "Linear(",
             options_.in_features(), " -> ", options_.out_features(), "): input ", x.shape(),
             " must end in ", options_.in_features(), " features");
  return linear(x, weight(), bias());
}

std::string Linear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}", options_.in_features(),
                     options_.out_features(), bias.defined() ? "True" : "False");
}

Tensor Flatten::forward(const Tensor& x) {
  return flatten(x, options_.start_dim(), options_.end_dim());
}

std::string Flatten::extra_repr() const {
  return fmt::format("start_dim={}, end_dim={}", options_.start_dim(), options_.end_dim());
}

}  // namespace kern::nn
