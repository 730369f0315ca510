// Activation modules: thin wrappers over the elementwise ops.
#include <kern/nn/activation.hpp>
#include <kern/ops/elementwise.hpp>

namespace kern::nn {

GELU::GELU(const GELUOptions& options) : options_(options) {
  KERN_CHECK(options.approximate() == "none" || options.approximate() == "tanh",
             "GELU: approximate must be 'none' or 'tanh', got '", options.approximate(), "'");
}

Tensor GELU::forward(const Tensor& x) { return gelu(x, options_.approximate()); }

std::string GELU::extra_repr() const {
  return fmt::format("approximate='{}'", options_.approximate());
}

Tensor ReLU::forward(const Tensor& x) { return relu(x); }
Tensor Tanh::forward(const Tensor& x) { return tanh(x); }
Tensor SiLU::forward(const Tensor& x) { return silu(x); }
Tensor Sigmoid::forward(const Tensor& x) { return sigmoid(x); }

}  // namespace kern::nn
