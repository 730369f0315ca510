#pragma once
// MaxPool2d, AvgPool2d, AdaptiveAvgPool2d over [N, C, H, W].
#include <kern/nn/module.hpp>
#include <kern/ops/pool.hpp>

#include <array>

namespace kern::nn {

/// MaxPool2dOptions(kernel_size) / AvgPool2dOptions(kernel_size); stride defaults to the
/// kernel size (PyTorch's default).
template <class Derived>
struct Pool2dOptionsBase {
  explicit Pool2dOptionsBase(int64_t kernel_size) : Pool2dOptionsBase({kernel_size, kernel_size}) {}
  explicit Pool2dOptionsBase(std::array<int64_t, 2> kernel_size) { p_.kernel = kernel_size; }
  Derived& kernel_size(std::array<int64_t, 2> v) { p_.kernel = v; return self(); }
  Derived& stride(int64_t v) { return stride({v, v}); }
  Derived& stride(std::array<int64_t, 2> v) { p_.stride = v; return self(); }
  Derived& padding(int64_t v) { return padding({v, v}); }
  Derived& padding(std::array<int64_t, 2> v) { p_.padding = v; return self(); }
  Derived& ceil_mode(bool v) { p_.ceil_mode = v; return self(); }
  std::array<int64_t, 2> kernel_size() const { return p_.kernel; }
  /// The effective stride (the kernel size unless set).
  std::array<int64_t, 2> stride() const {
    return {p_.stride[0] ? p_.stride[0] : p_.kernel[0], p_.stride[1] ? p_.stride[1] : p_.kernel[1]};
  }
  std::array<int64_t, 2> padding() const { return p_.padding; }
  bool ceil_mode() const { return p_.ceil_mode; }
  /// The op parameters.
  const Pool2dParams& params() const { return p_; }

 protected:
  Derived& self() { return static_cast<Derived&>(*this); }
  Pool2dParams p_;
};

struct MaxPool2dOptions : Pool2dOptionsBase<MaxPool2dOptions> {
  using Pool2dOptionsBase::Pool2dOptionsBase;
};

struct AvgPool2dOptions : Pool2dOptionsBase<AvgPool2dOptions> {
  using Pool2dOptionsBase::Pool2dOptionsBase;
  /// Count padded zeros in the average (PyTorch's default: true).
  AvgPool2dOptions& count_include_pad(bool v) { p_.count_include_pad = v; return *this; }
  bool count_include_pad() const { return p_.count_include_pad; }
};

/// x: [N, C, H, W] -> [N, C, Ho, Wo], the maximum of each window.
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(const MaxPool2dOptions& options);
  explicit MaxPool2d(int64_t kernel_size) : MaxPool2d(MaxPool2dOptions(kernel_size)) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "MaxPool2d"; }
  std::string extra_repr() const override;
  const MaxPool2dOptions& options() const { return options_; }

 private:
  MaxPool2dOptions options_;
};

/// x: [N, C, H, W] -> [N, C, Ho, Wo], the mean of each window.
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(const AvgPool2dOptions& options);
  explicit AvgPool2d(int64_t kernel_size) : AvgPool2d(AvgPool2dOptions(kernel_size)) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "AvgPool2d"; }
  std::string extra_repr() const override;
  const AvgPool2dOptions& options() const { return options_; }

 private:
  AvgPool2dOptions options_;
};

struct AdaptiveAvgPool2dOptions {
  AdaptiveAvgPool2dOptions(int64_t output_size) : output_size_{output_size, output_size} {}
  AdaptiveAvgPool2dOptions(std::array<int64_t, 2> output_size) : output_size_(output_size) {}
  AdaptiveAvgPool2dOptions& output_size(std::array<int64_t, 2> v) { output_size_ = v; return *this; }
  std::array<int64_t, 2> output_size() const { return output_size_; }

 private:
  std::array<int64_t, 2> output_size_;
};

/// x: [N, C, H, W] -> [N, C, oh, ow] with PyTorch's adaptive windows
/// (AdaptiveAvgPool2d(1) is global average pooling: [N, C, 1, 1]).
class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(const AdaptiveAvgPool2dOptions& options);
  explicit AdaptiveAvgPool2d(int64_t output_size)
      : AdaptiveAvgPool2d(AdaptiveAvgPool2dOptions(output_size)) {}
  explicit AdaptiveAvgPool2d(std::array<int64_t, 2> output_size)
      : AdaptiveAvgPool2d(AdaptiveAvgPool2dOptions(output_size)) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "AdaptiveAvgPool2d"; }
  std::string extra_repr() const override;
  const AdaptiveAvgPool2dOptions& options() const { return options_; }

 private:
  AdaptiveAvgPool2dOptions options_;
};

}  // namespace kern::nn
