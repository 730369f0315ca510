#pragma once
// Conv2d.
#include <kern/nn/module.hpp>
#include <kern/ops/conv.hpp>

#include <array>

namespace kern::nn {

/// Padding tags: `.padding(nn::kSame)` keeps H and W (stride 1 only; when the total padding
/// dilation * (k - 1) of a dim is odd, the extra row/column goes after, as PyTorch);
/// `.padding(nn::kValid)` is no padding.
struct PaddingSame {};
struct PaddingValid {};
inline constexpr PaddingSame kSame{};
inline constexpr PaddingValid kValid{};

/// Conv2dOptions(in_channels, out_channels, kernel_size) with chained setters:
///   Conv2dOptions(64, 64, 7).padding(3).groups(64)      depthwise 7x7
///   Conv2dOptions(12, 12, {1, 11}).padding({0, 5})       a 1x11 band
///   Conv2dOptions(3, 8, 3).padding(nn::kSame).bias(false)
struct Conv2dOptions {
  Conv2dOptions(int64_t in_channels, int64_t out_channels, int64_t kernel_size)
      : Conv2dOptions(in_channels, out_channels, {kernel_size, kernel_size}) {}
  Conv2dOptions(int64_t in_channels, int64_t out_channels, std::array<int64_t, 2> kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}

  Conv2dOptions& stride(int64_t v) { return stride({v, v}); }
  Conv2dOptions& stride(std::array<int64_t, 2> v) { stride_ = v; return *this; }
  Conv2dOptions& padding(int64_t v) { return padding({v, v}); }
  Conv2dOptions& padding(std::array<int64_t, 2> v) { padding_ = v; same_ = false; return *this; }
  Conv2dOptions& padding(PaddingSame) { padding_ = {0, 0}; same_ = true; return *this; }
  Conv2dOptions& padding(PaddingValid) { padding_ = {0, 0}; same_ = false; return *this; }
  Conv2dOptions& dilation(int64_t v) { return dilation({v, v}); }
  Conv2dOptions& dilation(std::array<int64_t, 2> v) { dilation_ = v; return *this; }
  Conv2dOptions& groups(int64_t v) { groups_ = v; return *this; }
  Conv2dOptions& bias(bool v) { bias_ = v; return *this; }

  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  std::array<int64_t, 2> kernel_size() const { return kernel_size_; }
  std::array<int64_t, 2> stride() const { return stride_; }
  /// Explicit symmetric padding per dim ({0, 0} with kSame: see padding_same()).
  std::array<int64_t, 2> padding() const { return padding_; }
  bool padding_same() const { return same_; }
  std::array<int64_t, 2> dilation() const { return dilation_; }
  int64_t groups() const { return groups_; }
  bool bias() const { return bias_; }

 private:
  int64_t in_channels_;
  int64_t out_channels_;
  std::array<int64_t, 2> kernel_size_;
  std::array<int64_t, 2> stride_{1, 1};
  std::array<int64_t, 2> padding_{0, 0};
  bool same_ = false;
  std::array<int64_t, 2> dilation_{1, 1};
  int64_t groups_ = 1;
  bool bias_ = true;
};

/// 2-D convolution (cross-correlation).
///   x: [N, C_in, H, W], weight: [C_out, C_in/groups, kH, kW] (OIHW), bias: [C_out]
///   -> [N, C_out, H_out, W_out]
/// Init (PyTorch): weight kaiming_uniform_(a = sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
/// with fan_in = C_in/groups * kH * kW; bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
class Conv2d : public Module {
 public:
  explicit Conv2d(const Conv2dOptions& options);
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size)
      : Conv2d(Conv2dOptions(in_channels, out_channels, kernel_size)) {}
  void reset_parameters(Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Conv2d"; }
  std::string extra_repr() const override;
  const Conv2dOptions& options() const { return options_; }
  /// The op parameters forward passes to kern::conv2d (with kSame: the symmetric part).
  Conv2dParams params() const;

  Param weight;  // [C_out, C_in/groups, kH, kW]
  Param bias;    // [C_out], undefined when options.bias(false)

 private:
  Conv2dOptions options_;
  // With kSame: padding before and after, per dim (H, W).
  std::array<int64_t, 2> pad_before_{0, 0};
  std::array<int64_t, 2> pad_after_{0, 0};
};

}  // namespace kern::nn
