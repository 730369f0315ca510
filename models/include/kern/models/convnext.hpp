#pragma once
// ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"), timm-compatible: the module tree,
// parameter names, shapes and initialization of timm.models.convnext, so a timm state_dict
// saved as safetensors loads with load_state_dict(strict = true).
//
//   auto model = kern::models::create_model("convnext_atto", {.num_classes = 10});
//   kern::models::ConvNeXt small({.depths = {1, 1}, .dims = {16, 32}, .num_classes = 10,
//                                 .kernel_size = 31, .conv_mlp = true});
//   // a named variant with another kernel (large-kernel studies):
//   auto o = kern::models::convnext_options("convnext_atto", {.num_classes = 10});
//   o.kernel_size = 31;
//   kern::models::ConvNeXt atto_k31(o);
//
// Module tree (S stages, names as timm):
//   stem.0                       Conv2d(in_chans, dims[0], patch_size, stride patch_size)
//   stem.1                       LayerNorm2d(dims[0])
//   stages.{i}.downsample        Identity for i = 0; for i > 0
//                                  .0 LayerNorm2d(dims[i-1]), .1 Conv2d(dims[i-1], dims[i], 2, stride 2)
//   stages.{i}.blocks.{j}        ConvNeXtBlock(dims[i]):
//     .gamma                       [C] layer scale (absent when ls_init_value <= 0)
//     .conv_dw                     depthwise Conv2d(C, C, k, padding (k-1)/2, groups C)
//     .norm                        LayerNorm2d(C) (conv_mlp) or LayerNorm(C) on NHWC
//     .mlp.fc1, .mlp.fc2           1x1 Conv2d (conv_mlp) or Linear; hidden = int(mlp_ratio * C)
//     .drop_path                   DropPath (Identity when its rate is 0)
//   head.global_pool, .norm (LayerNorm2d), .flatten, .drop (Dropout), .fc (Linear; Identity
//   when num_classes == 0)
//
// Shapes: x: [N, in_chans, H, W] -> forward_features: [N, dims.back(), H / (patch * 2^(S-1)),
// W / (...)] (H/32 for the usual 4 stages and patch 4) -> forward: [N, num_classes]
// (num_classes == 0: the pooled, normalized features [N, dims.back()]).
//
// Not modelled: timm's stem_type 'overlap*', output_stride < 32 (dilation), head_norm_first,
// head_hidden_size, use_grn (ConvNeXt-V2), and the parameterless `shortcut` / `norm_pre`
// Identity modules (they hold no state and change no output).
#include <kern/models/registry.hpp>
#include <kern/nn/nn.hpp>

#include <memory>
#include <string>
#include <vector>

namespace kern::models {

/// Everything a ConvNeXt is built from; defaults are timm's (convnext_tiny's depths/dims).
/// Use designated initializers in declaration order: {.depths = ..., .dims = ..., ...}.
struct ConvNeXtOptions {
  std::vector<int64_t> depths{3, 3, 9, 3};        // blocks per stage
  std::vector<int64_t> dims{96, 192, 384, 768};   // channels per stage (same length)
  int64_t num_classes = 1000;                     // 0: no classifier (head.fc is Identity)
  int64_t in_chans = 3;
  int64_t kernel_size = 7;                        // depthwise kernel, odd (1, 3, ..., 31, ...)
  std::vector<int64_t> kernel_sizes{};            // per stage; overrides kernel_size if given
  bool conv_mlp = false;     // true: LayerNorm2d + 1x1-conv Mlp in NCHW; false: NHWC LayerNorm + Linear
  double ls_init_value = 1e-6;   // layer scale gamma's init; <= 0: blocks have no gamma
  double mlp_ratio = 4.0;
  int64_t patch_size = 4;        // stem conv kernel and stride
  double norm_eps = 1e-6;        // every LayerNorm / LayerNorm2d
  double head_init_scale = 1.0;  // head.fc weight and bias are multiplied by this after init
  double drop_rate = 0.0;        // dropout before head.fc
  double drop_path_rate = 0.0;   // stochastic depth, linear from 0 (first block) to this (last)
};

/// timm's Mlp / ConvMlp without dropout: fc2(GELU(fc1(x))).
///   use_conv: x: [N, C, H, W] -> [N, C_out, H, W] (1x1 convs); else x: [*, C] -> [*, C_out]
class ConvNeXtMlp : public nn::Module {
 public:
  ConvNeXtMlp(int64_t in_features, int64_t hidden_features, int64_t out_features, bool use_conv);
  Tensor forward(const Tensor& x) override;
  /// forward without firing any hook of the children (see ConvNeXtBlock::branch).
  Tensor forward_unhooked(const Tensor& x);
  std::string name() const override { return "Mlp"; }

  std::shared_ptr<nn::Module> fc1, act, fc2;  // fc: Conv2d (use_conv) or Linear
};

/// One residual block: x + drop_path(gamma * mlp(norm(conv_dw(x)))).
///   x: [N, C, H, W] -> [N, C, H, W]
class ConvNeXtBlock : public nn::Module {
 public:
  ConvNeXtBlock(int64_t dim, int64_t kernel_size, double drop_path, const ConvNeXtOptions& options);
  Tensor forward(const Tensor& x) override;
  /// The residual branch before the layer scale, h = mlp(norm(conv_dw(x))):
  ///   x: [N, C, H, W] -> h: [N, C, H, W]; forward(x) = x + drop_path(gamma * h).
  /// fire_hooks = false calls the children's forward() directly: the per-sample gradient
  /// rule of gamma recomputes h with it, and the children's hooks (which per-sample tools
  /// use to capture each layer's call) must not see that recomputation as a second call.
  Tensor branch(const Tensor& x, bool fire_hooks = true);
  std::string name() const override { return "ConvNeXtBlock"; }

  nn::Param gamma;  // [C], undefined without layer scale
  std::shared_ptr<nn::Conv2d> conv_dw;
  std::shared_ptr<nn::Module> norm;  // LayerNorm2d (conv_mlp) or LayerNorm (NHWC)
  std::shared_ptr<ConvNeXtMlp> mlp;
  std::shared_ptr<nn::Module> drop_path;

 private:
  bool conv_mlp_;
};

/// downsample (Identity, or LayerNorm2d + 2x2 stride-2 conv) then the blocks.
///   x: [N, C_in, H, W] -> [N, C_out, H / stride, W / stride]
class ConvNeXtStage : public nn::Module {
 public:
  ConvNeXtStage(int64_t in_chs, int64_t out_chs, bool downsample, int64_t kernel_size,
                const std::vector<double>& drop_path_rates, const ConvNeXtOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "ConvNeXtStage"; }

  std::shared_ptr<nn::Module> downsample;
  std::shared_ptr<nn::Sequential> blocks;
};

/// timm's NormMlpClassifierHead without hidden layer: global average pool -> LayerNorm2d ->
/// flatten -> dropout -> fc.   x: [N, C, H, W] -> [N, num_classes] ([N, C] with pre_logits
/// or num_classes == 0)
class ConvNeXtHead : public nn::Module {
 public:
  ConvNeXtHead(int64_t in_features, int64_t num_classes, double drop_rate, double norm_eps);
  Tensor forward(const Tensor& x) override { return forward(x, false); }
  Tensor forward(const Tensor& x, bool pre_logits);
  std::string name() const override { return "NormMlpClassifierHead"; }

  std::shared_ptr<nn::AdaptiveAvgPool2d> global_pool;
  std::shared_ptr<nn::LayerNorm2d> norm;
  std::shared_ptr<nn::Flatten> flatten;
  std::shared_ptr<nn::Dropout> drop;
  std::shared_ptr<nn::Module> fc;  // Linear, or Identity when num_classes == 0
};

/// x: [N, in_chans, H, W] -> [N, num_classes]. Throws kern::Error naming the field for bad
/// options (mismatched depths/dims, an even kernel, ...).
/// Init (timm): conv and linear weights trunc_normal(std 0.02, cut at +-2 absolute), their
/// biases zero, norms weight 1 / bias 0, gamma = ls_init_value, head.fc scaled by
/// head_init_scale.
class ConvNeXt : public nn::Module {
 public:
  explicit ConvNeXt(const ConvNeXtOptions& options = {});
  Tensor forward(const Tensor& x) override { return forward_head(forward_features(x)); }
  /// Stem and stages: x: [N, in_chans, H, W] -> [N, dims.back(), H', W'].
  Tensor forward_features(const Tensor& x);
  /// Head: features [N, C, H', W'] -> logits [N, num_classes] (pre_logits: [N, C], before dropout).
  Tensor forward_head(const Tensor& features, bool pre_logits = false);
  std::string name() const override { return "ConvNeXt"; }

  const ConvNeXtOptions& options() const { return options_; }
  /// Channels of the features (dims.back()).
  int64_t num_features() const { return options_.dims.back(); }

  std::shared_ptr<nn::Sequential> stem;
  std::shared_ptr<nn::Sequential> stages;  // of ConvNeXtStage
  std::shared_ptr<ConvNeXtHead> head;

 private:
  void init_weights();
  ConvNeXtOptions options_;
};

/// The options of a registered timm variant ("convnext_atto", ..., "convnext_base") with
/// the common model options applied; edit them (kernel_size = 31, ...) and build a ConvNeXt.
/// Throws for an unknown variant, listing the known ones.
ConvNeXtOptions convnext_options(const std::string& variant, const ModelOptions& options = {});

}  // namespace kern::models
