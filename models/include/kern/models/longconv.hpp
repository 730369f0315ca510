#pragma once
// Long convolutions for sequence models: a causal convolution whose kernel is as long as the
// sequence, computed by FFT in O(L log L).
//
//   - fft_conv: the functional op, y = causal_conv(u, k) + D * u, written with kern's rfft /
//     irfft / complex_mul, so gradients of any order are exact.
//   - Kernel parameterizations (modules producing k: [H, L]):
//       LongConvKernel  Fu et al. 2023, "Simple Hardware-Efficient Long Convolutions for
//                       Sequence Modeling" (HazyResearch/safari): the kernel is a parameter
//                       of length L, regularized by the squash (soft-threshold)
//                       sign(k) * relu(|k| - lam), optional moving-average smoothing and
//                       kernel dropout.
//       SGConvKernel    Li et al. 2022, "What Makes Convolutional Models Great on Long Sequence
//                       Modeling?" (SGConv): num_scales sub-kernels of kernel_dim values, sub-
//                       kernel i upsampled by interpolation (factor 1, 1, 2, 4, ...), weighted
//                       by a decay (relative weight alpha^i), concatenated and divided by the
//                       norm the concatenation had at initialization.
//   - LongConv: safari's LongConv layer (conv + D skip, GELU, dropout, output linear + GLU);
//     LongConvBlock: pre-norm residual block; LongConvModel: encoder, blocks, final norm,
//     pooling, decoder.
//
// Layouts: fft_conv works on [B, H, L] (kern's [B, C, L] sequence order). LongConv takes and
// returns [B, L, H] by default (safari's transposed = false, its default for these models) or
// [B, H, L] with transposed = true; LongConvBlock and LongConvModel work on [B, L, H].
//
// Parameter names and layouts follow the reference repositories with channels = 1:
//   LongConv:       D [1, H], kernel.kernel [1, H, l_max] (safari LongConvKernel), or
//                   kernel.kernel_list.{i} [1, H, kernel_dim] with buffers kernel.multiplier
//                   [1, H, 1] and kernel.kernel_norm [1, H, 1] (SGConv's GConv),
//                   output_linear.0.{weight, bias} ([2H, H] with GLU, [H, H] otherwise).
//   (SGConv's bool buffer kernel_norm_initialized is not kept: kern computes kernel_norm at
//   construction instead of at the first forward.)
//
//   auto model = kern::models::create_model("longconv_small", {.num_classes = 10, .in_chans = 1});
//   kern::models::LongConvModel m({.vocab_size = 8, .d_model = 32, .n_layers = 2, .l_max = 128,
//                                  .num_classes = 8, .pool = kern::models::Pool::Last});
#include <kern/models/registry.hpp>
#include <kern/nn/nn.hpp>

#include <memory>
#include <string>
#include <vector>

namespace kern::models {

// ---------------------------------------------------------------------------------------------
// Functional ops

/// Causal long convolution by FFT:
///   y[b, h, t] = sum_{s <= t} k[h, t - s] * u[b, h, s] + D[h] * u[b, h, t]
///   u: [B, H, L] (any number of leading dims), k: [H, L], D: [H] (optional) -> [B, H, L]
/// Any L >= 1. u and k are zero-padded to n = the smallest power of two >= 2L (n >= 2L - 1
/// avoids circular wrap-around; a power of two keeps the transforms radix-2), so the result
/// equals the direct O(L^2) sum up to rounding. Differentiable to any order in u, k and D.
/// Errors (kern::Error naming the argument and the shapes): k not [H, L] with u's H and L,
/// L < 1, D not [H], mixed dtypes.
Tensor fft_conv(const Tensor& u, const Tensor& k, const Tensor& D = {});

/// Safari's squash / soft-threshold: sign(k) * relu(|k| - lam). Values with |k| <= lam become
/// exactly 0, the others move lam towards 0. k: [*] -> [*]; lam >= 0.
Tensor squash(const Tensor& k, double lam);

/// Moving average along the last dim with a centred, zero-padded window of odd length
/// `window` (PyTorch's AvgPool1d(window, stride 1, padding window / 2), count_include_pad).
///   k: [*, L] -> [*, L]
Tensor moving_average(const Tensor& k, int64_t window);

/// Upsamples the last dim by an integer `factor` like torch.nn.functional.interpolate(
/// scale_factor = factor, align_corners = False): mode "linear" or "nearest".
///   x: [*, n] -> [*, n * factor]
Tensor upsample1d(const Tensor& x, int64_t factor, const std::string& mode = "linear");

// ---------------------------------------------------------------------------------------------
// Kernel parameterizations

/// A module producing a convolution kernel k: [H, L] for a sequence length L. Calling it
/// convolves: forward(u) = fft_conv(u, kernel(L)) (no skip term), which is how LongConv uses
/// it, so hooks on the kernel module see one call with the sequence and its convolution (the
/// per-sample gradient rules of the kernels need exactly that).
class SequenceKernel : public nn::Module {
 public:
  SequenceKernel(int64_t H, int64_t l_max) : H_(H), l_max_(l_max) {}
  /// k: [H, L]. Lengths above l_max are zero-padded (as safari's conv, whose kernel is then
  /// shorter than the input), lengths below it use the kernel's first L taps.
  virtual Tensor kernel(int64_t L) = 0;
  /// The causal long convolution with this kernel: u: [B, H, L] -> fft_conv(u, kernel(L)): [B, H, L].
  Tensor forward(const Tensor& u) override;
  int64_t channels() const { return H_; }
  int64_t l_max() const { return l_max_; }

 protected:
  int64_t H_;
  int64_t l_max_;
};

struct LongConvKernelOptions {
  /// Squash threshold. safari's layer config uses 0.002-0.003 (its code default is 0.1, which
  /// zeroes the whole N(0, 0.002^2) init).
  double lam = 0.003;
  /// Dropout on the kernel values (after the squash) in training mode.
  double kernel_dropout = 0.0;
  /// "random": N(0, 0.002^2); "double_exp": N(0, 0.02^2) * exp(-(j / L) * floor(H/2)^(i / H))
  /// for channel i, tap j (safari's two inits).
  std::string weight_init = "random";
  /// 0: off; an odd window >= 1: moving-average smoothing of the kernel before the squash
  /// (safari's use_ma_smoothing, time domain).
  int64_t ma_window_len = 0;
};

/// safari's LongConvKernel (channels = 1, causal): kernel [1, H, l_max] is the convolution
/// kernel itself; kernel(L) = dropout(squash(smooth(kernel), lam)) fitted to L.
class LongConvKernel : public SequenceKernel {
 public:
  LongConvKernel(int64_t H, int64_t l_max, const LongConvKernelOptions& options = {});
  Tensor kernel(int64_t L) override;
  /// The kernel map applied to a given kernel parameter (multiplier included), with any
  /// leading dims: w: [..., H, l_max] -> [..., H, L]. kernel(L) is kernel_from(weight() as
  /// [H, l_max], L); the per-sample gradient rule pushes N per-sample kernel gradients back
  /// through it at once (w expanded to [N, H, l_max]).
  Tensor kernel_from(const Tensor& w, int64_t L);
  std::string name() const override { return "LongConvKernel"; }
  std::string extra_repr() const override;
  const LongConvKernelOptions& options() const { return options_; }

  nn::Param weight;  // registered as "kernel": [1, H, l_max]

 private:
  LongConvKernelOptions options_;
};

struct SGConvKernelOptions {
  /// Taps per sub-kernel (SGConv's kernel_dim).
  int64_t kernel_dim = 64;
  /// 0: derived from l_max as 1 + ceil(log2(l_max / kernel_dim)), at least 1, so the
  /// concatenation kernel_dim * 2^(num_scales - 1) covers l_max.
  int64_t num_scales = 0;
  /// Per-channel multiplier m_h = linspace(decay_min, decay_max, H); sub-kernel i is scaled
  /// by m_h^(num_scales - 1 - i), i.e. relative to sub-kernel 0 by alpha^i with alpha = 1/m_h
  /// (SGConv's default 2, alpha = 1/2).
  double decay_min = 2.0;
  double decay_max = 2.0;
  /// Upsampling: "linear" (SGConv's default) or "nearest".
  std::string interpolate = "linear";
};

/// SGConv's kernel (GConv, mode "cat_randn", channels = 1). Sub-kernel i: kernel_list.{i}
/// [1, H, kernel_dim], init N(0, 1); upsampled by 2^max(0, i - 1), so the pieces have lengths
/// d, d, 2d, 4d, ... and total d * 2^(num_scales - 1) >= l_max:
///   full = cat_i upsample(kernel_list[i] * m^(num_scales - 1 - i), 2^max(0, i - 1))
///   kernel(L) = fit(full, L) / kernel_norm,  kernel_norm = ||full|| at init (per channel).
class SGConvKernel : public SequenceKernel {
 public:
  SGConvKernel(int64_t H, int64_t l_max, const SGConvKernelOptions& options = {});
  Tensor kernel(int64_t L) override;
  /// The un-normalized concatenation: [H, kernel_dim * 2^(num_scales - 1)].
  Tensor full_kernel();
  /// The kernel map applied to given sub-kernels (multipliers included), with any leading
  /// dims: subs[i]: [..., H, kernel_dim] -> [..., H, L]. kernel(L) is kernel_from of the
  /// parameters; the per-sample gradient rule pushes N per-sample kernel gradients back
  /// through it at once (each sub-kernel expanded to [N, H, kernel_dim]).
  Tensor kernel_from(const std::vector<Tensor>& subs, int64_t L);
  /// Sets kernel_norm to the current ||full_kernel()|| per channel (done at construction;
  /// call it after loading or setting kernel_list by hand).
  void reset_kernel_norm();
  std::string name() const override { return "SGConvKernel"; }
  std::string extra_repr() const override;
  const SGConvKernelOptions& options() const { return options_; }
  int64_t num_scales() const { return num_scales_; }
  /// Upsampling factor of sub-kernel i: 2^max(0, i - 1).
  static int64_t scale_factor(int64_t i) { return int64_t{1} << (i > 0 ? i - 1 : 0); }

  std::shared_ptr<nn::Module> kernel_list;  // parameters "0" .. "num_scales-1": [1, H, kernel_dim]
  nn::Buffer multiplier;                    // buffer [1, H, 1]
  nn::Buffer kernel_norm;                   // buffer [1, H, 1]

 private:
  Tensor full_from(const std::vector<Tensor>& subs);  // [..., H, kernel_dim] each -> [..., H, full]
  SGConvKernelOptions options_;
  int64_t num_scales_;
};

// ---------------------------------------------------------------------------------------------
// Layers and model

enum class KernelKind { LongConv, SGConv };

struct LongConvOptions {
  int64_t d_model = 64;  // H
  int64_t l_max = 1024;  // kernel length (longer inputs see a zero-padded kernel)
  KernelKind kernel = KernelKind::LongConv;
  LongConvKernelOptions long_conv{};  // used when kernel == LongConv
  SGConvKernelOptions sgconv{};       // used when kernel == SGConv
  std::string activation = "gelu";    // after the conv: "gelu", "relu", "silu" or "id"
  std::string postact = "glu";        // output_linear: "glu" (H -> 2H, GLU), "id" (H -> H), "none" (no linear)
  double dropout = 0.0;               // after the activation
  bool transposed = false;            // false: [B, L, H]; true: [B, H, L]
};

/// safari's LongConv / SGConv's GConv layer: y = fft_conv(u, kernel(L), D), activation,
/// dropout, then output_linear (Linear + GLU by default) over the channels.
///   x: [B, L, H] (or [B, H, L] when transposed) -> same shape
/// Init: D ~ N(0, 1) ([1, H]), kernels as their modules, output_linear PyTorch's Linear.
class LongConv : public nn::Module {
 public:
  explicit LongConv(const LongConvOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "LongConv"; }
  std::string extra_repr() const override;
  const LongConvOptions& options() const { return options_; }

  nn::Param D;                               // [1, H]
  std::shared_ptr<SequenceKernel> kernel;        // LongConvKernel or SGConvKernel
  std::shared_ptr<nn::Module> activation;
  std::shared_ptr<nn::Module> dropout;
  std::shared_ptr<nn::Module> output_linear;  // Sequential(Linear, GLU / Identity) or Identity

 private:
  LongConvOptions options_;
};

/// Pre-norm residual block: x + drop_path(drop(layer(norm(x)))), layer a LongConv on
/// [B, L, H] (conv, GELU, linear, GLU inside).   x: [B, L, H] -> [B, L, H]
class LongConvBlock : public nn::Module {
 public:
  LongConvBlock(const LongConvOptions& layer_options, double drop_path = 0.0);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "LongConvBlock"; }

  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<LongConv> layer;
  std::shared_ptr<nn::Module> drop;       // Dropout(layer dropout) or Identity
  std::shared_ptr<nn::Module> drop_path;  // DropPath or Identity
};

/// How LongConvModel turns [B, L, H] features into the decoder's input.
enum class Pool {
  Mean,  // average over L -> [B, H]        (sequence classification)
  Last,  // the last position -> [B, H]     (causal classification: sees the whole input)
  None,  // every position -> [B, L, H]     (per-token outputs, language modelling)
};

struct LongConvModelOptions {
  /// > 0: inputs are int64 token ids [B, L] embedded by `encoder` (weight [vocab_size, H],
  /// init N(0, 1)). 0: inputs are float [B, L, d_input] (or [B, L] when d_input == 1) and
  /// `encoder` is a Linear(d_input, H).
  int64_t vocab_size = 0;
  int64_t d_input = 1;
  int64_t d_model = 128;
  int64_t n_layers = 4;
  int64_t l_max = 1024;
  KernelKind kernel = KernelKind::LongConv;
  LongConvKernelOptions long_conv{};
  SGConvKernelOptions sgconv{};
  std::string postact = "glu";
  double dropout = 0.0;         // inside each LongConv and on each residual branch
  double drop_path_rate = 0.0;  // stochastic depth, linear 0..rate over the blocks
  int64_t num_classes = 10;     // decoder outputs; 0: no decoder (forward gives features)
  Pool pool = Pool::Mean;
};

/// encoder -> layers (LongConvBlock x n_layers) -> norm (LayerNorm) -> pool -> decoder.
///   x: [B, L] int64 (vocab_size > 0) or [B, L, d_input] float
///   -> [B, num_classes] (Mean / Last) or [B, L, num_classes] (None); H instead of
///      num_classes when num_classes == 0.
/// Options are validated (kern::Error names the field).
class LongConvModel : public nn::Module {
 public:
  explicit LongConvModel(const LongConvModelOptions& options = {});
  Tensor forward(const Tensor& x) override;
  /// Encoder, blocks and final norm: [B, L, H].
  Tensor forward_features(const Tensor& x);
  std::string name() const override { return "LongConvModel"; }
  const LongConvModelOptions& options() const { return options_; }

  std::shared_ptr<nn::Module> encoder;  // Embedding or Linear
  std::shared_ptr<nn::ModuleList> layers;
  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<nn::Module> decoder;  // Linear, or Identity when num_classes == 0

 private:
  LongConvModelOptions options_;
};

namespace longconv {

/// GLU over the last dim: a * sigmoid(b) with (a, b) its two halves.   x: [*, 2n] -> [*, n]
class GLU : public nn::Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "GLU"; }
};

/// Token embedding: weight [num_embeddings, dim] (init N(0, 1), like torch.nn.Embedding).
///   ids: int64 [*] with values in [0, num_embeddings) -> [*, dim]
class Embedding : public nn::Module {
 public:
  Embedding(int64_t num_embeddings, int64_t dim);
  Tensor forward(const Tensor& ids) override;
  std::string name() const override { return "Embedding"; }
  std::string extra_repr() const override;

  nn::Param weight;  // [num_embeddings, dim]
};

/// The layout of per-channel parameters [1, H, ...] (kernels, D): dim 1 holds the channels
/// (what grows with width), dim 0 is the single input of each channel's filter.
inline constexpr param::Layout kPerChannel{.out_dim = 1, .in_dim = 0};

/// k: [H, n] -> [H, L]: the first L taps, or k zero-padded to L.
Tensor fit_length(const Tensor& k, int64_t L);

/// Holds parameters named "0", "1", ... (torch.nn.ParameterList).
class ParameterList : public nn::Module {
 public:
  nn::Param append(Tensor t, const nn::ParamOptions& options = {});
  std::string name() const override { return "ParameterList"; }
  /// The handles, in order ("0", "1", ...): entries()[i]() is parameter i as forward uses it.
  const std::vector<nn::Param>& entries() const { return entries_; }

 private:
  std::vector<nn::Param> entries_;
};

}  // namespace longconv

/// kern's small variants (not from a paper's table): d_model 128, 4 blocks, l_max 1024,
/// float inputs [B, L, in_chans], mean pooling; ModelOptions set num_classes, in_chans,
/// drop_rate (-> dropout) and drop_path_rate. Registered under these names.
std::shared_ptr<LongConvModel> longconv_small(const ModelOptions& o = {});  // LongConvKernel
std::shared_ptr<LongConvModel> sgconv_small(const ModelOptions& o = {});    // SGConvKernel (kernel_dim 64)

}  // namespace kern::models
