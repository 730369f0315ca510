#pragma once
// Activation modules (no parameters): GELU, ReLU, Tanh, SiLU, Sigmoid. x: [*] -> [*].
// (Identity lives in linear.hpp, as in PyTorch.)
#include <kern/nn/module.hpp>

#include <string>

namespace kern::nn {

struct GELUOptions {
  /// "none" (exact, x * Phi(x)) or "tanh" (the tanh approximation).
  GELUOptions& approximate(std::string v) { approximate_ = std::move(v); return *this; }
  const std::string& approximate() const { return approximate_; }

 private:
  std::string approximate_ = "none";
};

class GELU : public Module {
 public:
  explicit GELU(const GELUOptions& options = {});
  explicit GELU(std::string approximate) : GELU(GELUOptions().approximate(std::move(approximate))) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "GELU"; }
  std::string extra_repr() const override;
  const GELUOptions& options() const { return options_; }

 private:
  GELUOptions options_;
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "ReLU"; }
};

class Tanh : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Tanh"; }
};

class SiLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "SiLU"; }
};

class Sigmoid : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Sigmoid"; }
};

}  // namespace kern::nn
