#pragma once
// kern::param::ParamRecord: what a parameterization says about ONE parameter.
//
// A parameterization (standard, NTK, muP, depth-muP; see kern/param/param.hpp) is data: for
// every parameter it fills one record, and the rest of kern only reads records:
//   - nn::Linear / nn::Conv2d multiply their weight / bias term by forward_multiplier()
//     (y = m_w * (x W^T) + m_b * b), skipping the multiply when it is exactly 1;
//   - optim::param_groups turns lr_mult_* and wd_mult_* into optimizer param groups;
//   - param::apply re-draws the parameter from `init` / `init_std`.
//
// Fans: a weight [out, in, k...] has fan_in = in * prod(k), fan_out = out * prod(k) (a Conv2d
// weight [C_out, C_in/groups, kH, kW] has fan_in = C_in/groups * kH * kW). A bias records its
// layer's fan_in (which sets its default init) and fan_out = its length; the papers' tables
// treat a bias as a weight with one input, so its learning-rate rules depend on fan_out only.
// base_fan_in / base_fan_out are the same fans in the base model (muP): every width rule is a
// function of fan / base_fan, so at the base shapes every preset's width rules are the identity.
// This header only holds data: it is included by kern/nn/module.hpp.
#include <kern/shape.hpp>

#include <cstdint>
#include <string_view>

namespace kern::param {

/// The parameterization a record was made by (kern/param/param.hpp has the rules).
enum class Scheme { Standard, NTK, MuP, MuPTable3 };

/// Which dims of a parameter hold its output and input channels; every other dim is a
/// receptive-field dim (conv taps) that multiplies into both fans. The module that registers
/// a parameter may declare it (nn::ParamOptions::layout); undeclared, a >= 2-D parameter is
/// read as PyTorch's [out, in, k...] ({0, 1}) and a 1-D one as [out] ({0, -1}).
///   Linear / Conv2d weight [out, in, k...]: {0, 1};  Embedding [num, dim]: {1, 0};
///   a per-channel filter [1, H, L] (long convolutions): {1, 0}.
struct Layout {
  int64_t out_dim = 0;  // -1: no output-channel dim
  int64_t in_dim = 1;   // -1: no input-channel dim
  bool operator==(const Layout&) const = default;
};

/// What a parameter is to the width rules.
enum class Role {
  InputWeight,   // maps a finite dim (data) to width: the first layer
  HiddenWeight,  // width to width
  OutputWeight,  // width to a finite dim: the readout
  FiniteWeight,  // a >= 2-D parameter none of whose dims grows with width (SP rules)
  Bias,          // any 1-D additive parameter (of a layer or a norm)
  NormGain,      // 1-D multiplicative parameter of a normalization layer
  Scalar,        // 0-dim parameters and anything the rules leave alone
};

/// How apply() re-draws a parameter.
enum class InitKind {
  Keep,     // leave the module's own init
  Uniform,  // U(-sqrt(3) * init_std, sqrt(3) * init_std)
  Normal,   // N(0, init_std^2)
  Zeros,
  Ones,
};

struct ParamRecord {
  Scheme scheme = Scheme::Standard;
  Role role = Role::Scalar;
  int64_t fan_in = 1;
  int64_t fan_out = 1;
  double base_fan_in = 1.0;
  double base_fan_out = 1.0;
  /// The parameter's shape in the base model (empty when the base came from a width ratio
  /// or there is none).
  Shape base_shape;
  InitKind init = InitKind::Keep;
  double init_std = 0.0;  // standard deviation of the init distribution
  /// Width multiplier in the forward pass (W_effective = multiplier * W).
  double multiplier = 1.0;
  /// Learning-rate multipliers for SGD-like and for Adam-like (entrywise-normalized) optimizers.
  double lr_mult_sgd = 1.0;
  double lr_mult_adam = 1.0;
  /// Weight-decay multipliers (the mup library keeps lr * weight_decay width-independent:
  /// wd_mult = 1 / the width part of lr_mult); optim::param_groups can ignore them
  /// (decoupled_wd).
  double wd_mult_sgd = 1.0;
  double wd_mult_adam = 1.0;
  /// Residual-branch depth multiplier (depth-muP: sqrt(base_depth / depth) on the layer that
  /// ends a branch; 1 elsewhere). Part of the forward multiplier.
  double depth_mult = 1.0;

  double fan_in_mult() const { return static_cast<double>(fan_in) / base_fan_in; }
  double fan_out_mult() const { return static_cast<double>(fan_out) / base_fan_out; }
  /// What the forward pass multiplies this parameter's term by.
  double forward_multiplier() const { return multiplier * depth_mult; }
};

constexpr std::string_view role_name(Role r) {
  switch (r) {
    case Role::InputWeight: return "input";
    case Role::HiddenWeight: return "hidden";
    case Role::OutputWeight: return "output";
    case Role::FiniteWeight: return "finite";
    case Role::Bias: return "bias";
    case Role::NormGain: return "gain";
    case Role::Scalar: return "scalar";
  }
  return "?";
}

constexpr std::string_view scheme_name(Scheme s) {
  switch (s) {
    case Scheme::Standard: return "standard";
    case Scheme::NTK: return "ntk";
    case Scheme::MuP: return "mup";
    case Scheme::MuPTable3: return "mup_table3";
  }
  return "?";
}

constexpr std::string_view init_name(InitKind k) {
  switch (k) {
    case InitKind::Keep: return "keep";
    case InitKind::Uniform: return "uniform";
    case InitKind::Normal: return "normal";
    case InitKind::Zeros: return "zeros";
    case InitKind::Ones: return "ones";
  }
  return "?";
}

}  // namespace kern::param
