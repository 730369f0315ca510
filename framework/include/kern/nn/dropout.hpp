#pragma once
// Dropout (per element) and DropPath (stochastic depth, per sample). Both are the identity
// in eval mode and draw from kern::default_generator() unless given a Generator.
#include <kern/nn/module.hpp>

namespace kern::nn {

struct DropoutOptions {
  DropoutOptions(double p = 0.5) : p_(p) {}
  DropoutOptions& p(double v) { p_ = v; return *this; }
  /// Draw the masks from this generator (not owned; must outlive the module).
  DropoutOptions& generator(Generator* g) { generator_ = g; return *this; }
  double p() const { return p_; }
  Generator* generator() const { return generator_; }

 private:
  double p_;
  Generator* generator_ = nullptr;
};

/// Training: zeroes each element with probability p and scales the rest by 1 / (1 - p).
/// x: [*] -> [*]
class Dropout : public Module {
 public:
  explicit Dropout(const DropoutOptions& options = {});
  explicit Dropout(double p) : Dropout(DropoutOptions(p)) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Dropout"; }
  std::string extra_repr() const override;
  const DropoutOptions& options() const { return options_; }

 private:
  DropoutOptions options_;
};

struct DropPathOptions {
  DropPathOptions(double drop_prob = 0.0) : drop_prob_(drop_prob) {}
  DropPathOptions& drop_prob(double v) { drop_prob_ = v; return *this; }
  /// Scale kept samples by 1 / keep_prob (timm's default: true).
  DropPathOptions& scale_by_keep(bool v) { scale_by_keep_ = v; return *this; }
  DropPathOptions& generator(Generator* g) { generator_ = g; return *this; }
  double drop_prob() const { return drop_prob_; }
  bool scale_by_keep() const { return scale_by_keep_; }
  Generator* generator() const { return generator_; }

 private:
  double drop_prob_;
  bool scale_by_keep_ = true;
  Generator* generator_ = nullptr;
};

/// timm's DropPath: in training, each sample (index along dim 0) of a residual branch is
/// zeroed with probability drop_prob and kept samples are scaled by 1 / (1 - drop_prob).
/// x: [N, *] -> [N, *]
class DropPath : public Module {
 public:
  explicit DropPath(const DropPathOptions& options = {});
  explicit DropPath(double drop_prob) : DropPath(DropPathOptions(drop_prob)) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "DropPath"; }
  std::string extra_repr() const override;
  const DropPathOptions& options() const { return options_; }

 private:
  DropPathOptions options_;
};

}  // namespace kern::nn
