#pragma once
// Affine-equivariant convolutions on R^2 x| G, G = GL+(2) or SL(2) (Mironenco & Forre, ICLR
// 2024): the kernel is an implicit neural representation (a SIREN MLP) evaluated at
// group-transformed coordinates, and the group integral is a Monte-Carlo sum over a sample
// set (lie_group.hpp). Shapes: N batch, C channels, S samples, H, W spatial, k kernel size.
// A feature map on G is [N, C, S, H, W], defined on one sample set (axis 2 in its order).
//
// Lifting R^2 -> G, for the out sample set {h_s}:
//   out[n, o, s](x) = sum_{c, u} x[n, c](x + u) K_s[o, c](u) + bias[o],
//   K_s[o, c](u) = kappa[o, c](h_s^-1 u) / |det h_s| * scale
// Group conv G -> G, input on {g_j} (S_in, weights w_j), output on {h_s}:
//   out[n, o, s](x) = sum_{c, j, u} x[n, c, j](x + u) K_sj[o, c](u) + bias[o],
//   K_sj[o, c](u) = kappa[o, c](h_s^-1 u, e(xi^-1(h_s^-1 g_j))) w_j / (S_in |det h_s|) * scale
// u: the k x k offsets (row, col) / ((k - 1) / 2) in [-1, 1]^2 (the group acts on (row, col) as
// in equivariant.hpp, so a quarter turn is kern::rot90); e(v) = (log P coordinates, cos theta,
// sin theta) (continuous across theta = +-pi); scale = 1 / sqrt(C_in k^2) keeps activations of
// order one at init. 1 / |det h| is the volume correction (1 on SL(2)); w_j / S_in the
// Monte-Carlo weight of the input samples. The layer is equivariant when the input and the
// sample sets are transformed together: layer(g . x, g . S_in, g . S_out) = g . layer(x, S_in,
// S_out) (exactly for quarter turns on the pixel grid, up to resampling error otherwise).
//
// Pass each layer the sample set its input is defined on: the lifting conv's output set is the
// first group conv's input set, and so on (AffConvNet uses one set per forward for all layers,
// which residual connections require).
//
//   lie::Samples s = lie::sample({.group = lie::Group::GL2, .num_samples = 10}, &gen);
//   auto lift = std::make_shared<lie::AffineLiftingConv>(lie::AffineConvOptions(1, 16, 5));
//   auto gconv = std::make_shared<lie::AffineGroupConv>(lie::AffineConvOptions(16, 16, 5));
//   Tensor y = gconv->forward(lift->forward(x, s), s, s);   // [N, 16, 10, H, W]
#include <kern/models/lie_group.hpp>
#include <kern/models/registry.hpp>
#include <kern/nn/nn.hpp>

#include <memory>
#include <string>

namespace kern::models::lie {

/// A SIREN MLP (Sitzmann et al. 2020): h = sin(omega0 (W h + b)) for each hidden layer, then a
/// linear readout. Init: first layer U(-1/in, 1/in), later hidden layers
/// U(-sqrt(6/in)/omega0, sqrt(6/in)/omega0), readout PyTorch's Linear default.
///   x: [..., in_features] -> [..., out_features]
struct SirenOptions {
  int64_t in_features = 2;
  int64_t out_features = 1;
  int64_t hidden = 32;
  int64_t hidden_layers = 2;  // >= 1
  double omega0 = 10.0;
};

class Siren : public nn::Module {
 public:
  explicit Siren(const SirenOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Siren"; }
  std::string extra_repr() const override;
  const SirenOptions& options() const { return options_; }
  std::shared_ptr<nn::ModuleList> layers;  // Linear modules: hidden_layers hidden + 1 readout

 private:
  SirenOptions options_;
};

/// AffineConvOptions(in_channels, out_channels, kernel_size) with chained setters.
/// Padding is 'same' ((k - 1) / 2, odd k), stride 1.
struct AffineConvOptions {
  AffineConvOptions(int64_t in_channels, int64_t out_channels, int64_t kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}
  AffineConvOptions& group(Group v) { group_ = v; return *this; }
  AffineConvOptions& bias(bool v) { bias_ = v; return *this; }
  AffineConvOptions& hidden(int64_t v) { hidden_ = v; return *this; }
  AffineConvOptions& hidden_layers(int64_t v) { hidden_layers_ = v; return *this; }
  AffineConvOptions& omega0(double v) { omega0_ = v; return *this; }
  /// > 0: multiply the kernel by the bump (1 - |h^-1 u|^2 / rho^2)^2 (0 outside), in the
  /// kernel's own coordinates, so it has compact support (the paper's kernel mask; a smooth
  /// one so Monte-Carlo / grid sums converge). 0 (default): no envelope.
  AffineConvOptions& envelope(double rho) { envelope_ = rho; return *this; }
  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  int64_t kernel_size() const { return kernel_size_; }
  Group group() const { return group_; }
  bool bias() const { return bias_; }
  int64_t hidden() const { return hidden_; }
  int64_t hidden_layers() const { return hidden_layers_; }
  double omega0() const { return omega0_; }
  double envelope() const { return envelope_; }

 private:
  int64_t in_channels_, out_channels_, kernel_size_;
  Group group_ = Group::GL2;
  bool bias_ = true;
  int64_t hidden_ = 32, hidden_layers_ = 2;
  double omega0_ = 10.0;
  double envelope_ = 0.0;
};

/// The k x k offsets u (row, col) / ((k - 1) / 2): [k * k, 2] in row-major order, dtype.
Tensor kernel_grid(int64_t kernel_size, DType dtype);
/// e(xi^-1(g)) for g [..., 2, 2]: (log P coordinates (a, b, c) on GL+(2), (b, c) on SL(2),
/// cos theta, sin theta) -> [..., 5] or [..., 4].
Tensor group_embedding(const Tensor& g, Group group);
int64_t group_embedding_dim(Group group);

/// Lifting convolution R^2 -> G (see the file comment). The kernel kappa is a Siren
/// 2 -> C_out C_in (output index o * C_in + c).
///   x: [N, C_in, H, W], samples {h_s} -> [N, C_out, S, H, W]
class AffineLiftingConv : public nn::Module {
 public:
  explicit AffineLiftingConv(const AffineConvOptions& options);
  /// Throws: the layer needs its output sample set (forward(x, samples)).
  Tensor forward(const Tensor& x) override;
  Tensor forward(const Tensor& x, const Samples& out_samples);
  /// [C_out * S, C_in, k, k] (row o * S + s).
  Tensor filter_bank(const Samples& out_samples);
  std::string name() const override { return "AffineLiftingConv"; }
  std::string extra_repr() const override;
  const AffineConvOptions& options() const { return options_; }

  std::shared_ptr<Siren> kernel;
  nn::Param bias;  // [C_out], undefined with bias(false)

 private:
  AffineConvOptions options_;
};

/// Group convolution G -> G (see the file comment). The kernel kappa is a Siren
/// (2 + group_embedding_dim) -> C_out C_in.
///   x: [N, C_in, S_in, H, W] on in_samples, out_samples {h_s} -> [N, C_out, S_out, H, W]
class AffineGroupConv : public nn::Module {
 public:
  explicit AffineGroupConv(const AffineConvOptions& options);
  Tensor forward(const Tensor& x) override;
  Tensor forward(const Tensor& x, const Samples& in_samples, const Samples& out_samples);
  /// [C_out * S_out, C_in * S_in, k, k] (row o * S_out + s, column c * S_in + j).
  Tensor filter_bank(const Samples& in_samples, const Samples& out_samples);
  std::string name() const override { return "AffineGroupConv"; }
  std::string extra_repr() const override;
  const AffineConvOptions& options() const { return options_; }

  std::shared_ptr<Siren> kernel;
  nn::Param bias;

 private:
  AffineConvOptions options_;
};

/// 2x2 (kernel x kernel) max pooling of every map: [N, C, S, H, W] -> [N, C, S, H/k, W/k].
Tensor spatial_max_pool(const Tensor& x, int64_t kernel = 2);
/// Pooling over the sample axis: [N, C, S, H, W] -> [N, C, H, W], "max" or "mean".
Tensor sample_pool(const Tensor& x, const std::string& mode = "max");
/// Global max over samples and space: [N, C, S, H, W] -> [N, C] (invariant).
Tensor global_max(const Tensor& x);

/// One residual block of AffConvNet: y = x + conv2(gelu(ln2(conv1(gelu(ln1(x)))))).
///   x: [N, C, S, H, W] -> same, on the same sample set.
class AffResBlock : public nn::Module {
 public:
  AffResBlock(int64_t channels, const AffineConvOptions& conv_options);
  Tensor forward(const Tensor& x) override;
  Tensor forward(const Tensor& x, const Samples& samples);
  std::string name() const override { return "AffResBlock"; }
  std::shared_ptr<nn::LayerNorm> ln1, ln2;
  std::shared_ptr<AffineGroupConv> conv1, conv2;
};

/// The residual G-ResNet of the paper: lifting conv, a lift_pool x lift_pool spatial max pool,
/// blocks
///   y = x + conv2(gelu(ln2(conv1(gelu(ln1(x))))))
/// (LayerNorm over the channels of each map position; a 2x2 spatial max pool after the
/// blocks listed in pool_after), global max projection, MLP head (Linear, GELU, Linear).
/// Cost: each group conv is one [N, C S, H, W] conv with C S -> C S channels, so pooling
/// before the first block divides the dominant cost by lift_pool^2 (40x40 input, batch 32,
/// 16 channels, 10 samples: ~500 GFLOP per forward + backward without it, ~125 with 2).
/// All layers of one forward share one sample set: a fresh draw per forward in training
/// (from the module's generator), a fixed set (drawn once from eval_seed) in eval.
struct AffConvNetOptions {
  std::string group = "gl2";   // "gl2" or "sl2"
  int64_t in_chans = 1;
  int64_t num_classes = 10;    // 0: forward returns the invariant features [N, channels]
  int64_t channels = 16;
  int64_t num_blocks = 2;
  int64_t kernel_size = 5;
  int64_t num_samples = 10;
  std::string rotations = "haar";
  double log_std = 0.2;
  bool haar_weights = false;   // Monte-Carlo weights w / q (heavy tailed: off by default)
  int64_t siren_hidden = 32;
  int64_t siren_layers = 2;
  double omega0 = 10.0;
  int64_t lift_pool = 2;       // max pool after the lifting conv (1: none; exactly p4-equivariant
                               // when it divides H and W)
  std::vector<int64_t> pool_after = {0};  // block indices followed by a 2x2 max pool
  double drop_rate = 0.0;
  uint64_t seed = 0;           // training draws
  uint64_t eval_seed = 1234;   // the fixed eval set
};

class AffConvNet : public nn::Module {
 public:
  explicit AffConvNet(const AffConvNetOptions& options);
  Tensor forward(const Tensor& x) override;
  /// With a given sample set (tests, equivariance studies).
  Tensor forward(const Tensor& x, const Samples& samples);
  /// The sample set forward(x) would use next in eval mode.
  const Samples& eval_samples(DType dtype);
  std::string name() const override { return "AffConvNet"; }
  const AffConvNetOptions& options() const { return options_; }

  std::shared_ptr<AffineLiftingConv> lift;
  std::shared_ptr<nn::ModuleList> blocks;            // AffResBlock "blocks.0", ...
  std::vector<std::shared_ptr<AffResBlock>> block_list;  // the same, typed
  std::shared_ptr<nn::Linear> fc1, fc2;
  std::shared_ptr<nn::Dropout> drop;

 private:
  AffConvNetOptions options_;
  Group group_;
  Generator gen_;
  Samples eval_samples_;
};

std::shared_ptr<AffConvNet> affconv_gl2(const ModelOptions& options = {});
std::shared_ptr<AffConvNet> affconv_sl2(const ModelOptions& options = {});

}  // namespace kern::models::lie
