#pragma once
// Structural re-parameterization (RepVGG, RepLKNet, UniRepLKNet): a block trains with several
// parallel conv+BN branches and, for inference, is fused into ONE convolution whose eval-mode
// output is identical. This header holds the fusion algebra and the two reparameterizable
// large-kernel convolutions:
//   - ReparamLargeKernelConv (RepLKNet, Ding et al. 2022): large kernel + small kernel branch.
//   - DilatedReparamBlock (UniRepLKNet, Ding et al. 2024): large kernel + dilated small kernels.
//
// Why it is exact: in eval mode BatchNorm is the per-channel affine map
// y = (x - mean) * g / sqrt(var + eps) + beta, so conv -> BN is a conv with scaled kernel and a
// bias; parallel convs with the same input, stride and groups add, and a k x k kernel equals a
// K x K kernel (K > k, same parity) with zeros around it, and a dilated kernel equals a dense
// kernel with zeros between its taps. Training-mode BN uses batch statistics, which no fixed
// kernel can reproduce: every fusion here demands eval mode.
//
// Shapes legend: weight [C_out, C_in/groups, kH, kW] (OIHW), bias [C_out].
#include <kern/nn/conv.hpp>
#include <kern/nn/norm.hpp>

#include <array>
#include <memory>
#include <vector>

namespace kern::models {

// ---------------------------------------------------------------- fusion utilities

/// A convolution's kernel and bias, the result of a fusion.
///   weight: [C_out, C_in/groups, kH, kW], bias: [C_out]
struct ConvKernel {
  Tensor weight;
  Tensor bias;
};

/// Folds an eval-mode BatchNorm2d into the convolution before it:
///   bn(conv(x; w, b)) = conv(x; w * t, beta + (b - mean) * t),  t = gamma / sqrt(var + eps)
/// weight: [C_out, C_in/groups, kH, kW], bias: [C_out] or undefined (a conv without bias),
/// bn over C_out channels -> {[C_out, C_in/groups, kH, kW], [C_out]} in weight's dtype.
/// A BN without affine counts as gamma = 1, beta = 0.
/// Throws kern::Error if bn is in training mode (it would normalize with batch statistics)
/// or keeps no running statistics, or if the channel counts differ.
/// Written with kern ops, so it is differentiable w.r.t. the weight and bn's parameters.
ConvKernel fuse_conv_bn(const Tensor& weight, const Tensor& bias, const nn::BatchNorm2d& bn);
/// Same, from a Conv2d (its bias and its parameterization multipliers are included).
ConvKernel fuse_conv_bn(const nn::Conv2d& conv, const nn::BatchNorm2d& bn);

/// Zero-pads a kernel to `size`, centered:
///   kernel: [O, I, kH, kW] -> [O, I, size[0], size[1]]
/// (size - k must be even and >= 0 per dim, so the centers line up). A conv with the padded
/// kernel and padding p + (size - k) / 2 equals the conv with the original kernel and padding p.
Tensor pad_kernel_to(const Tensor& kernel, std::array<int64_t, 2> size);
inline Tensor pad_kernel_to(const Tensor& kernel, int64_t size) {
  return pad_kernel_to(kernel, {size, size});
}

/// The dense kernel equivalent to a dilated one: inserts d - 1 zeros between taps.
///   kernel: [O, I, kH, kW], dilation (dH, dW) -> [O, I, dH*(kH-1)+1, dW*(kW-1)+1]
/// conv2d(x, kernel, dilation d, padding p) == conv2d(x, dilate_kernel(kernel, d), padding p).
/// (UniRepLKNet does this with a stride-d transposed conv by a 1x1 identity; here it is
/// pad + reshape + narrow, differentiable.)
Tensor dilate_kernel(const Tensor& kernel, std::array<int64_t, 2> dilation);
inline Tensor dilate_kernel(const Tensor& kernel, int64_t dilation) {
  return dilate_kernel(kernel, {dilation, dilation});
}

/// Sums parallel branches (same input, stride and groups; each padded so that its output is
/// centered like the others'): every kernel is zero-padded (centered) to the largest kH and kW
/// among them and the kernels and biases are added (an undefined bias counts as zero; the
/// result's bias is undefined only if all are).
///   branches[i]: {[O, I, kH_i, kW_i], [O] or undefined} -> {[O, I, max kH, max kW], [O]}
ConvKernel sum_branches(const std::vector<ConvKernel>& branches);

// ---------------------------------------------------------------- reparameterizable modules

/// Implemented by modules that can fuse their training-time branches into one conv.
class Reparameterizable {
 public:
  virtual ~Reparameterizable() = default;
  /// Fuses in place (the module must be in eval mode). Returns false, changing nothing, when
  /// the module is already fused, so a second call is a no-op.
  virtual bool reparameterize() = 0;
  virtual bool is_reparameterized() const = 0;
};

/// Fuses every Reparameterizable module in the tree of `module` (itself included) in place
/// and returns how many were fused. Throws kern::Error, before changing anything, if any of
/// them is still in training mode. Calling it again returns 0.
int64_t reparameterize(nn::Module& module);

/// conv_bn / conv_bn_relu of the RepLKNet repo: conv (bias=False) -> BatchNorm2d -> ReLU
/// (only with relu = true). Children: "conv", "bn", "nonlinear".
///   x: [N, C_in, H, W] -> [N, C_out, H_out, W_out]
struct ConvBNOptions {
  nn::Conv2dOptions conv;  // its bias setting is ignored (always bias=False)
  bool relu = false;
};

class ConvBN : public nn::Module {
 public:
  explicit ConvBN(const ConvBNOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "ConvBN"; }

  std::shared_ptr<nn::Conv2d> conv;
  std::shared_ptr<nn::BatchNorm2d> bn;
  std::shared_ptr<nn::Module> nonlinear;  // nn::ReLU, null without relu
};

/// ReparamLargeKernelConvOptions(in_channels, out_channels, kernel_size) with chained setters:
///   ReparamLargeKernelConvOptions(64, 64, 31).groups(64).small_kernel(5)
struct ReparamLargeKernelConvOptions {
  ReparamLargeKernelConvOptions(int64_t in_channels, int64_t out_channels, int64_t kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}
  ReparamLargeKernelConvOptions& stride(int64_t v) { stride_ = v; return *this; }
  ReparamLargeKernelConvOptions& groups(int64_t v) { groups_ = v; return *this; }
  /// Size of the parallel small kernel (odd, <= kernel_size); 0: no small branch.
  ReparamLargeKernelConvOptions& small_kernel(int64_t v) { small_kernel_ = v; return *this; }
  /// Build the fused (deploy) form directly: one conv "lkb_reparam" with bias.
  ReparamLargeKernelConvOptions& small_kernel_merged(bool v) { merged_ = v; return *this; }

  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  int64_t kernel_size() const { return kernel_size_; }
  int64_t stride() const { return stride_; }
  int64_t groups() const { return groups_; }
  int64_t small_kernel() const { return small_kernel_; }
  bool small_kernel_merged() const { return merged_; }

 private:
  int64_t in_channels_, out_channels_, kernel_size_;
  int64_t stride_ = 1;
  int64_t groups_ = 1;
  int64_t small_kernel_ = 5;  // RepLKNet's value
  bool merged_ = false;
};

/// RepLKNet's ReparamLargeKernelConv: conv_bn with a K x K kernel ("lkb_origin") plus a
/// parallel conv_bn with a k x k kernel ("small_conv"), both padded to keep the size
/// (padding K/2 and k/2), outputs added. reparameterize() (alias merge_kernel(), the repo's
/// name) replaces both by one K x K conv with bias, "lkb_reparam".
///   x: [N, C_in, H, W] -> [N, C_out, (H-1)/stride+1, (W-1)/stride+1]
/// Parameter names (repo's): lkb_origin.conv.weight, lkb_origin.bn.{weight,bias,running_*},
/// small_conv.conv.weight, small_conv.bn.*; fused: lkb_reparam.weight, lkb_reparam.bias.
class ReparamLargeKernelConv : public nn::Module, public Reparameterizable {
 public:
  explicit ReparamLargeKernelConv(const ReparamLargeKernelConvOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "ReparamLargeKernelConv"; }
  std::string extra_repr() const override;
  const ReparamLargeKernelConvOptions& options() const { return options_; }

  /// The fused kernel and bias (eval mode required): {[C_out, C_in/groups, K, K], [C_out]}.
  /// Does not change the module. (The repo's get_equivalent_kernel_bias.)
  ConvKernel equivalent_kernel_bias() const;
  bool reparameterize() override;
  bool merge_kernel() { return reparameterize(); }
  bool is_reparameterized() const override { return lkb_reparam != nullptr; }

  std::shared_ptr<ConvBN> lkb_origin;         // null once fused
  std::shared_ptr<ConvBN> small_conv;         // null once fused or without a small kernel
  std::shared_ptr<nn::Conv2d> lkb_reparam;    // null until fused

 private:
  ReparamLargeKernelConvOptions options_;
};

/// DilatedReparamBlockOptions(channels, kernel_size): the branches default to UniRepLKNet's
/// table (kernel sizes / dilations):
///   17: (5,9,3,3,3)/(1,2,4,5,7)   15: (5,7,3,3,3)/(1,2,3,5,7)   13: (5,7,3,3,3)/(1,2,3,4,5)
///   11: (5,5,3,3,3)/(1,2,3,4,5)    9: (5,5,3,3)/(1,2,3,4)        7: (5,3,3)/(1,2,3)
///    5: (3,3)/(1,2)
/// Other kernel sizes need explicit .branches(kernel_sizes, dilations).
struct DilatedReparamBlockOptions {
  DilatedReparamBlockOptions(int64_t channels, int64_t kernel_size)
      : channels_(channels), kernel_size_(kernel_size) {}
  /// Explicit dilated branches: kernel_sizes[i] (odd) with dilations[i] (>= 1), each with
  /// dilations[i] * (kernel_sizes[i] - 1) + 1 <= kernel_size.
  DilatedReparamBlockOptions& branches(std::vector<int64_t> kernel_sizes,
                                       std::vector<int64_t> dilations) {
    kernel_sizes_ = std::move(kernel_sizes);
    dilations_ = std::move(dilations);
    explicit_ = true;
    return *this;
  }
  /// Build the fused (deploy) form directly: "lk_origin" with bias and no branches.
  DilatedReparamBlockOptions& deploy(bool v) { deploy_ = v; return *this; }

  int64_t channels() const { return channels_; }
  int64_t kernel_size() const { return kernel_size_; }
  bool has_explicit_branches() const { return explicit_; }
  const std::vector<int64_t>& kernel_sizes() const { return kernel_sizes_; }
  const std::vector<int64_t>& dilations() const { return dilations_; }
  bool deploy() const { return deploy_; }

 private:
  int64_t channels_, kernel_size_;
  std::vector<int64_t> kernel_sizes_, dilations_;
  bool explicit_ = false;
  bool deploy_ = false;
};

/// UniRepLKNet's DilatedReparamBlock: a depthwise K x K conv "lk_origin" (no bias) ->
/// "origin_bn", plus for each branch (k, r) a depthwise k x k conv with dilation r and
/// padding r*(k-1)/2 "dil_conv_k{k}_{r}" -> "dil_bn_k{k}_{r}"; outputs added.
/// reparameterize() (alias merge_dilated_branches(), the repo's name) turns lk_origin into one
/// K x K depthwise conv with bias and removes the BNs and branches.
///   x: [N, C, H, W] -> [N, C, H, W]
class DilatedReparamBlock : public nn::Module, public Reparameterizable {
 public:
  explicit DilatedReparamBlock(const DilatedReparamBlockOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "DilatedReparamBlock"; }
  std::string extra_repr() const override;
  const DilatedReparamBlockOptions& options() const { return options_; }

  /// The fused depthwise kernel and bias (eval mode required): {[C, 1, K, K], [C]}.
  ConvKernel equivalent_kernel_bias() const;
  bool reparameterize() override;
  bool merge_dilated_branches() { return reparameterize(); }
  bool is_reparameterized() const override { return origin_bn == nullptr; }

  /// The branch table in use (kernel sizes and dilations, in order).
  const std::vector<int64_t>& kernel_sizes() const { return kernel_sizes_; }
  const std::vector<int64_t>& dilations() const { return dilations_; }

  std::shared_ptr<nn::Conv2d> lk_origin;                 // bias only once fused
  std::shared_ptr<nn::BatchNorm2d> origin_bn;            // null once fused
  std::vector<std::shared_ptr<nn::Conv2d>> dil_convs;    // empty once fused
  std::vector<std::shared_ptr<nn::BatchNorm2d>> dil_bns;

 private:
  DilatedReparamBlockOptions options_;
  std::vector<int64_t> kernel_sizes_, dilations_;
};

}  // namespace kern::models
