#pragma once
// Optimizer: the base of SGD, Adam and AdamW. Holds parameter groups (each with its own lr and
// weight decay, and optional per-parameter lr multipliers, e.g. from a muP parameterization),
// the per-parameter state, and its serialization as a flat list of named tensors.
//
// Parameters are numbered globally in group order (group 0's params first), as in PyTorch's
// optimizer state_dict. State dict keys:
//   "group.<g>.lr", "group.<g>.weight_decay"      0-dim float64
//   "state.<i>.step"                              0-dim float64 (Adam/AdamW)
//   "state.<i>.<name>"                            shaped like parameter i (exp_avg, ...)
// A parameter that has not been stepped yet has no "state.<i>.*" keys.
#include <kern/tensor.hpp>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kern::optim {

/// Which learning-rate rule of a parameterization applies: Adam-like (Adam, AdamW:
/// entrywise-normalized updates) or SGD-like.
enum class Family { SGD, Adam };

/// A set of parameters sharing hyperparameters, as a PyTorch param group: lr and
/// weight_decay set here override the optimizer's options for this group; unset, the
/// optimizer's options apply. optim::param_groups sets neither: it carries only the
/// per-parameter multipliers of a parameterization (kern/param).
struct ParamGroup {
  std::vector<Tensor> params;
  std::optional<double> lr;
  std::optional<double> weight_decay;
  /// Per-parameter multipliers of the group's lr (same length as params); empty = all 1.
  std::vector<double> lr_mult;
  /// Per-parameter multipliers of the group's weight decay (same length); empty = all 1.
  std::vector<double> wd_mult;
  /// The optimizer family the multipliers were made for (set by param_groups); an optimizer
  /// of the other family rejects the group, since its multipliers would be wrong.
  std::optional<Family> family;
};

/// A flat, ordered list of named tensors (what safetensors stores).
using StateDict = std::vector<std::pair<std::string, Tensor>>;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  /// One update of every parameter whose .grad is defined (under NoGradGuard, in place).
  virtual void step() = 0;
  /// Sets every parameter's .grad to undefined (PyTorch's zero_grad(set_to_none=True)).
  void zero_grad();

  size_t num_groups() const { return groups_.size(); }
  /// The group's learning rate (before per-parameter multipliers).
  double lr(size_t group = 0) const;
  void set_lr(size_t group, double lr);
  /// Sets the learning rate of every group.
  void set_lr(double lr);
  double weight_decay(size_t group = 0) const;
  void set_weight_decay(size_t group, double weight_decay);
  /// The group's parameters and multipliers (resolved: lr and weight_decay always set,
  /// lr_mult and wd_mult always one entry per parameter).
  const ParamGroup& param_group(size_t group) const;
  /// All parameters in global order.
  std::vector<Tensor> parameters() const;
  size_t num_params() const { return num_params_; }

  /// A copy of the optimizer state (hyperparameters of each group and per-parameter buffers).
  StateDict state_dict() const;
  /// Replaces the state with `sd` (copied). Validates every key, shape, dtype and value first
  /// and throws kern::Error naming the offending key; on error nothing is changed.
  /// Equivalent to commit_state_dict(prepare_state_dict(sd)).
  void load_state_dict(const StateDict& sd);

  /// A state dict validated against this optimizer and converted to its dtypes, ready to be
  /// installed by commit_state_dict. Splitting the load lets io::load_checkpoint validate the
  /// model, the optimizer and the RNG state before it changes any of them.
  struct PreparedState {
    std::vector<double> lrs, weight_decays;              // per group
    std::vector<std::map<std::string, Tensor>> state;  // per parameter (fresh copies)
  };
  /// Validates and converts `sd` (throws as load_state_dict); changes nothing.
  PreparedState prepare_state_dict(const StateDict& sd) const;
  /// Installs a state from prepare_state_dict on this optimizer (its parameters unchanged
  /// since); cannot fail.
  void commit_state_dict(PreparedState&& prepared) noexcept;

 protected:
  /// `name` names the optimizer in error messages; `family` is its update rule's family;
  /// `lr`, `weight_decay` are the defaults of groups that do not set them.
  Optimizer(std::string name, Family family, std::vector<ParamGroup> groups, double lr,
            double weight_decay);
  Optimizer(std::string name, Family family, std::vector<Tensor> params, double lr,
            double weight_decay);

  /// Names of the per-parameter state tensors this optimizer keeps (all present or none for
  /// a parameter). "step" is a 0-dim float64 counter; the others are shaped like the param.
  virtual std::vector<std::string> state_names() const = 0;

  /// State tensor `name` of global parameter `index` (undefined when not yet created).
  Tensor& state(size_t index, const std::string& name) { return state_[index][name]; }
  bool has_state(size_t index) const { return !state_[index].empty(); }

  /// Calls f(param, grad, index, lr, weight_decay) for each parameter with a defined grad;
  /// lr and weight_decay include the parameter's multipliers. grad is contiguous with the
  /// param's dtype.
  template <typename F>
  void for_each_update(F&& f);

  std::string name_;
  Family family_;
  std::vector<ParamGroup> groups_;
  size_t num_params_ = 0;
  std::vector<std::map<std::string, Tensor>> state_;  // indexed by global param index

 private:
  void init(std::vector<ParamGroup> groups, double lr, double weight_decay);
  void check_group(ParamGroup& group, size_t index) const;
  /// Throws unless `grad` fits `param` (shape, dtype); returns it contiguous.
  Tensor checked_grad(const Tensor& param, size_t index) const;
};

template <typename F>
void Optimizer::for_each_update(F&& f) {
  size_t index = 0;
  for (const ParamGroup& g : groups_) {
    for (size_t j = 0; j < g.params.size(); ++j, ++index) {
      const Tensor& p = g.params[j];
      if (!p.grad().defined()) continue;
      f(p, checked_grad(p, index), index, *g.lr * g.lr_mult[j], *g.weight_decay * g.wd_mult[j]);
    }
  }
}

}  // namespace kern::optim
