#pragma once
// LayerNorm (last dims), LayerNorm2d (channels of NCHW, timm's) and BatchNorm2d.
#include <kern/nn/module.hpp>

#include <optional>

namespace kern::nn {

struct LayerNormOptions {
  LayerNormOptions(Shape normalized_shape) : normalized_shape_(std::move(normalized_shape)) {}
  LayerNormOptions(int64_t normalized_size) : normalized_shape_{normalized_size} {}
  LayerNormOptions& normalized_shape(Shape v) { normalized_shape_ = std::move(v); return *this; }
  LayerNormOptions& eps(double v) { eps_ = v; return *this; }
  LayerNormOptions& elementwise_affine(bool v) { elementwise_affine_ = v; return *this; }
  /// Learn a bias (only with elementwise_affine), as PyTorch's LayerNorm(bias=...).
  LayerNormOptions& bias(bool v) { bias_ = v; return *this; }
  const Shape& normalized_shape() const { return normalized_shape_; }
  double eps() const { return eps_; }
  bool elementwise_affine() const { return elementwise_affine_; }
  bool bias() const { return bias_; }

 private:
  Shape normalized_shape_;
  double eps_ = 1e-5;
  bool elementwise_affine_ = true;
  bool bias_ = true;
};

/// Normalizes over the trailing dims `normalized_shape`.
///   x: [*, normalized_shape...], weight/bias: [normalized_shape...] -> same shape as x
/// Init: weight ones, bias zeros.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(const LayerNormOptions& options);
  LayerNorm(int64_t normalized_size) : LayerNorm(LayerNormOptions(normalized_size)) {}
  void reset_parameters();
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "LayerNorm"; }
  std::string extra_repr() const override;
  const LayerNormOptions& options() const { return options_; }

  Param weight;  // [normalized_shape...], undefined without elementwise_affine
  Param bias;    // [normalized_shape...], undefined without elementwise_affine or bias

 private:
  LayerNormOptions options_;
};

struct LayerNorm2dOptions {
  LayerNorm2dOptions(int64_t num_channels) : num_channels_(num_channels) {}
  LayerNorm2dOptions& num_channels(int64_t v) { num_channels_ = v; return *this; }
  LayerNorm2dOptions& eps(double v) { eps_ = v; return *this; }
  LayerNorm2dOptions& elementwise_affine(bool v) { elementwise_affine_ = v; return *this; }
  int64_t num_channels() const { return num_channels_; }
  double eps() const { return eps_; }
  bool elementwise_affine() const { return elementwise_affine_; }

 private:
  int64_t num_channels_;
  double eps_ = 1e-6;  // timm's LayerNorm2d default (PyTorch's LayerNorm uses 1e-5)
  bool elementwise_affine_ = true;
};

/// timm's LayerNorm2d: LayerNorm over the channels of a channels-first tensor (permute to
/// NHWC, layer_norm over C, permute back).
///   x: [N, C, H, W], weight/bias: [C] -> [N, C, H, W]
class LayerNorm2d : public Module {
 public:
  explicit LayerNorm2d(const LayerNorm2dOptions& options);
  LayerNorm2d(int64_t num_channels) : LayerNorm2d(LayerNorm2dOptions(num_channels)) {}
  void reset_parameters();
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "LayerNorm2d"; }
  std::string extra_repr() const override;
  const LayerNorm2dOptions& options() const { return options_; }

  Param weight;  // [C]
  Param bias;    // [C]

 private:
  LayerNorm2dOptions options_;
};

struct BatchNorm2dOptions {
  BatchNorm2dOptions(int64_t num_features) : num_features_(num_features) {}
  BatchNorm2dOptions& num_features(int64_t v) { num_features_ = v; return *this; }
  BatchNorm2dOptions& eps(double v) { eps_ = v; return *this; }
  /// Running-average factor; std::nullopt means a cumulative average (1 / batches seen).
  BatchNorm2dOptions& momentum(std::optional<double> v) { momentum_ = v; return *this; }
  BatchNorm2dOptions& affine(bool v) { affine_ = v; return *this; }
  BatchNorm2dOptions& track_running_stats(bool v) { track_running_stats_ = v; return *this; }
  int64_t num_features() const { return num_features_; }
  double eps() const { return eps_; }
  std::optional<double> momentum() const { return momentum_; }
  bool affine() const { return affine_; }
  bool track_running_stats() const { return track_running_stats_; }

 private:
  int64_t num_features_;
  double eps_ = 1e-5;
  std::optional<double> momentum_ = 0.1;
  bool affine_ = true;
  bool track_running_stats_ = true;
};

/// Batch normalization over [N, C, H, W] per channel, PyTorch's semantics: in training
/// mode normalizes with batch statistics and updates running_mean/running_var (unbiased
/// variance) and num_batches_tracked; in eval mode uses the running statistics (or batch
/// statistics when track_running_stats is off).
///   x: [N, C, H, W], weight/bias/running_mean/running_var: [C] -> [N, C, H, W]
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(const BatchNorm2dOptions& options);
  BatchNorm2d(int64_t num_features) : BatchNorm2d(BatchNorm2dOptions(num_features)) {}
  /// Weight ones, bias zeros, and reset_running_stats().
  void reset_parameters();
  /// running_mean zeros, running_var ones, num_batches_tracked 0.
  void reset_running_stats();
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "BatchNorm2d"; }
  std::string extra_repr() const override;
  const BatchNorm2dOptions& options() const { return options_; }

  Param weight;                // [C] parameter (affine)
  Param bias;                  // [C] parameter (affine)
  Buffer running_mean;         // [C] buffer (track_running_stats)
  Buffer running_var;          // [C] buffer (track_running_stats)
  Buffer num_batches_tracked;  // [] int64 buffer (track_running_stats)

 private:
  BatchNorm2dOptions options_;
};

}  // namespace kern::nn
