#pragma once
// Group-equivariant convolutions on the square grid (Cohen & Welling 2016, "Group Equivariant
// Convolutional Networks"): the plane groups p4 (translations and rotations by 90 degrees) and
// p4m (also mirror reflections), lifting and group convolutions, group pooling, a group batch
// norm, and the P4CNN / P4MCNN classifiers registered as "p4cnn" / "p4mcnn".
// Further down: sampled Lie-group convolutions (LieConv, models/lieconv.cpp) on planar point
// clouds for T(2) and SE(2).
//
// Legend: N batch, C channels, |G| the order of the point group (4 for p4, 8 for p4m), H, W
// spatial, k the kernel size. A feature map on the group is [N, C, |G|, H, W]: channel c at
// group element g is the image [H, W] at [n, c, g].
//
// The point group. Element g = 4 m + r (m in {0, 1}, r in {0, 1, 2, 3}; p4 has m = 0 only)
// acts on an image (the last two dims) as
//     T_g x = rot90(m ? flip(x, {-1}) : x, r, {-2, -1})
// i.e. first mirror the columns m times, then rotate r times by 90 degrees counter-clockwise
// (kern::rot90: out[i, j] = x[j, W - 1 - i]). In centred (row, col) coordinates u = (a, b) the
// rotation is R (a, b) = (-b, a) and the mirror M (a, b) = (a, -b); (T_g x)(u) = x(g^-1 u).
// Products follow from M R = R^-1 M:  (m1, r1)(m2, r2) = (m1 ^ m2, r1 + (-1)^m1 r2 mod 4).
// Rotations about the centre are exact on the grid; with square images (for r != 0), odd or
// even sizes, stride 1 and symmetric padding every layer here is exactly equivariant:
//     layer(g . x) == g . layer(x)
// where g acts on an image by T_g and on a group feature map by
//     (g . f)[n, c, h] = T_g f[n, c, g^-1 h]      (transform each map, permute the group axis).
//
//   auto lift = std::make_shared<kern::models::LiftingConv2d>(
//       kern::models::GroupConvOptions(1, 8, 3).group("p4m").padding(kern::nn::kSame));
//   auto model = kern::models::create_model("p4cnn", {.num_classes = 10, .in_chans = 1});
#include <kern/models/registry.hpp>
#include <kern/nn/nn.hpp>

#include <array>
#include <memory>
#include <string>
#include <vector>

namespace kern::models {

/// The point group of p4 ("p4": C4, order 4) or p4m ("p4m": D4, order 8), see the file comment.
class PlaneGroup {
 public:
  /// "p4" or "p4m"; anything else throws a kern::Error naming `field` and the value.
  explicit PlaneGroup(const std::string& name, const std::string& field = "group");
  const std::string& name() const { return name_; }
  /// |G|: 4 for p4, 8 for p4m.
  int64_t order() const { return order_; }
  bool has_mirror() const { return order_ == 8; }
  /// The index of the product a * b (apply b first, then a).
  int64_t mul(int64_t a, int64_t b) const;
  /// The index of g^-1.
  int64_t inv(int64_t g) const;
  /// T_g on the last two dims of x (any rank >= 2; square last dims when g has a rotation).
  Tensor transform_image(const Tensor& x, int64_t g) const;
  /// The action on a group feature map x: [..., |G|, H, W]:
  ///   out[..., h, :, :] = T_g x[..., g^-1 h, :, :]
  Tensor transform_features(const Tensor& x, int64_t g) const;
  /// [g^-1 h for h in G] as an int64 tensor [|G|] (the group-axis permutation of a filter).
  Tensor left_inverse_index(int64_t g) const;

 private:
  std::string name_;
  int64_t order_ = 4;
};

/// GroupConvOptions(in_channels, out_channels, kernel_size) with chained setters:
///   GroupConvOptions(10, 10, 3).group("p4").padding(nn::kSame).bias(false)
/// Channels count orbits: a layer with out_channels C has C * |G| scalar feature maps.
struct GroupConvOptions {
  GroupConvOptions(int64_t in_channels, int64_t out_channels, int64_t kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}
  GroupConvOptions& in_channels(int64_t v) { in_channels_ = v; return *this; }
  GroupConvOptions& out_channels(int64_t v) { out_channels_ = v; return *this; }
  GroupConvOptions& kernel_size(int64_t v) { kernel_size_ = v; return *this; }
  /// "p4" (default) or "p4m".
  GroupConvOptions& group(std::string v) { group_ = std::move(v); return *this; }
  /// Symmetric zero padding on both spatial dims.
  GroupConvOptions& padding(int64_t v) { padding_ = v; same_ = false; return *this; }
  /// (kernel_size - 1) / 2: keeps H and W (odd kernel sizes only).
  GroupConvOptions& padding(nn::PaddingSame) { padding_ = 0; same_ = true; return *this; }
  GroupConvOptions& padding(nn::PaddingValid) { padding_ = 0; same_ = false; return *this; }
  GroupConvOptions& bias(bool v) { bias_ = v; return *this; }

  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  int64_t kernel_size() const { return kernel_size_; }
  const std::string& group() const { return group_; }
  /// The symmetric padding used (resolves kSame).
  int64_t padding() const { return same_ ? (kernel_size_ - 1) / 2 : padding_; }
  bool padding_same() const { return same_; }
  bool bias() const { return bias_; }

 private:
  int64_t in_channels_;
  int64_t out_channels_;
  int64_t kernel_size_;
  std::string group_ = "p4";
  int64_t padding_ = 0;
  bool same_ = false;
  bool bias_ = true;
};

/// Lifting convolution Z2 -> G (GrouPy's P4ConvZ2 / P4MConvZ2): the filter bank is the base
/// filter transformed by every group element, out[:, o, g] = conv2d(x, T_g weight[o]) + bias[o].
///   x: [N, C_in, H, W], weight: [C_out, C_in, k, k], bias: [C_out]
///   -> [N, C_out, |G|, Ho, Wo] (Ho = H + 2 padding - k + 1)
/// The filter bank is built from `weight` in forward with differentiable ops, so gradients
/// (of any order) reach weight. Init as PyTorch's Conv2d over the weight's shape:
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = C_in k k, bias likewise.
class LiftingConv2d : public nn::Module {
 public:
  explicit LiftingConv2d(const GroupConvOptions& options);
  void reset_parameters(Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "LiftingConv2d"; }
  std::string extra_repr() const override;
  const GroupConvOptions& options() const { return options_; }
  const PlaneGroup& group() const { return group_; }
  /// The expanded filter bank [C_out * |G|, C_in, k, k] (row o * |G| + g is T_g weight[o]).
  Tensor filter_bank() const;

  nn::Param weight;  // [C_out, C_in, k, k]
  nn::Param bias;    // [C_out] (shared by the |G| maps of a channel), undefined with bias(false)

 private:
  GroupConvOptions options_;
  PlaneGroup group_;
};

/// Group convolution G -> G (GrouPy's P4ConvP4 / P4MConvP4M):
///   out[:, o, g] = sum_{i, h} conv2d(x[:, i, h], T_g weight[o, i, g^-1 h]) + bias[o]
/// i.e. the filter for output element g is the base filter spatially transformed by g AND with
/// its group axis permuted by h -> g^-1 h.
///   x: [N, C_in, |G|, H, W], weight: [C_out, C_in, |G|, k, k], bias: [C_out]
///   -> [N, C_out, |G|, Ho, Wo]
/// Init as PyTorch's Conv2d over the weight's shape: fan_in = C_in |G| k k.
class GroupConv2d : public nn::Module {
 public:
  explicit GroupConv2d(const GroupConvOptions& options);
  void reset_parameters(Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "GroupConv2d"; }
  std::string extra_repr() const override;
  const GroupConvOptions& options() const { return options_; }
  const PlaneGroup& group() const { return group_; }
  /// The expanded filter bank [C_out * |G|, C_in * |G|, k, k] (row o * |G| + g, column
  /// i * |G| + h is T_g weight[o, i, g^-1 h]).
  Tensor filter_bank() const;

  nn::Param weight;  // [C_out, C_in, |G|, k, k]
  nn::Param bias;    // [C_out], undefined with bias(false)

 private:
  GroupConvOptions options_;
  PlaneGroup group_;
};

/// Pooling over the group axis: x: [N, C, |G|, H, W] -> [N, C, H, W], "max" or "mean".
/// The result is invariant to the group-axis permutation, so it transforms as an image
/// (T_g) and global spatial pooling after it is invariant.
Tensor group_pool(const Tensor& x, const std::string& mode = "max");

/// Module form of group_pool (no parameters). `group` fixes |G| for the input check.
class GroupPool : public nn::Module {
 public:
  explicit GroupPool(const std::string& group = "p4", const std::string& mode = "max");
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "GroupPool"; }
  std::string extra_repr() const override;

 private:
  PlaneGroup group_;
  std::string mode_;
};

/// Batch norm of a group feature map with one mean / variance / affine pair per channel, shared
/// over the |G| maps of the channel (statistics over N, |G|, H, W), so it commutes with the
/// group action. Same parameters, buffers and semantics as BatchNorm2d (train / eval, running
/// statistics, momentum), with num_features = C.
///   x: [N, C, |G|, H, W], weight/bias/running_mean/running_var: [C] -> [N, C, |G|, H, W]
class GroupBatchNorm : public nn::BatchNorm2d {
 public:
  GroupBatchNorm(const nn::BatchNorm2dOptions& options, const std::string& group = "p4");
  GroupBatchNorm(int64_t num_features, const std::string& group = "p4")
      : GroupBatchNorm(nn::BatchNorm2dOptions(num_features), group) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "GroupBatchNorm"; }
  std::string extra_repr() const override;

 private:
  PlaneGroup group_;
};

/// P4CNN options (defaults: Cohen & Welling's rotated-MNIST P4CNN, 10 channels per layer,
/// 7 layers of 3x3, but 'same' padding and a linear head on globally pooled invariant features).
struct P4CNNOptions {
  std::string group = "p4";        // "p4" or "p4m"
  int64_t in_chans = 1;
  int64_t num_classes = 10;        // 0: no head, forward returns the pooled [N, channels]
  int64_t channels = 10;           // per group element, every layer
  int64_t num_layers = 7;          // 1 lifting conv + (num_layers - 1) group convs
  int64_t kernel_size = 3;         // odd; padding 'same'
  std::string group_pool = "max";  // "max" or "mean" over the group axis at the end
  int64_t max_pool_after = -1;     // 2x2 spatial max pool after this layer index (-1: none);
                                   // exactly equivariant when that layer's H and W are even
  double drop_rate = 0.0;          // dropout before the head
};

namespace equivariant {

/// conv (LiftingConv2d for the first layer, else GroupConv2d; no bias), bn (GroupBatchNorm),
/// act (ReLU).   x: [N, C_in, H, W] or [N, C_in, |G|, H, W] -> [N, C_out, |G|, H, W]
class GroupConvBlock : public nn::Module {
 public:
  GroupConvBlock(bool lifting, const GroupConvOptions& conv_options);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "GroupConvBlock"; }

  std::shared_ptr<nn::Module> conv;  // LiftingConv2d or GroupConv2d
  std::shared_ptr<GroupBatchNorm> bn;
  std::shared_ptr<nn::ReLU> act;
};

}  // namespace equivariant

/// A p4 / p4m CNN: blocks (lifting block, then group conv blocks; optional 2x2 spatial max
/// pool after one block), group pooling, global average pooling, dropout, linear head.
/// Names: blocks.{i}.conv.weight, blocks.{i}.bn.{weight, bias, running_mean, running_var,
/// num_batches_tracked}, head.{weight, bias}.
///   x: [N, in_chans, H, W] (H == W) -> [N, num_classes]
/// Invariant (exactly, up to rounding) to the point group acting on x: rotations by 90 degrees,
/// and mirrors for p4m.
class P4CNN : public nn::Module {
 public:
  explicit P4CNN(const P4CNNOptions& options = {});
  Tensor forward(const Tensor& x) override { return forward_head(forward_features(x)); }
  /// The blocks: [N, in_chans, H, W] -> [N, channels, |G|, h, w] (equivariant features).
  Tensor forward_features(const Tensor& x);
  /// Group pool, global average pool, dropout, head: -> [N, num_classes] ([N, channels]
  /// with num_classes == 0).
  Tensor forward_head(const Tensor& x);
  std::string name() const override { return "P4CNN"; }
  const P4CNNOptions& options() const { return options_; }

  std::shared_ptr<nn::ModuleList> blocks;
  std::shared_ptr<GroupPool> pool;
  std::shared_ptr<nn::Module> drop;  // Dropout
  std::shared_ptr<nn::Module> head;  // Linear, or Identity when num_classes == 0

 private:
  P4CNNOptions options_;
};

/// Registered as "p4cnn": P4CNNOptions defaults (p4, 10 channels, 7 layers).
std::shared_ptr<P4CNN> p4cnn(const ModelOptions& o = {});
/// Registered as "p4mcnn": p4m with 7 channels (7^2 * 8 ~ 10^2 * 4: about P4CNN's parameters).
std::shared_ptr<P4CNN> p4mcnn(const ModelOptions& o = {});

// ---- Sampled Lie-group convolution (LieConv: Finzi, Stanton, Izmailov & Wilson 2020)
//
// A point cloud (positions [B, N, 2] in the plane, features [B, N, C], mask [B, N]) is lifted
// to group elements: "T2" (translations; point i -> the translation x_i, 1 element per point)
// or "SE2" (rotations and translations; point i -> (theta_k, x_i) for the stabilizer samples
// theta_k = theta0 + 2 pi k / K, k < K, so M = N K lifted elements, ordered i * K + k). A
// LieConv layer is the Monte Carlo convolution over the lifted elements
//     h(u_i) = 1 / |nbhd(i)| sum_{j in nbhd(i)} k_theta(log(u_i^-1 u_j)) f(u_j)
// with k_theta an MLP on the Lie algebra (PointConv's trick: the MLP gives `kernel_hidden`
// weights per pair, a linear layer mixes them with the input channels) and nbhd(i) the lifted
// elements j within `radius` of i in the invariant Lie-algebra metric
//     d^2 = |a_t|^2 + alpha a_theta^2,   a = log(u_i^-1 u_j) = (a_theta, a_t)   (SE2),  |a|^2 (T2).
// Since log(u_i^-1 u_j) is invariant under u -> g u, the layer is exactly equivariant to
// translations (T2, SE2) and to rotations by multiples of 2 pi / K (SE2: the lifted samples
// shift by k -> k + s); other rotations are equivariant in distribution over theta0. This
// implementation uses every lifted element as a query (no farthest-point subsampling).

/// A lifted point cloud. pairs[b, i, j] = log(u_i^-1 u_j) (differentiable in the positions).
///   pairs: [B, M, M, D] (D = 2 for T2: a_t; D = 3 for SE2: (a_theta, a_t)),
///   values: [B, M, C], mask: [B, M] (1 = a point, 0 = padding; values' dtype)
struct LieCloud {
  Tensor pairs;
  Tensor values;
  Tensor mask;
};

/// The Lie algebra dimension of "T2" (2) or "SE2" (3); throws naming `field` otherwise.
int64_t lie_algebra_dim(const std::string& group, const std::string& field = "group");

/// Lifts a point cloud: positions [B, N, 2], features [B, N, C], mask [B, N] (undefined: all
/// valid) -> LieCloud with M = N (T2) or N * lift_samples (SE2, stabilizer angles
/// theta0 + 2 pi k / lift_samples). For SE2, with theta_u, theta_v the angles of u, v and
/// d = x_v - x_u: u^-1 v = (theta_v - theta_u, R(-theta_u) d) and its log is
/// (theta, V(theta)^-1 R(-theta_u) d), theta wrapped to (-pi, pi], V(theta) =
/// [[sin t / t, -(1 - cos t) / t], [(1 - cos t) / t, sin t / t]] (V(0) = I).
LieCloud lie_lift(const std::string& group, const Tensor& positions, const Tensor& features,
                  const Tensor& mask = {}, int64_t lift_samples = 4, double theta0 = 0.0);

/// LieConvOptions(in_channels, out_channels) with chained setters.
struct LieConvOptions {
  LieConvOptions(int64_t in_channels, int64_t out_channels)
      : in_channels_(in_channels), out_channels_(out_channels) {}
  LieConvOptions& in_channels(int64_t v) { in_channels_ = v; return *this; }
  LieConvOptions& out_channels(int64_t v) { out_channels_ = v; return *this; }
  /// "SE2" (default) or "T2".
  LieConvOptions& group(std::string v) { group_ = std::move(v); return *this; }
  /// Weights per pair from the kernel MLP (LieConv's cmco_ci), also its hidden width.
  LieConvOptions& kernel_hidden(int64_t v) { kernel_hidden_ = v; return *this; }
  /// Neighbourhood radius in the Lie-algebra metric (infinity: every valid element).
  LieConvOptions& radius(double v) { radius_ = v; return *this; }
  /// Weight of a_theta^2 in the metric (SE2).
  LieConvOptions& alpha(double v) { alpha_ = v; return *this; }

  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  const std::string& group() const { return group_; }
  int64_t kernel_hidden() const { return kernel_hidden_; }
  double radius() const { return radius_; }
  double alpha() const { return alpha_; }

 private:
  int64_t in_channels_;
  int64_t out_channels_;
  std::string group_ = "SE2";
  int64_t kernel_hidden_ = 16;
  double radius_ = 1e300;
  double alpha_ = 1.0;
};

/// One LieConv layer.
///   in.pairs: [B, M, M, D], in.values: [B, M, C_in], in.mask: [B, M]
///   -> same pairs and mask, values [B, M, C_out] (zero at padding)
/// weightnet: Linear(D, m), SiLU, Linear(m, m), SiLU, Linear(m, m), SiLU (m = kernel_hidden);
/// linear: Linear(m * C_in, C_out) applied to sum_j k(a_ij)[:, None] f_j[None, :] / |nbhd(i)|.
class LieConv : public nn::Module {
 public:
  explicit LieConv(const LieConvOptions& options);
  using nn::Module::forward;
  LieCloud forward(const LieCloud& in);
  /// The neighbourhood mask [B, M, M] (1 where j is a valid element within radius of i).
  Tensor neighborhood(const LieCloud& in) const;
  std::string name() const override { return "LieConv"; }
  std::string extra_repr() const override;
  const LieConvOptions& options() const { return options_; }

  std::shared_ptr<nn::Sequential> weightnet;
  std::shared_ptr<nn::Linear> linear;

 private:
  LieConvOptions options_;
};

struct LieConvNetOptions {
  std::string group = "SE2";   // "SE2" or "T2"
  int64_t in_chans = 1;        // features per point
  int64_t num_classes = 10;    // 0: forward returns the pooled [B, channels]
  int64_t channels = 32;
  int64_t num_layers = 3;      // LieConv blocks; the first maps in_chans -> channels
  int64_t lift_samples = 4;    // SE2 stabilizer samples K (T2: 1)
  int64_t kernel_hidden = 16;
  double radius = 1e300;       // neighbourhood radius in the Lie-algebra metric
  double alpha = 1.0;
};

namespace equivariant {

/// conv (LieConv), norm (LayerNorm over channels), act (SiLU), plus the input when the channel
/// counts match (residual). values: [B, M, C_in] -> [B, M, C_out], zero at padding.
class LieConvBlock : public nn::Module {
 public:
  explicit LieConvBlock(const LieConvOptions& options);
  using nn::Module::forward;
  LieCloud forward(const LieCloud& in);
  std::string name() const override { return "LieConvBlock"; }

  std::shared_ptr<LieConv> conv;
  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<nn::SiLU> act;
};

}  // namespace equivariant

/// A small LieConv classifier of point clouds: lift, LieConv blocks, masked mean over the
/// lifted elements (invariant), linear head. Names: blocks.{i}.conv.{weightnet.{0,2,4},
/// linear}.{weight, bias}, blocks.{i}.norm.{weight, bias}, head.{weight, bias}.
///   positions: [B, N, 2], features: [B, N, in_chans], mask: [B, N] -> [B, num_classes]
/// Not in the zoo registry (its input is a point cloud, not an image).
class LieConvNet : public nn::Module {
 public:
  explicit LieConvNet(const LieConvNetOptions& options = {});
  using nn::Module::forward;
  Tensor forward(const Tensor& positions, const Tensor& features, const Tensor& mask = {},
                 double theta0 = 0.0);
  std::string name() const override { return "LieConvNet"; }
  const LieConvNetOptions& options() const { return options_; }

  std::shared_ptr<nn::ModuleList> blocks;
  std::shared_ptr<nn::Module> head;  // Linear, or Identity when num_classes == 0

 private:
  LieConvNetOptions options_;
};

}  // namespace kern::models
