#pragma once
// Optimizer parameter groups from a model's parameterization records (kern/param).
//
//   param::apply(*model, param::Preset::mup(base_model));
//   optim::AdamW opt(optim::param_groups(*model, {.family = optim::Family::Adam}),
//                    {.lr = 3e-4, .weight_decay = 0.05});
//   optim::SGD sgd(optim::param_groups(*model, {.family = optim::Family::SGD}), {.lr = 0.1});
//
// The groups carry only the per-parameter multipliers of the records: lr_mult (lr_mult_adam
// for Adam-like optimizers, lr_mult_sgd for SGD-like ones) and wd_mult (the records'
// weight-decay multipliers, or 1 with decoupled_wd), 1 for parameters without a record. They
// set neither lr nor weight_decay, so the optimizer's own options apply to all of them (and
// a schedule that sets the lr scales them together). The groups remember their family: an
// optimizer of the other family rejects them with an error.
#include <kern/nn/module.hpp>
#include <kern/optim/optimizer.hpp>

namespace kern::optim {

struct ParamGroupsOptions {
  /// Which of the records' lr rules applies (the optimizer that gets the groups must be of
  /// this family).
  Family family = Family::Adam;
  /// true: weight decay is not scaled by the records (the mup library's decoupled_wd).
  bool decoupled_wd = false;
};

/// One group holding every parameter of `model` once (tied parameters once), in
/// named_parameters() order, with its records' multipliers.
std::vector<ParamGroup> param_groups(const nn::Module& model, const ParamGroupsOptions& options = {});

}  // namespace kern::optim
