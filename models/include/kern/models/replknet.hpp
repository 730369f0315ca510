#pragma once
// RepLKNet (Ding et al., "Scaling Up Your Kernels to 31x31", CVPR 2022; reference repo
// DingXiaoH/RepLKNet-pytorch, not in timm): a ConvNet of depthwise kernels up to 31x31, each
// trained with a parallel 5x5 branch and fused into one kernel for inference (structural
// re-parameterization, see <kern/models/reparam.hpp>).
//
// Structure and parameter names follow the repo, so its state_dict (saved as safetensors)
// loads with load_state_dict(strict=true):
//   stem.{0..3}                    conv_bn_relu: 3x3 s2 -> dw 3x3 -> 1x1 -> dw 3x3 s2
//   stages.{i}.blocks.{2j}         RepLKBlock   (prelkb_bn, pw1, large_kernel, pw2)
//   stages.{i}.blocks.{2j+1}       ConvFFN      (preffn_bn, pw1, pw2)
//   transitions.{i}.{0,1}          conv_bn_relu 1x1 then dw 3x3 s2, between stages
//   norm, head                     BatchNorm2d, Linear (after global average pooling)
//
//   auto model = kern::models::replknet_31b({.num_classes = 10});
//   ... train ...
//   model->eval();
//   kern::models::reparameterize(*model);   // every large_kernel -> one lkb_reparam conv
#include <kern/models/reparam.hpp>
#include <kern/models/registry.hpp>
#include <kern/nn/activation.hpp>
#include <kern/nn/container.hpp>
#include <kern/nn/dropout.hpp>
#include <kern/nn/linear.hpp>
#include <kern/nn/pool.hpp>

#include <memory>
#include <vector>

namespace kern::models {

/// RepLKBlock: x + drop_path(pw2(relu(large_kernel(pw1(prelkb_bn(x)))))), where pw1 is
/// conv_bn_relu 1x1 (in -> dw channels), large_kernel a depthwise ReparamLargeKernelConv and
/// pw2 conv_bn 1x1 (dw -> in channels).   x: [N, C, H, W] -> [N, C, H, W]
struct RepLKBlockOptions {
  int64_t in_channels = 0;
  int64_t dw_channels = 0;
  int64_t kernel_size = 31;   // the large depthwise kernel (odd)
  int64_t small_kernel = 5;   // 0: no small-kernel branch
  double drop_path = 0.0;
  bool small_kernel_merged = false;
};

class RepLKBlock : public nn::Module {
 public:
  explicit RepLKBlock(const RepLKBlockOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "RepLKBlock"; }

  std::shared_ptr<ConvBN> pw1;                        // 1x1 conv_bn_relu
  std::shared_ptr<ConvBN> pw2;                        // 1x1 conv_bn
  std::shared_ptr<ReparamLargeKernelConv> large_kernel;
  std::shared_ptr<nn::ReLU> lk_nonlinear;
  std::shared_ptr<nn::BatchNorm2d> prelkb_bn;
  std::shared_ptr<nn::Module> drop_path;              // DropPath, or Identity when 0
};

/// ConvFFN: x + drop_path(pw2(gelu(pw1(preffn_bn(x))))), pw1/pw2 1x1 conv_bn.
///   x: [N, C_in, H, W] -> [N, C_out, H, W] (C_out == C_in for the residual)
struct ConvFFNOptions {
  int64_t in_channels = 0;
  int64_t internal_channels = 0;
  int64_t out_channels = 0;
  double drop_path = 0.0;
};

class ConvFFN : public nn::Module {
 public:
  explicit ConvFFN(const ConvFFNOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "ConvFFN"; }

  std::shared_ptr<nn::Module> drop_path;
  std::shared_ptr<nn::BatchNorm2d> preffn_bn;
  std::shared_ptr<ConvBN> pw1, pw2;
  std::shared_ptr<nn::GELU> nonlinear;
};

/// A stage: `blocks` alternates RepLKBlock and ConvFFN (num_blocks of each, block j's pair
/// sharing drop_paths[j]); `norm` is an Identity (the repo's BN option for downstream feature
/// maps is not built here).   x: [N, C, H, W] -> [N, C, H, W]
struct RepLKNetStageOptions {
  int64_t channels = 0;
  int64_t num_blocks = 0;
  int64_t kernel_size = 31;
  std::vector<double> drop_paths;  // one per block; empty: all 0
  int64_t small_kernel = 5;
  double dw_ratio = 1.0;
  double ffn_ratio = 4.0;
  bool small_kernel_merged = false;
};

class RepLKNetStage : public nn::Module {
 public:
  explicit RepLKNetStage(const RepLKNetStageOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "RepLKNetStage"; }

  std::shared_ptr<nn::ModuleList> blocks;
  std::shared_ptr<nn::Identity> norm;
};

/// RepLKNet's configuration. Defaults are RepLKNet-31B (79.9M parameters training-time).
/// Designated initializers: RepLKNetOptions{.large_kernel_sizes = {13, 11}, .layers = {1, 1},
/// .channels = {8, 16}, .num_classes = 10}.
struct RepLKNetOptions {
  std::vector<int64_t> large_kernel_sizes{31, 29, 27, 13};  // per stage, odd
  std::vector<int64_t> layers{2, 2, 18, 2};                 // RepLK blocks (= ConvFFNs) per stage
  std::vector<int64_t> channels{128, 256, 512, 1024};       // per stage
  int64_t small_kernel = 5;     // parallel small kernel (odd, <= every large kernel); 0: none
  double dw_ratio = 1.0;        // depthwise channels = int(channels * dw_ratio)
  double ffn_ratio = 4.0;       // ConvFFN hidden channels = int(channels * ffn_ratio)
  int64_t in_chans = 3;
  int64_t num_classes = 1000;   // 0: no head, forward returns the pooled features [N, C]
  double drop_rate = 0.0;       // dropout before the head (kern addition; the repo has none)
  double drop_path_rate = 0.0;  // stochastic depth, linear over blocks (the repo's factories: 0.3)
  bool small_kernel_merged = false;  // build the deploy form (lkb_reparam) directly
};

/// RepLKNet.   x: [N, in_chans, H, W] -> [N, num_classes] (or [N, channels.back()])
/// The spatial size shrinks by 4 in the stem and by 2 at each transition.
class RepLKNet : public nn::Module {
 public:
  explicit RepLKNet(const RepLKNetOptions& options = {});
  Tensor forward(const Tensor& x) override;
  /// Stem, stages and transitions: [N, in_chans, H, W] -> [N, channels.back(), H/2^(n+1), W/2^(n+1)]
  Tensor forward_features(const Tensor& x);
  std::string name() const override { return "RepLKNet"; }
  const RepLKNetOptions& options() const { return options_; }
  /// The repo's name for reparameterize(*this): fuses every large_kernel in place (eval mode).
  int64_t structural_reparam() { return reparameterize(*this); }

  std::shared_ptr<nn::ModuleList> stem;         // 4 ConvBN (with ReLU)
  std::shared_ptr<nn::ModuleList> stages;       // RepLKNetStage
  std::shared_ptr<nn::ModuleList> transitions;  // Sequential(ConvBN, ConvBN)
  std::shared_ptr<nn::BatchNorm2d> norm;
  std::shared_ptr<nn::AdaptiveAvgPool2d> avgpool;
  std::shared_ptr<nn::Module> head_drop;        // Dropout, null when drop_rate == 0
  std::shared_ptr<nn::Module> head;             // Linear, or Identity when num_classes == 0

 private:
  RepLKNetOptions options_;
};

/// The repo's configurations (create_RepLKNet31B / 31L / XL), registered as "replknet_31b",
/// "replknet_31l", "replknet_xl". `o` overrides num_classes, in_chans, drop_rate and
/// drop_path_rate.
std::shared_ptr<RepLKNet> replknet_31b(const ModelOptions& o = {});
std::shared_ptr<RepLKNet> replknet_31l(const ModelOptions& o = {});
std::shared_ptr<RepLKNet> replknet_xl(const ModelOptions& o = {});

}  // namespace kern::models
