#pragma once
// Adam and AdamW: PyTorch 1.13's update rules (per-parameter step counts, bias corrections).
//   step += 1
//   g = g + weight_decay * p                   (Adam: L2 penalty added to the gradient)
//   p = p * (1 - lr * weight_decay)            (AdamW: decoupled decay, instead of the above)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   v_max = max(v_max, v)                      (amsgrad; then v_max replaces v below)
//   denom = sqrt(v) / sqrt(1 - beta2^step) + eps
//   p -= lr / (1 - beta1^step) * m / denom
// State per parameter: "step", "exp_avg", "exp_avg_sq" (+ "max_exp_avg_sq" with amsgrad).
#include <kern/optim/optimizer.hpp>

#include <utility>

namespace kern::optim {

struct AdamOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool amsgrad = false;
};

/// AdamW's options: Adam's, with PyTorch's default decoupled weight decay of 1e-2.
struct AdamWOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
};

class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, AdamOptions options = {});
  Adam(std::vector<ParamGroup> groups, AdamOptions options = {});
  void step() override;
  const AdamOptions& options() const { return options_; }

 protected:
  Adam(std::string name, std::vector<ParamGroup> groups, AdamOptions options, bool decoupled);
  Adam(std::string name, std::vector<Tensor> params, AdamOptions options, bool decoupled);
  std::vector<std::string> state_names() const override;

 private:
  AdamOptions options_;
  bool decoupled_ = false;  // AdamW
};

class AdamW : public Adam {
 public:
  AdamW(std::vector<Tensor> params, AdamWOptions options = {});
  AdamW(std::vector<ParamGroup> groups, AdamWOptions options = {});
};

}  // namespace kern::optim
