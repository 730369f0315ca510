#pragma once
// Optimizer parameter groups from a model's parameterization records (kern/param).
//
//   param::apply(*model, param::Preset::mup(width, 256));
//   optim::Adam opt(optim::param_groups(*model, {.lr = 1e-3, .family = optim::Family::Adam}));
//   optim::SGD sgd(optim::param_groups(*model, {.lr = 0.1, .family = optim::Family::SGD}));
//
// Every parameter keeps the base lr with its record's lr multiplier (lr_mult_adam for
// Adam-like optimizers, lr_mult_sgd for SGD-like ones; 1 without a record), so schedules that
// set the group lr scale all of them together. Parameters are grouped by their weight decay
// (weight_decay * wd_mult, or weight_decay alone with decoupled_wd), in first-appearance order.
#include <kern/nn/module.hpp>
#include <kern/optim/optimizer.hpp>

namespace kern::optim {

/// Which learning-rate rule of the records applies: Adam-like (Adam, AdamW, RMSProp, ...:
/// entrywise-normalized updates) or SGD-like.
enum class Family { SGD, Adam };

struct ParamGroupsOptions {
  double lr = 1e-3;
  double weight_decay = 0.0;
  Family family = Family::Adam;
  /// true: weight decay is not scaled by the records (the mup library's decoupled_wd).
  bool decoupled_wd = false;
};

std::vector<ParamGroup> param_groups(const nn::Module& model, const ParamGroupsOptions& options);

}  // namespace kern::optim
