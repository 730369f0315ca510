#pragma once
// Learning-rate schedules. A scheduler remembers each group's lr when it is constructed (the
// base lr) and, on construction and on every step(), sets each group's lr to
// lr_at(base_lr, step), with step counting calls to step() (0 at construction). Call it once
// per optimizer step (or per epoch), after opt.step(), as in PyTorch.
#include <kern/optim/optimizer.hpp>

#include <cstdint>
#include <vector>

namespace kern::optim {

class LRScheduler {
 public:
  explicit LRScheduler(Optimizer& optimizer);
  virtual ~LRScheduler() = default;

  /// Advances one step and sets every group's lr.
  void step();
  /// Jumps to `step` (e.g. when resuming from a checkpoint) and sets every group's lr.
  void set_step(int64_t step);
  int64_t last_step() const { return step_; }
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  /// The lr each group has now.
  std::vector<double> last_lr() const;
  /// The lr of a group whose base lr is `base_lr`, at `step` (closed form).
  virtual double lr_at(double base_lr, int64_t step) const = 0;

 protected:
  /// Subclasses call this at the end of their constructor (after their fields are set).
  void apply();

 private:
  Optimizer& optimizer_;
  std::vector<double> base_lrs_;
  int64_t step_ = 0;
};

/// PyTorch's ConstantLR: lr = base_lr * factor for step < total_iters, base_lr afterwards.
/// (factor = 1 keeps the lr constant.)
class ConstantLR : public LRScheduler {
 public:
  explicit ConstantLR(Optimizer& optimizer, double factor = 1.0 / 3.0, int64_t total_iters = 5);
  double lr_at(double base_lr, int64_t step) const override;

 private:
  double factor_;
  int64_t total_iters_;
};

/// lr = base_lr * gamma^floor(step / step_size).
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& optimizer, int64_t step_size, double gamma = 0.1);
  double lr_at(double base_lr, int64_t step) const override;

 private:
  int64_t step_size_;
  double gamma_;
};

/// Linear warmup from 0 to base_lr over warmup_steps, then a cosine from base_lr down to
/// base_lr * min_lr_ratio at total_steps, constant afterwards:
///   step < warmup:  base_lr * step / warmup
///   otherwise:      base_lr * (r + (1 - r) * (1 + cos(pi * t)) / 2),
///                   t = min(1, (step - warmup) / (total - warmup)), r = min_lr_ratio.
class WarmupCosine : public LRScheduler {
 public:
  WarmupCosine(Optimizer& optimizer, int64_t warmup_steps, int64_t total_steps,
               double min_lr_ratio = 0.0);
  double lr_at(double base_lr, int64_t step) const override;

 private:
  int64_t warmup_, total_;
  double min_ratio_;
};

/// PyTorch's CosineAnnealingLR in its closed form:
///   lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * step / T_max)) / 2.
class CosineAnnealingLR : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min = 0.0);
  double lr_at(double base_lr, int64_t step) const override;

 private:
  int64_t t_max_;
  double eta_min_;
};

}  // namespace kern::optim
