#pragma once
// kern::limits: analytic infinite-width kernels (NNGP and NTK) of networks described with a
// layer-combinator API that mirrors nn (and neural-tangents' stax), in float64.
//
//   namespace L = kern::limits;
//   auto net = L::serial({L::Conv(3, {.W_std = 1.4}), L::Relu(), L::Conv(3), L::Relu(),
//                         L::GlobalAvgPool(), L::Dense({.W_std = 1.0, .b_std = 0.1})});
//   L::Kernels k = net.kernel(x1, x2);          // k.nngp, k.ntk: [N1, N2] float64
//   auto model = net.twin(/*in_channels=*/1, /*width=*/512, /*out=*/1);   // the finite nn twin
//
// Conventions (neural-tangents' stax, so that a kernel equals nt's for the same description):
//   - A layer's width is infinite in the limit; only its input's channel count matters for the
//     "standard" parameterization. Inputs are [N, F] (vectors) or [N, C, H, W] (images, NCHW).
//   - Input kernel: K0(x, x')[p, q] = sum_c x[c, p] x'[c, q] / C (the mean over channels, per
//     pixel pair p, q; for vectors the plain x.x'/F), and NTK0 = 0.
//   - Dense/Conv with parameterization "ntk" (default): y = W_std / sqrt(fan_in) * (W * x) +
//     b_std * b, W, b ~ N(0, 1), fan_in = C_in * kH * kW. Kernel map (conv: A = the
//     patch-averaging map A(K)[p, q] = 1/(kH kW) sum_d K[s p + d, s q + d], zeros outside
//     the image for SAME padding; A = identity for Dense, which acts per pixel on images):
//         nngp' = W_std^2 A(nngp) + b_std^2,   ntk' = nngp' + W_std^2 A(ntk).
//     "standard": y = W * x + b, W ~ N(0, W_std^2 / fan_in), b ~ N(0, b_std^2):
//         nngp' as above,   ntk' = fan_in A(nngp) + W_std^2 A(ntk) + 1 (the bias, if any).
//   - Elementwise phi (the kernel maps need Gaussian inputs, i.e. a Dense/Conv before):
//         nngp' = E[phi(u) phi(v)],  ntk' = ntk * E[phi'(u) phi'(v)],  (u, v) ~ N(0, [[K11,
//         K12], [K12, K22]]) with K11, K22 the pixel variances of each input. Closed forms:
//     ABRelu(a, b) (a*min(x,0) + b*max(x,0); Relu = (0, 1), LeakyRelu(alpha) = (alpha, 1)):
//         arc-cosine kernels (Cho & Saul): with s = sqrt(K11 K22 - K12^2), theta = atan2(s, K12),
//         nngp' = (a-b)^2/(2 pi) s + ((a^2+b^2)/2 - (a-b)^2/(2 pi) theta) K12,
//         kdot  = (a^2+b^2)/2 - (a-b)^2/(2 pi) theta.
//     Erf(a, b, c) (a erf(b x) + c): Williams' arcsine kernel, with K scaled by b^2,
//         nngp' = a^2 2/pi asin(2 K12 / sqrt((1 + 2 K11)(1 + 2 K22))) + c^2,
//         kdot  = a^2 b^2 4/pi / sqrt((1 + 2 K11)(1 + 2 K22) - 4 K12^2).
//     Gelu (exact, x Phi(x)): the closed form of Tsuchida et al. (arXiv:2002.08517), as nt.
//   - AvgPool(window, stride, SAME/VALID): mean over the window, zeros counted at SAME edges
//     (PyTorch's count_include_pad = true; nt's normalize_edges = false). GlobalAvgPool: the
//     mean over all pixels: nngp' = mean_{p, q} nngp[p, q]. Flatten: nngp' = mean_p nngp[p, p]
//     (nt's Flatten divides by the pixel count: the flattened vector's Dense has fan_in C H W).
//   - LayerNorm over channels (no affine): nngp'[p, q] = nngp[p, q] / sqrt(K11[p] K22[q]),
//     ntk' likewise. Like nt's, the map assumes zero-mean inputs (a Dense/Conv output, or sums
//     of them); the twin subtracts the channel mean, so right after a Relu they differ.
//   - fan_sum({branch, ...}) (FanOut + parallel + FanInSum, e.g. a residual block with
//     Identity() as the shortcut): the branches' kernels add.
//
// Pixel-pixel covariances: a kernel of images is either "full" ([P, P] per pair of inputs, P
// = H W pixels; pooling needs it: CNTK with GAP, Arora et al. 2019) or "diagonal" ([P] per
// pair; Flatten only needs the diagonal, and convolutions and elementwise layers map
// diagonals to diagonals). kernel() keeps the full covariance exactly where a later pooling
// layer needs it (and the diagonal otherwise); a pooling layer reached by a diagonal kernel
// throws kern::Error.
//
// Memory and threads: the [N1, N2] pairs are computed in blocks of options.batch_size rows of
// x1 times batch_size rows of x2 (each block also carries the self-covariances of its inputs,
// as nt's batching does); the pairs of a block are spread over OpenMP threads.
#include <kern/generator.hpp>
#include <kern/nn/module.hpp>
#include <kern/tensor.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kern::limits {

enum class Parameterization { NTK, Standard };
enum class Padding { Same, Valid };

/// The kernel between two batches of inputs at one point of the network (all float64).
/// Layout: nngp/ntk [n1][n2][S], cov1 [n1][S], cov2 [n2][S], with S = P*P (full: index
/// p * P + q, pixel p of the x1 input, q of the x2 input; p = h * W + w) or S = P (diagonal),
/// P = h * w (1 for vectors). cov1/cov2 are the kernels of each input with itself.
struct Kernel {
  int64_t n1 = 0, n2 = 0;
  int64_t h = 1, w = 1;      // spatial size (1 x 1 for vectors)
  bool spatial = false;      // images (true) or vectors
  bool full = false;         // pixel-pixel covariances kept
  int64_t channels = 0;      // the finite channel count of the layer's input (standard param.)
  bool is_gaussian = false;  // the output of a Dense/Conv (elementwise maps need it)
  int64_t width = 0;         // KernelOptions::width (standard parameterization)
  std::vector<double> nngp, ntk, cov1, cov2;

  int64_t pixels() const { return h * w; }
  int64_t entries() const { return full ? pixels() * pixels() : pixels(); }
};

/// A result: nngp and ntk as float64 tensors, [N1, N2] for vectors, [N1, N2, H, W] (diagonal)
/// or [N1, N2, H, W, H, W] (full) for images.
struct Kernels {
  Tensor nngp, ntk;
};

struct KernelOptions {
  /// Rows of x1 (and of x2) per block; 0: everything in one block. Memory per block is about
  /// 3 * 8 bytes * (b1 b2 + b1 + b2) * S (see Kernel).
  int64_t batch_size = 0;
  /// The finite width of hidden layers, used by the "standard" parameterization only (its
  /// NTK scales with the fan_in of each layer; the twin's width). 0: error if needed.
  int64_t width = 0;
  /// Keep only pixel variances even where pooling would need the full covariances (an error
  /// then); for tests.
  bool force_diagonal = false;
};

struct DenseOptions {
  double W_std = 1.0;
  double b_std = 0.0;
  bool bias = true;  // without a bias, b_std must be 0 (standard param.: no "+1" in the NTK)
  Parameterization parameterization = Parameterization::NTK;
};

struct ConvOptions {
  std::array<int64_t, 2> stride = {1, 1};
  Padding padding = Padding::Same;
  double W_std = 1.0;
  double b_std = 0.0;
  bool bias = true;
  Parameterization parameterization = Parameterization::NTK;
};

struct PoolOptions {
  std::array<int64_t, 2> stride = {0, 0};  // 0: the window
  Padding padding = Padding::Valid;
};

/// The shape a twin builder threads through the layers.
struct TwinShape {
  int64_t channels = 0;
  int64_t h = 0, w = 0;  // 0: vectors
  bool spatial() const { return h > 0; }
};

struct TwinContext {
  int64_t width = 0;  // channels of every hidden Dense/Conv
  Generator* gen = nullptr;
  /// Layer indices (in order of creation) and the total number of Dense/Conv layers: the last
  /// one is the readout (out_features = the twin's output size).
  int64_t linear_index = 0, linear_count = 0, out_features = 1;
};

class LayerImpl {
 public:
  virtual ~LayerImpl() = default;
  virtual std::string name() const = 0;
  /// Applies the layer's kernel map in place.
  virtual void apply(Kernel& k) const = 0;
  /// Whether the layer's input must keep full pixel covariances, given whether its output must.
  virtual bool needs_full(bool output_full) const { return output_full; }
  /// Number of Dense/Conv layers (for the twin's readout).
  virtual int64_t linear_layers() const { return 0; }
  /// The finite-width nn module (shape is updated to the output's).
  virtual std::shared_ptr<nn::Module> twin(TwinShape& shape, TwinContext& ctx) const = 0;
};

/// A layer or a network (serial/fan_sum of layers); cheap to copy.
class Layer {
 public:
  Layer() = default;
  explicit Layer(std::shared_ptr<const LayerImpl> impl) : impl_(std::move(impl)) {}
  const LayerImpl& impl() const;
  std::string name() const { return impl().name(); }

  /// NNGP and NTK between x1 and x2 ([N, F] or [N, C, H, W]; any float dtype, computed in
  /// float64). x2 undefined: x2 = x1.
  Kernels kernel(const Tensor& x1, const Tensor& x2 = {}, const KernelOptions& options = {}) const;
  /// The kernel map alone on a prepared Kernel (see input_kernel).
  void apply(Kernel& k) const { impl().apply(k); }

  /// The finite-width twin: every Dense/Conv gets `width` output channels except the last
  /// one, which gets out_features; weights are drawn as the parameterization says (NTK: N(0, 1)
  /// with forward multipliers W_std / sqrt(fan_in) and b_std stored as kern::param records;
  /// standard: N(0, W_std^2 / fan_in), N(0, b_std^2), multiplier 1). in_channels: F for
  /// vectors, C for images (then in_hw gives H, W). float64 parameters.
  std::shared_ptr<nn::Module> twin(int64_t in_channels, int64_t width, int64_t out_features = 1,
                                   std::array<int64_t, 2> in_hw = {0, 0},
                                   Generator* gen = nullptr) const;

 private:
  std::shared_ptr<const LayerImpl> impl_;
};

/// The input kernel of two batches (float64 contiguous [N, F] or [N, C, H, W]), with full or
/// diagonal pixel covariances.
Kernel input_kernel(const Tensor& x1, const Tensor& x2, bool full);
/// The same into `k`, reusing its buffers' capacity (Layer::kernel's blocks: one allocation,
/// not one ~100 MB page-faulting allocation per block).
void input_kernel(const Tensor& x1, const Tensor& x2, bool full, Kernel& k);

// ---- layers (see the conventions above)
Layer Dense(const DenseOptions& options = {});
Layer Conv(int64_t kernel_size, const ConvOptions& options = {});
Layer Conv(std::array<int64_t, 2> kernel_size, const ConvOptions& options = {});
Layer Relu();
Layer LeakyRelu(double alpha);
Layer ABRelu(double a, double b);
Layer Erf(double a = 1.0, double b = 1.0, double c = 0.0);
Layer Gelu();
Layer Identity();
Layer AvgPool(std::array<int64_t, 2> window, const PoolOptions& options = {});
Layer GlobalAvgPool();
Layer Flatten();
Layer LayerNorm();
Layer serial(std::vector<Layer> layers);
/// FanOut(len(branches)) + parallel(branches) + FanInSum.
Layer fan_sum(std::vector<Layer> branches);

}  // namespace kern::limits
