// LR schedules: closed forms of the step count, applied to every group's base lr.
#include <kern/optim/schedule.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>

namespace kern::optim {

LRScheduler::LRScheduler(Optimizer& optimizer) : optimizer_(optimizer) {
  for (size_t g = 0; g < optimizer.num_groups(); ++g) base_lrs_.push_back(optimizer.lr(g));
}

void LRScheduler::apply() {
  for (size_t g = 0; g < base_lrs_.size(); ++g)
    optimizer_.set_lr(g, std::max(0.0, lr_at(base_lrs_[g], step_)));
}

void LRScheduler::step() {
  ++step_;
  apply();
}

void LRScheduler::set_step(int64_t step) {
  KERN_CHECK(step >= 0, "LRScheduler: set_step: negative step ", step);
  step_ = step;
  apply();
}

std::vector<double> LRScheduler::last_lr() const {
  std::vector<double> out;
  for (size_t g = 0; g < base_lrs_.size(); ++g) out.push_back(optimizer_.lr(g));
  return out;
}

ConstantLR::ConstantLR(Optimizer& optimizer, double factor, int64_t total_iters)
    : LRScheduler(optimizer), factor_(factor), total_iters_(total_iters) {
  KERN_CHECK(factor >= 0.0 && factor <= 1.0, "ConstantLR: factor ", factor,
             " must be in [0, 1]");
  KERN_CHECK(total_iters >= 0, "ConstantLR: negative total_iters ", total_iters);
  apply();
}

double ConstantLR::lr_at(double base_lr, int64_t step) const {
  return step < total_iters_ ? base_lr * factor_ : base_lr;
}

StepLR::StepLR(Optimizer& optimizer, int64_t step_size, double gamma)
    : LRScheduler(optimizer), step_size_(step_size), gamma_(gamma) {
  KERN_CHECK(step_size > 0, "StepLR: step_size must be > 0, got ", step_size);
  KERN_CHECK(gamma >= 0.0, "StepLR: gamma must be >= 0, got ", gamma);
  apply();
}

double StepLR::lr_at(double base_lr, int64_t step) const {
  return base_lr * std::pow(gamma_, static_cast<double>(step / step_size_));
}

WarmupCosine::WarmupCosine(Optimizer& optimizer, int64_t warmup_steps, int64_t total_steps,
                           double min_lr_ratio)
    : LRScheduler(optimizer), warmup_(warmup_steps), total_(total_steps), min_ratio_(min_lr_ratio) {
  KERN_CHECK(warmup_steps >= 0, "WarmupCosine: negative warmup_steps ", warmup_steps);
  KERN_CHECK(total_steps > warmup_steps, "WarmupCosine: total_steps (", total_steps,
             ") must exceed warmup_steps (", warmup_steps, ")");
  KERN_CHECK(min_lr_ratio >= 0.0 && min_lr_ratio <= 1.0, "WarmupCosine: min_lr_ratio ",
             min_lr_ratio, " must be in [0, 1]");
  apply();
}

double WarmupCosine::lr_at(double base_lr, int64_t step) const {
  if (step < warmup_) return base_lr * static_cast<double>(step) / static_cast<double>(warmup_);
  const double t = std::min(1.0, static_cast<double>(step - warmup_) /
                                     static_cast<double>(total_ - warmup_));
  return base_lr * (min_ratio_ + (1.0 - min_ratio_) * 0.5 * (1.0 + std::cos(std::numbers::pi * t)));
}

CosineAnnealingLR::CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min)
    : LRScheduler(optimizer), t_max_(T_max), eta_min_(eta_min) {
  KERN_CHECK(T_max > 0, "CosineAnnealingLR: T_max must be > 0, got ", T_max);
  KERN_CHECK(eta_min >= 0.0, "CosineAnnealingLR: eta_min must be >= 0, got ", eta_min);
  apply();
}

double CosineAnnealingLR::lr_at(double base_lr, int64_t step) const {
  return eta_min_ + (base_lr - eta_min_) *
                        (1.0 + std::cos(std::numbers::pi * static_cast<double>(step) /
                                        static_cast<double>(t_max_))) /
                        2.0;
}

}  // namespace kern::optim
