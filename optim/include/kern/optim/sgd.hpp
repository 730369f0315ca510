#pragma once
// SGD with momentum, dampening, Nesterov and (L2) weight decay: PyTorch 1.13's update rule.
//   d = g + weight_decay * p
//   buf = d                                       (first step)
//   buf = momentum * buf + (1 - dampening) * d    (later steps)
//   d = nesterov ? d + momentum * buf : buf       (when momentum != 0)
//   p -= lr * d
#include <kern/optim/optimizer.hpp>

namespace kern::optim {

struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, SGDOptions options = {});
  SGD(std::vector<ParamGroup> groups, SGDOptions options = {});
  void step() override;
  const SGDOptions& options() const { return options_; }

 protected:
  std::vector<std::string> state_names() const override;

 private:
  SGDOptions options_;
};

}  // namespace kern::optim
