#pragma once
// InceptionNeXt (Yu et al. 2023, "InceptionNeXt: When Inception Meets ConvNeXt"), timm's
// MetaNeXt with the InceptionDWConv2d token mixer. Module tree, parameter and buffer names
// are timm's (timm/models/inception_next.py), so a timm state_dict saved as safetensors
// loads with load_state_dict(strict = true):
//
//   stem.0 (Conv2d 4x4 s4), stem.1 (BatchNorm2d)
//   stages.{i}.downsample.0 (BatchNorm2d), .1 (Conv2d 2x2 s2)        for i > 0
//   stages.{i}.blocks.{j}.token_mixer.{dwconv_hw, dwconv_w, dwconv_h} (depthwise)
//   stages.{i}.blocks.{j}.norm (BatchNorm2d), .mlp.{fc1, fc2} (1x1 convs), .gamma
//   head.fc1 (Linear), head.norm (LayerNorm eps 1e-6), head.fc2 (Linear)
//
//   auto model = kern::models::create_model("inception_next_tiny", {.num_classes = 10});
//   auto tiny = std::make_shared<kern::models::InceptionNeXt>(
//       kern::models::InceptionNeXtOptions{.depths = {1, 1}, .dims = {16, 32}});
#include <kern/models/registry.hpp>
#include <kern/nn/nn.hpp>

#include <memory>
#include <vector>

namespace kern::models {

/// timm's MetaNeXt keyword arguments (defaults: inception_next_tiny).
struct InceptionNeXtOptions {
  std::vector<int64_t> depths{3, 3, 9, 3};     // blocks per stage
  std::vector<int64_t> dims{96, 192, 384, 768};  // channels per stage
  int64_t square_kernel_size = 3;  // token mixer: dwconv_hw is k x k
  int64_t band_kernel_size = 11;   // token mixer: dwconv_w is 1 x k, dwconv_h is k x 1
  double branch_ratio = 0.125;     // each conv branch gets int(dim * branch_ratio) channels
  std::vector<double> mlp_ratios{4, 4, 4, 3};  // stage i uses [i] (as timm), or one value for all
  double ls_init_value = 1e-6;     // layer scale gamma; 0 disables it (no gamma parameter)
  double head_mlp_ratio = 3;       // MlpClassifierHead hidden = int(head_mlp_ratio * dims.back())
  int64_t num_classes = 1000;      // 0: head.fc2 is Identity (forward gives pre-logits)
  int64_t in_chans = 3;
  double drop_rate = 0.0;          // dropout before head.fc2
  double drop_path_rate = 0.0;     // stochastic depth, linear 0..rate over all blocks
};

namespace inception_next {

/// Channel split (C - 3gc, gc, gc, gc) with gc = int(C * branch_ratio): identity on the first
/// part, depthwise k x k, 1 x band and band x 1 convs (same padding) on the others, concat.
///   x: [N, C, H, W] -> [N, C, H, W]
class InceptionDWConv2d : public nn::Module {
 public:
  InceptionDWConv2d(int64_t dim, int64_t square_kernel_size = 3, int64_t band_kernel_size = 11,
                    double branch_ratio = 0.125);
  Tensor forward(const Tensor& x) override;
  /// forward without firing the convs' hooks (see MetaNeXtBlock::branch).
  Tensor forward_unhooked(const Tensor& x);
  std::string name() const override { return "InceptionDWConv2d"; }
  /// Channels of each part, in order: identity, hw, w, h.
  const std::vector<int64_t>& split_sizes() const { return split_; }

  std::shared_ptr<nn::Conv2d> dwconv_hw, dwconv_w, dwconv_h;

 private:
  Tensor run(const Tensor& x, bool fire_hooks);
  std::vector<int64_t> split_;
};

/// timm's ConvMlp: fc1 (1x1 conv), norm (Identity), GELU, dropout (p = 0), fc2 (1x1 conv).
///   x: [N, C, H, W] -> [N, C, H, W] (hidden: [N, int(mlp_ratio * C), H, W])
class ConvMlp : public nn::Module {
 public:
  ConvMlp(int64_t in_features, int64_t hidden_features);
  Tensor forward(const Tensor& x) override;
  /// forward without firing the children's hooks (see MetaNeXtBlock::branch).
  Tensor forward_unhooked(const Tensor& x);
  std::string name() const override { return "ConvMlp"; }

  std::shared_ptr<nn::Conv2d> fc1, fc2;
  std::shared_ptr<nn::Module> norm, act, drop;
};

/// token_mixer -> norm (BatchNorm2d) -> mlp (1x1 conv, GELU, 1x1 conv) -> * gamma, then
/// drop_path and the residual.   x: [N, C, H, W] -> [N, C, H, W]
class MetaNeXtBlock : public nn::Module {
 public:
  MetaNeXtBlock(int64_t dim, const InceptionNeXtOptions& o, double mlp_ratio, double drop_path);
  Tensor forward(const Tensor& x) override;
  /// The residual branch before the layer scale, h = mlp(norm(token_mixer(x))):
  ///   x: [N, C, H, W] -> h: [N, C, H, W]; forward(x) = x + drop_path(gamma * h).
  /// fire_hooks = false calls the children's forward() directly: the per-sample gradient
  /// rule of gamma recomputes h with it, unseen by the children's hooks.
  Tensor branch(const Tensor& x, bool fire_hooks = true);
  std::string name() const override { return "MetaNeXtBlock"; }

  std::shared_ptr<InceptionDWConv2d> token_mixer;
  std::shared_ptr<nn::BatchNorm2d> norm;
  std::shared_ptr<ConvMlp> mlp;
  std::shared_ptr<nn::Module> drop_path;  // DropPath, or Identity when the rate is 0
  nn::Param gamma;                        // [C], undefined when ls_init_value == 0
};

/// downsample (BatchNorm2d, 2x2 s2 conv; Identity for the first stage) then the blocks.
///   x: [N, C_in, H, W] -> [N, C_out, H/2, W/2] (first stage: [N, C_out, H, W])
class MetaNeXtStage : public nn::Module {
 public:
  MetaNeXtStage(int64_t in_chs, int64_t out_chs, bool downsample, int64_t depth,
                const std::vector<double>& drop_paths, double mlp_ratio,
                const InceptionNeXtOptions& o);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "MetaNeXtStage"; }

  std::shared_ptr<nn::Module> downsample;
  std::shared_ptr<nn::Sequential> blocks;
};

/// timm's MlpClassifierHead: global average pool, fc1, GELU, LayerNorm(eps 1e-6), dropout, fc2.
///   x: [N, C, H, W] -> [N, num_classes] ([N, hidden] for pre-logits or num_classes == 0)
class MlpClassifierHead : public nn::Module {
 public:
  MlpClassifierHead(int64_t in_features, int64_t num_classes, double mlp_ratio, double drop_rate);
  Tensor forward(const Tensor& x) override { return forward(x, false); }
  Tensor forward(const Tensor& x, bool pre_logits);
  std::string name() const override { return "MlpClassifierHead"; }

  int64_t num_features;  // hidden = int(mlp_ratio * in_features)
  std::shared_ptr<nn::Module> global_pool;
  std::shared_ptr<nn::Linear> fc1;
  std::shared_ptr<nn::Module> act;
  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<nn::Module> drop;
  std::shared_ptr<nn::Module> fc2;  // Linear, or Identity when num_classes == 0
};

}  // namespace inception_next

/// timm's MetaNeXt with InceptionDWConv2d token mixers.
///   x: [N, in_chans, H, W] -> [N, num_classes]; H and W divisible by 4 * 2^(stages - 1).
/// Init (timm): every Conv2d / Linear weight trunc_normal(std 0.02, bounds +-2), bias 0;
/// norms weight 1, bias 0; gamma = ls_init_value. Options are validated (kern::Error names
/// the field).
class InceptionNeXt : public nn::Module {
 public:
  explicit InceptionNeXt(const InceptionNeXtOptions& options = {});
  Tensor forward(const Tensor& x) override { return forward_head(forward_features(x)); }
  /// stem and stages: [N, in_chans, H, W] -> [N, dims.back(), H / 2^(stages + 1), ...]
  Tensor forward_features(const Tensor& x);
  /// [N, dims.back(), h, w] -> [N, num_classes] (pre_logits: [N, head_hidden_size])
  Tensor forward_head(const Tensor& x, bool pre_logits = false);
  std::string name() const override { return "MetaNeXt"; }
  const InceptionNeXtOptions& options() const { return options_; }

  int64_t num_features;      // dims.back()
  int64_t head_hidden_size;  // head.fc1's output size
  std::shared_ptr<nn::Sequential> stem;
  std::shared_ptr<nn::Sequential> stages;
  std::shared_ptr<inception_next::MlpClassifierHead> head;

 private:
  InceptionNeXtOptions options_;
};

/// timm's variants (ModelOptions override num_classes, in_chans, drop_rate, drop_path_rate).
/// Also registered under these names for create_model.
std::shared_ptr<InceptionNeXt> inception_next_atto(const ModelOptions& o = {});   //  4.2M
std::shared_ptr<InceptionNeXt> inception_next_tiny(const ModelOptions& o = {});   // 28.1M
std::shared_ptr<InceptionNeXt> inception_next_small(const ModelOptions& o = {});  // 49.4M
std::shared_ptr<InceptionNeXt> inception_next_base(const ModelOptions& o = {});   // 86.7M

}  // namespace kern::models
