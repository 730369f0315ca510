// Long convolutions: fft_conv, the squash, safari's LongConvKernel, the LongConv layer, the
// residual block, LongConvModel and the zoo variants. SGConvKernel lives in sgconv.cpp.
#include <kern/models/longconv.hpp>

#include <kern/error.hpp>
#include <kern/ops.hpp>

#include <cmath>
#include <string>

namespace kern::models {

// ---------------------------------------------------------------------------------------------
// Functional ops

Tensor fft_conv(const Tensor& u, const Tensor& k, const Tensor& D) {
  KERN_CHECK(u.defined() && k.defined(), "fft_conv: u and k must be defined tensors");
  KERN_CHECK(u.dim() >= 2, "fft_conv: u must be [B, H, L] (any leading dims), got shape ", u.shape());
  KERN_CHECK(is_floating(u.dtype()) && k.dtype() == u.dtype(), "fft_conv: u (", u.dtype(), ") and k (",
             k.dtype(), ") must have the same floating dtype");
  const int64_t H = u.size(-2), L = u.size(-1);
  KERN_CHECK(L >= 1, "fft_conv: sequence length L must be >= 1, got u of shape ", u.shape());
  KERN_CHECK(k.dim() == 2, "fft_conv: kernel k must be [H, L] = [", H, ", ", L, "], got shape ", k.shape());
  KERN_CHECK(k.size(0) == H, "fft_conv: kernel k has ", k.size(0), " channels but u has H = ", H,
             " (k: ", k.shape(), ", u: ", u.shape(), ")");
  KERN_CHECK(k.size(1) == L, "fft_conv: kernel k has length ", k.size(1), " but u has L = ", L, " (k: ",
             k.shape(), ", u: ", u.shape(), "); fit the kernel to L first");
  if (D.defined()) {
    KERN_CHECK(D.dtype() == u.dtype(), "fft_conv: D is ", D.dtype(), " but u is ", u.dtype());
    KERN_CHECK(D.dim() == 1 && D.size(0) == H, "fft_conv: skip weight D must be [H] = [", H, "], got shape ",
               D.shape());
  }
  // Zero-padding both to n >= 2L - 1 turns the FFT's circular convolution into the linear
  // one on the first L outputs; a power of two keeps rfft/irfft on the radix-2 path.
  int64_t n = 1;
  while (n < 2 * L) n *= 2;
  Tensor spec = complex_mul(rfft(u, n), rfft(k, n));  // [B, H, n/2 + 1, 2]; k broadcasts over B
  Tensor y = narrow(irfft(spec, n), -1, 0, L);        // [B, H, L]
  if (D.defined()) y = y + u * D.reshape({H, 1});
  return y;
}

Tensor squash(const Tensor& k, double lam) {
  KERN_CHECK(lam >= 0, "squash: threshold lam must be >= 0, got ", lam);
  // d/dk = 1[|k| > lam] (sign(k)^2): the gradient passes through the surviving taps only.
  return sign(k) * relu(abs(k) - lam);
}

Tensor moving_average(const Tensor& k, int64_t window) {
  KERN_CHECK(window >= 1 && window % 2 == 1, "moving_average: window must be odd and >= 1, got ", window);
  KERN_CHECK(k.dim() >= 1, "moving_average: input must have at least 1 dim, got shape ", k.shape());
  if (window == 1) return k;
  const int64_t L = k.size(-1), half = window / 2;
  Tensor padded = pad(k, {half, half});  // [*, L + window - 1]
  Tensor acc = narrow(padded, -1, 0, L);
  for (int64_t j = 1; j < window; ++j) acc = acc + narrow(padded, -1, j, L);
  return acc / static_cast<double>(window);
}

namespace longconv {

Tensor fit_length(const Tensor& k, int64_t L) {
  const int64_t n = k.size(-1);
  if (L == n) return k;
  if (L < n) return narrow(k, -1, 0, L);
  return pad(k, {0, L - n});
}

Tensor GLU::forward(const Tensor& x) {
  KERN_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0, "GLU: last dim must be even, got shape ", x.shape());
  auto halves = chunk(x, 2, -1);
  return halves[0] * sigmoid(halves[1]);
}

Embedding::Embedding(int64_t num_embeddings, int64_t dim) {
  KERN_CHECK(num_embeddings >= 1 && dim >= 1, "Embedding: num_embeddings (", num_embeddings, ") and dim (", dim,
             ") must be >= 1");
  // [num, dim]: the input (one-hot) dim first, the output (channel) dim second.
  weight = register_parameter("weight", empty({num_embeddings, dim}),
                              nn::ParamOptions{.layout = param::Layout{.out_dim = 1, .in_dim = 0}});
  nn::init::normal_(weight.tensor(), 0.0, 1.0);
}

Tensor Embedding::forward(const Tensor& ids) {
  KERN_CHECK(ids.dtype() == DType::Int64, "Embedding: ids must be int64 token indices, got ", ids.dtype(),
             " of shape ", ids.shape());
  Shape out = ids.shape();
  out.push_back(weight.shape()[1]);
  return index_select(weight(), 0, ids.reshape({-1})).reshape(out);
}

std::string Embedding::extra_repr() const { return fmt::format("{}, {}", weight.shape()[0], weight.shape()[1]); }

nn::Param ParameterList::append(Tensor t, const nn::ParamOptions& options) {
  nn::Param p = register_parameter(std::to_string(params_.size()), std::move(t), options);
  entries_.push_back(p);
  return p;
}

}  // namespace longconv

// ---------------------------------------------------------------------------------------------
// SequenceKernel, LongConvKernel

Tensor SequenceKernel::forward(const Tensor& u) {
  KERN_CHECK(u.defined() && u.dim() >= 2, name(), ": expected a sequence [B, H, L] (H = ", H_, "), got ",
             u.defined() ? fmt::format("{}", u.shape()) : std::string("an undefined tensor"));
  return fft_conv(u, kernel(u.size(-1)));  // [B, H, L]
}

LongConvKernel::LongConvKernel(int64_t H, int64_t l_max, const LongConvKernelOptions& o)
    : SequenceKernel(H, l_max), options_(o) {
  KERN_CHECK(H >= 1, "LongConvKernel: H (channels) must be >= 1, got ", H);
  KERN_CHECK(l_max >= 1, "LongConvKernel: L (l_max, the kernel length) must be >= 1, got ", l_max);
  KERN_CHECK(o.lam >= 0, "LongConvKernel: lam (squash threshold) must be >= 0, got ", o.lam);
  KERN_CHECK(o.kernel_dropout >= 0 && o.kernel_dropout < 1, "LongConvKernel: kernel_dropout must be in [0, 1), got ",
             o.kernel_dropout);
  KERN_CHECK(o.ma_window_len == 0 || (o.ma_window_len >= 1 && o.ma_window_len % 2 == 1),
             "LongConvKernel: ma_window_len must be 0 (off) or odd, got ", o.ma_window_len);
  KERN_CHECK(o.weight_init == "random" || o.weight_init == "double_exp",
             "LongConvKernel: weight_init must be \"random\" or \"double_exp\", got \"", o.weight_init, "\"");
  Tensor k = empty({1, H, l_max});
  if (o.weight_init == "random") {
    nn::init::normal_(k, 0.0, 0.002);
  } else {
    // safari's double_exp: channel i decays along the taps j at rate floor(H/2)^(i/H) / L.
    nn::init::normal_(k, 0.0, 0.02);
    std::vector<float> env(static_cast<size_t>(H * l_max));
    const double base = static_cast<double>(H / 2);
    for (int64_t i = 0; i < H; ++i) {
      const double rate = std::pow(base, static_cast<double>(i) / static_cast<double>(H));
      for (int64_t j = 0; j < l_max; ++j)
        env[static_cast<size_t>(i * l_max + j)] =
            static_cast<float>(std::exp(-(static_cast<double>(j) / static_cast<double>(l_max)) * rate));
    }
    NoGradGuard ng;
    k.copy_(k * from_vector<float>(env, {1, H, l_max}));
  }
  // [1, H, l_max]: one filter per channel h (dim 1), l_max taps.
  weight = register_parameter("kernel", k, nn::ParamOptions{.layout = longconv::kPerChannel});
}

Tensor LongConvKernel::kernel(int64_t L) {
  KERN_CHECK(L >= 1, "LongConvKernel::kernel: sequence length L must be >= 1, got ", L);
  return kernel_from(weight().reshape({H_, l_max_}), L);  // [H, L]
}

Tensor LongConvKernel::kernel_from(const Tensor& w, int64_t L) {
  KERN_CHECK(L >= 1, "LongConvKernel::kernel_from: sequence length L must be >= 1, got ", L);
  KERN_CHECK(w.dim() >= 2 && w.size(-2) == H_ && w.size(-1) == l_max_, "LongConvKernel::kernel_from: w must be [..., H = ",
             H_, ", l_max = ", l_max_, "], got ", w.shape());
  Tensor k = w;  // [..., H, l_max]
  if (options_.ma_window_len > 1) k = moving_average(k, options_.ma_window_len);
  k = squash(k, options_.lam);
  if (options_.kernel_dropout > 0) k = dropout(k, options_.kernel_dropout, is_training());
  return longconv::fit_length(k, L);  // [..., H, L]
}

std::string LongConvKernel::extra_repr() const {
  return fmt::format("H={}, L={}, lam={}, kernel_dropout={}, weight_init={}, ma_window_len={}", H_, l_max_,
                     options_.lam, options_.kernel_dropout, options_.weight_init, options_.ma_window_len);
}

// ---------------------------------------------------------------------------------------------
// LongConv layer

namespace {

std::shared_ptr<nn::Module> make_activation(const std::string& name, const char* who) {
  if (name == "gelu") return std::make_shared<nn::GELU>();
  if (name == "relu") return std::make_shared<nn::ReLU>();
  if (name == "silu") return std::make_shared<nn::SiLU>();
  if (name == "id" || name == "identity") return std::make_shared<nn::Identity>();
  KERN_CHECK(false, who, ": activation must be \"gelu\", \"relu\", \"silu\" or \"id\", got \"", name, "\"");
  return nullptr;
}

}  // namespace

LongConv::LongConv(const LongConvOptions& o) : options_(o) {
  KERN_CHECK(o.d_model >= 1, "LongConv: d_model (H) must be >= 1, got ", o.d_model);
  KERN_CHECK(o.l_max >= 1, "LongConv: l_max (L) must be >= 1, got ", o.l_max);
  KERN_CHECK(o.dropout >= 0 && o.dropout < 1, "LongConv: dropout must be in [0, 1), got ", o.dropout);
  KERN_CHECK(o.postact == "glu" || o.postact == "id" || o.postact == "none",
             "LongConv: postact must be \"glu\", \"id\" or \"none\", got \"", o.postact, "\"");
  const int64_t H = o.d_model;
  // Registration order = safari's: D, kernel, activation, dropout, output_linear.
  D = register_parameter("D", empty({1, H}), nn::ParamOptions{.layout = longconv::kPerChannel});
  nn::init::normal_(D.tensor(), 0.0, 1.0);
  if (o.kernel == KernelKind::LongConv)
    kernel = register_module("kernel", std::make_shared<LongConvKernel>(H, o.l_max, o.long_conv));
  else
    kernel = register_module("kernel", std::make_shared<SGConvKernel>(H, o.l_max, o.sgconv));
  activation = register_module("activation", make_activation(o.activation, "LongConv"));
  if (o.dropout > 0)
    dropout = register_module("dropout", std::make_shared<nn::Dropout>(o.dropout));
  else
    dropout = register_module("dropout", std::make_shared<nn::Identity>());
  if (o.postact == "none") {
    output_linear = register_module("output_linear", std::make_shared<nn::Identity>());
  } else {
    auto seq = std::make_shared<nn::Sequential>();
    if (o.postact == "glu") {
      seq->push_back(std::make_shared<nn::Linear>(H, 2 * H));
      seq->push_back(std::make_shared<longconv::GLU>());
    } else {
      seq->push_back(std::make_shared<nn::Linear>(H, H));
      seq->push_back(std::make_shared<nn::Identity>());
    }
    output_linear = register_module("output_linear", seq);
  }
}

Tensor LongConv::forward(const Tensor& x) {
  const int64_t H = options_.d_model;
  const char* layout = options_.transposed ? "[B, H, L]" : "[B, L, H]";
  KERN_CHECK(x.dim() == 3, "LongConv: expected input ", layout, " with H = ", H, ", got shape ", x.shape());
  Tensor u = options_.transposed ? x : x.transpose(1, 2);  // [B, H, L]
  KERN_CHECK(u.size(1) == H, "LongConv: input has ", u.size(1), " channels but d_model (H) is ", H, " (expected ",
             layout, ", got ", x.shape(), ")");
  const int64_t L = u.size(2);
  KERN_CHECK(L >= 1, "LongConv: sequence length L must be >= 1, got shape ", x.shape());
  // The kernel module convolves (its hooks see u and the convolution); then the skip D * u,
  // as fft_conv(u, k, D) adds it.
  Tensor y = (*kernel)(u) + u * D().reshape({H, 1});  // [B, H, L]
  y = (*dropout)((*activation)(y));
  y = y.transpose(1, 2);  // [B, L, H]: the output linear mixes channels
  y = (*output_linear)(y);
  return options_.transposed ? y.transpose(1, 2) : y;
}

std::string LongConv::extra_repr() const {
  return fmt::format("d_model={}, l_max={}, kernel={}, transposed={}", options_.d_model, options_.l_max,
                     options_.kernel == KernelKind::LongConv ? "long_conv" : "sgconv",
                     options_.transposed ? "True" : "False");
}

// ---------------------------------------------------------------------------------------------
// Block and model

LongConvBlock::LongConvBlock(const LongConvOptions& layer_options, double drop_path_rate) {
  LongConvOptions lo = layer_options;
  lo.transposed = false;
  norm = register_module("norm", std::make_shared<nn::LayerNorm>(lo.d_model));
  layer = register_module("layer", std::make_shared<LongConv>(lo));
  if (lo.dropout > 0)
    drop = register_module("drop", std::make_shared<nn::Dropout>(lo.dropout));
  else
    drop = register_module("drop", std::make_shared<nn::Identity>());
  if (drop_path_rate > 0)
    drop_path = register_module("drop_path", std::make_shared<nn::DropPath>(drop_path_rate));
  else
    drop_path = register_module("drop_path", std::make_shared<nn::Identity>());
}

Tensor LongConvBlock::forward(const Tensor& x) {
  return x + (*drop_path)((*drop)((*layer)((*norm)(x))));
}

LongConvModel::LongConvModel(const LongConvModelOptions& o) : options_(o) {
  KERN_CHECK(o.vocab_size >= 0, "LongConvModel: vocab_size must be >= 0 (0: float inputs), got ", o.vocab_size);
  KERN_CHECK(o.vocab_size > 0 || o.d_input >= 1, "LongConvModel: d_input must be >= 1, got ", o.d_input);
  KERN_CHECK(o.d_model >= 1, "LongConvModel: d_model must be >= 1, got ", o.d_model);
  KERN_CHECK(o.n_layers >= 0, "LongConvModel: n_layers must be >= 0, got ", o.n_layers);
  KERN_CHECK(o.l_max >= 1, "LongConvModel: l_max must be >= 1, got ", o.l_max);
  KERN_CHECK(o.num_classes >= 0, "LongConvModel: num_classes must be >= 0, got ", o.num_classes);
  KERN_CHECK(o.drop_path_rate >= 0 && o.drop_path_rate < 1, "LongConvModel: drop_path_rate must be in [0, 1), got ",
             o.drop_path_rate);
  if (o.vocab_size > 0)
    encoder = register_module("encoder", std::make_shared<longconv::Embedding>(o.vocab_size, o.d_model));
  else
    encoder = register_module("encoder", std::make_shared<nn::Linear>(o.d_input, o.d_model));
  LongConvOptions lo{.d_model = o.d_model,
                     .l_max = o.l_max,
                     .kernel = o.kernel,
                     .long_conv = o.long_conv,
                     .sgconv = o.sgconv,
                     .postact = o.postact,
                     .dropout = o.dropout};
  layers = register_module("layers", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < o.n_layers; ++i) {
    const double dp = o.n_layers > 1 ? o.drop_path_rate * static_cast<double>(i) / static_cast<double>(o.n_layers - 1)
                                     : 0.0;
    layers->push_back(std::make_shared<LongConvBlock>(lo, dp));
  }
  norm = register_module("norm", std::make_shared<nn::LayerNorm>(o.d_model));
  if (o.num_classes > 0)
    decoder = register_module("decoder", std::make_shared<nn::Linear>(o.d_model, o.num_classes));
  else
    decoder = register_module("decoder", std::make_shared<nn::Identity>());
}

Tensor LongConvModel::forward_features(const Tensor& x) {
  Tensor h;
  if (options_.vocab_size > 0) {
    KERN_CHECK(x.dim() == 2 && x.dtype() == DType::Int64, "LongConvModel: expected int64 token ids [B, L] (vocab_size ",
               options_.vocab_size, "), got ", x.dtype(), " of shape ", x.shape());
    h = (*encoder)(x);
  } else {
    Tensor xi = (x.dim() == 2 && options_.d_input == 1) ? x.unsqueeze(-1) : x;
    KERN_CHECK(is_floating(x.dtype()) && xi.dim() == 3 && xi.size(2) == options_.d_input,
               "LongConvModel: expected float inputs [B, L, d_input] with d_input = ", options_.d_input, ", got ",
               x.dtype(), " of shape ", x.shape());
    h = (*encoder)(xi);
  }
  KERN_CHECK(h.size(1) >= 1, "LongConvModel: sequence length L must be >= 1, got shape ", x.shape());
  for (const auto& block : *layers) h = (*block)(h);
  return (*norm)(h);  // [B, L, H]
}

Tensor LongConvModel::forward(const Tensor& x) {
  Tensor f = forward_features(x);
  switch (options_.pool) {
    case Pool::Mean: f = f.mean({1}); break;
    case Pool::Last: f = f.select(1, f.size(1) - 1); break;
    case Pool::None: break;
  }
  return (*decoder)(f);
}

// ---------------------------------------------------------------------------------------------
// Zoo

namespace {

LongConvModelOptions small_options(const ModelOptions& o, KernelKind kind) {
  return {.vocab_size = 0,
          .d_input = o.in_chans,
          .d_model = scale_width(128, o.width_mult),
          .n_layers = 4,
          .l_max = 1024,
          .kernel = kind,
          .dropout = o.drop_rate,
          .drop_path_rate = o.drop_path_rate,
          .num_classes = o.num_classes,
          .pool = Pool::Mean};
}

}  // namespace

std::shared_ptr<LongConvModel> longconv_small(const ModelOptions& o) {
  return std::make_shared<LongConvModel>(small_options(o, KernelKind::LongConv));
}

std::shared_ptr<LongConvModel> sgconv_small(const ModelOptions& o) {
  return std::make_shared<LongConvModel>(small_options(o, KernelKind::SGConv));
}

KERN_REGISTER_MODEL("longconv_small", longconv_small, ModelInfo{.input = InputKind::Sequence, .width = 128});
KERN_REGISTER_MODEL("sgconv_small", sgconv_small, ModelInfo{.input = InputKind::Sequence, .width = 128});

}  // namespace kern::models
