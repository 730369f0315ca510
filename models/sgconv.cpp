// SGConv's kernel (Li et al. 2022; ctlllll/SGConv GConv, mode "cat_randn"): multiscale
// sub-kernels, each upsampled and decayed, concatenated and normalized; and the 1-D upsampling
// it uses (torch.nn.functional.interpolate with an integer scale factor, align_corners=False).
#include <kern/models/longconv.hpp>

#include <kern/error.hpp>
#include <kern/ops.hpp>

#include <algorithm>
#include <cmath>

namespace kern::models {

Tensor upsample1d(const Tensor& x, int64_t factor, const std::string& mode) {
  KERN_CHECK(factor >= 1, "upsample1d: factor must be >= 1, got ", factor);
  KERN_CHECK(mode == "linear" || mode == "nearest", "upsample1d: mode must be \"linear\" or \"nearest\", got \"",
             mode, "\"");
  KERN_CHECK(x.dim() >= 1 && x.size(-1) >= 1 && is_floating(x.dtype()),
             "upsample1d: expected a floating input [*, n] with n >= 1, got ", x.dtype(), " of shape ", x.shape());
  if (factor == 1) return x;
  const int64_t n = x.size(-1), m = n * factor;
  // Output tap j reads source position (j + 1/2) / factor - 1/2 (clamped at 0): nearest takes
  // floor(j / factor); linear mixes the two neighbours, the right one clamped to n - 1.
  std::vector<int64_t> lo(static_cast<size_t>(m)), hi(static_cast<size_t>(m));
  std::vector<double> w(static_cast<size_t>(m));
  for (int64_t j = 0; j < m; ++j) {
    const size_t s = static_cast<size_t>(j);
    if (mode == "nearest") {
      lo[s] = std::min(j / factor, n - 1);
      continue;
    }
    const double src = std::max(0.0, (static_cast<double>(j) + 0.5) / static_cast<double>(factor) - 0.5);
    const int64_t i0 = static_cast<int64_t>(src);
    lo[s] = i0;
    hi[s] = std::min(i0 + 1, n - 1);
    w[s] = src - static_cast<double>(i0);
  }
  Tensor x_lo = index_select(x, -1, from_vector<int64_t>(lo, {m}));
  if (mode == "nearest") return x_lo;
  Tensor x_hi = index_select(x, -1, from_vector<int64_t>(hi, {m}));
  Tensor w1 = from_vector<double>(w, {m}).to(x.dtype());
  return x_lo * (1.0 - w1) + x_hi * w1;  // [*, m]
}

SGConvKernel::SGConvKernel(int64_t H, int64_t l_max, const SGConvKernelOptions& o)
    : SequenceKernel(H, l_max), options_(o) {
  KERN_CHECK(H >= 1, "SGConvKernel: H (channels) must be >= 1, got ", H);
  KERN_CHECK(l_max >= 1, "SGConvKernel: L (l_max, the kernel length) must be >= 1, got ", l_max);
  KERN_CHECK(o.kernel_dim >= 1, "SGConvKernel: kernel_dim must be >= 1, got ", o.kernel_dim);
  KERN_CHECK(o.num_scales >= 0 && o.num_scales <= 32, "SGConvKernel: num_scales must be in [0, 32] (0: derived from L), got ",
             o.num_scales);
  KERN_CHECK(o.decay_min > 0 && o.decay_max > 0, "SGConvKernel: decay_min (", o.decay_min, ") and decay_max (",
             o.decay_max, ") must be > 0");
  KERN_CHECK(o.interpolate == "linear" || o.interpolate == "nearest",
             "SGConvKernel: interpolate must be \"linear\" or \"nearest\", got \"", o.interpolate, "\"");
  num_scales_ = o.num_scales;
  if (num_scales_ == 0) {
    // 1 + ceil(log2(l_max / kernel_dim)), at least 1: the smallest count whose concatenation
    // kernel_dim * 2^(num_scales - 1) reaches l_max (in integers, no log rounding).
    int64_t s = 0;
    while ((o.kernel_dim << s) < l_max) ++s;
    num_scales_ = 1 + s;
  }
  auto list = std::make_shared<longconv::ParameterList>();
  for (int64_t i = 0; i < num_scales_; ++i)
    list->append(randn({1, H, o.kernel_dim}), nn::ParamOptions{.layout = longconv::kPerChannel});
  kernel_list = register_module("kernel_list", list);
  // torch.linspace(decay_min, decay_max, H) (a single channel gets decay_min).
  std::vector<float> m(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h)
    m[static_cast<size_t>(h)] = static_cast<float>(
        H == 1 ? o.decay_min
               : o.decay_min + (o.decay_max - o.decay_min) * static_cast<double>(h) / static_cast<double>(H - 1));
  multiplier = register_buffer("multiplier", from_vector<float>(m, {1, H, 1}));
  kernel_norm = register_buffer("kernel_norm", ones({1, H, 1}));
  reset_kernel_norm();
}

Tensor SGConvKernel::full_from(const std::vector<Tensor>& subs) {
  KERN_CHECK(static_cast<int64_t>(subs.size()) == num_scales_, "SGConvKernel: expected ", num_scales_,
             " sub-kernels, got ", subs.size());
  std::vector<Tensor> pieces;
  for (int64_t i = 0; i < num_scales_; ++i) {
    const Tensor& sub = subs[static_cast<size_t>(i)];
    KERN_CHECK(sub.dim() >= 2 && sub.size(-2) == H_ && sub.size(-1) == options_.kernel_dim,
               "SGConvKernel: sub-kernel ", i, " must be [..., H = ", H_, ", kernel_dim = ", options_.kernel_dim,
               "], got ", sub.shape());
    // Sub-kernel i weighted by m^(num_scales - 1 - i): the coarser (later) scales are smaller.
    Tensor piece = sub;
    const double e = static_cast<double>(num_scales_ - 1 - i);
    if (e != 0) piece = piece * pow(multiplier().reshape({H_, 1}), e);
    pieces.push_back(upsample1d(piece, scale_factor(i), options_.interpolate));
  }
  return cat(pieces, -1);  // [..., H, kernel_dim * 2^(num_scales - 1)]
}

Tensor SGConvKernel::full_kernel() {
  const auto& entries = static_cast<const longconv::ParameterList&>(*kernel_list).entries();
  std::vector<Tensor> subs;
  for (const auto& p : entries) subs.push_back(p().reshape({H_, options_.kernel_dim}));
  return full_from(subs);  // [H, kernel_dim * 2^(num_scales - 1)]
}

Tensor SGConvKernel::kernel(int64_t L) {
  KERN_CHECK(L >= 1, "SGConvKernel::kernel: sequence length L must be >= 1, got ", L);
  return longconv::fit_length(full_kernel(), L) / kernel_norm().reshape({H_, 1});  // [H, L]
}

Tensor SGConvKernel::kernel_from(const std::vector<Tensor>& subs, int64_t L) {
  KERN_CHECK(L >= 1, "SGConvKernel::kernel_from: sequence length L must be >= 1, got ", L);
  return longconv::fit_length(full_from(subs), L) / kernel_norm().reshape({H_, 1});  // [..., H, L]
}

void SGConvKernel::reset_kernel_norm() {
  NoGradGuard ng;
  // SGConv measures the norm over the whole concatenation (also past l_max), once.
  Tensor(kernel_norm.tensor()).copy_(norm(full_kernel(), 2.0, {-1}, true).reshape({1, H_, 1}));
}

std::string SGConvKernel::extra_repr() const {
  return fmt::format("H={}, L={}, kernel_dim={}, num_scales={}, decay=({}, {}), interpolate={}", H_, l_max_,
                     options_.kernel_dim, num_scales_, options_.decay_min, options_.decay_max, options_.interpolate);
}

}  // namespace kern::models
