// kern::limits linear layers: Dense, Conv, AvgPool, GlobalAvgPool, Flatten, Identity,
// LayerNorm; each with its kernel map and its finite-width twin side by side.
#include "internal.hpp"

#include <kern/autograd.hpp>
#include <kern/nn/container.hpp>
#include <kern/nn/conv.hpp>
#include <kern/nn/linear.hpp>
#include <kern/ops.hpp>

#include <cmath>
#include <fmt/format.h>

namespace kern::limits {
namespace {

using detail::Axis;

// ---- the twin's Dense/Conv parameters: drawn and recorded as the parameterization says
struct AffineSpec {
  double W_std, b_std;
  bool bias;
  Parameterization par;
};

void init_affine(nn::Module& m, nn::Param& weight, nn::Param& bias, int64_t fan_in, const AffineSpec& s,
                 bool readout, Generator* gen) {
  NoGradGuard guard;
  const bool ntk = s.par == Parameterization::NTK;
  const double w_std = ntk ? 1.0 : s.W_std / std::sqrt(static_cast<double>(fan_in));
  weight.tensor().copy_(randn(weight.shape(), DType::Float64, gen) * w_std);
  param::ParamRecord rec;
  rec.scheme = ntk ? param::Scheme::NTK : param::Scheme::Standard;
  rec.role = readout ? param::Role::OutputWeight : param::Role::HiddenWeight;
  rec.fan_in = fan_in;
  rec.fan_out = weight.shape()[0];
  rec.init = param::InitKind::Normal;
  rec.init_std = w_std;
  rec.multiplier = ntk ? s.W_std / std::sqrt(static_cast<double>(fan_in)) : 1.0;
  m.set_param_record("weight", rec);
  if (bias) {
    const double b_std = ntk ? 1.0 : s.b_std;
    bias.tensor().copy_(randn(bias.shape(), DType::Float64, gen) * b_std);
    param::ParamRecord rb = rec;
    rb.role = param::Role::Bias;
    rb.init_std = b_std;
    rb.multiplier = ntk ? s.b_std : 1.0;
    m.set_param_record("bias", rb);
  }
}

int64_t next_width(TwinContext& ctx) {
  const bool last = ctx.linear_index == ctx.linear_count - 1;
  ++ctx.linear_index;
  return last ? ctx.out_features : ctx.width;
}

// ---- the affine kernel update shared by Dense and Conv, given A(nngp), A(ntk) (and covs):
//   ntk:      nngp' = W^2 A(nngp) + b^2,  ntk' = nngp' + W^2 A(ntk)
//   standard: nngp' as above,             ntk' = fan_in A(nngp) + W^2 A(ntk) + [bias]
void affine(Kernel& k, const AffineSpec& s, int64_t fan_in, const char* op) {
  const double w2 = s.W_std * s.W_std, b2 = s.b_std * s.b_std;
  const bool ntk = s.par == Parameterization::NTK;
  const double fan = static_cast<double>(fan_in), one = s.bias ? 1.0 : 0.0;
  const int64_t n = static_cast<int64_t>(k.nngp.size());
  double* nngp = k.nngp.data();
  double* ntk_k = k.ntk.data();
  if (ntk) {
#pragma omp parallel for simd if (n > 65536)
    for (int64_t e = 0; e < n; ++e) {
      nngp[e] = w2 * nngp[e] + b2;
      ntk_k[e] = nngp[e] + w2 * ntk_k[e];
    }
  } else {
#pragma omp parallel for simd if (n > 65536)
    for (int64_t e = 0; e < n; ++e) {
      const double a = nngp[e];
      nngp[e] = w2 * a + b2;
      ntk_k[e] = fan * a + w2 * ntk_k[e] + one;
    }
  }
  for (double& v : k.cov1) v = w2 * v + b2;
  for (double& v : k.cov2) v = w2 * v + b2;
  k.is_gaussian = true;
}

void check_spec(const AffineSpec& s, const char* op) {
  KERN_CHECK(s.W_std >= 0 && s.b_std >= 0, "limits::", op, ": W_std ", s.W_std, " and b_std ",
             s.b_std, " must be >= 0");
  KERN_CHECK(s.bias || s.b_std == 0.0, "limits::", op, ": b_std ", s.b_std,
             " given with bias = false");
}

// ---- Dense: acts on the channels (per pixel for images, like a 1x1 conv)
class DenseImpl : public LayerImpl {
 public:
  explicit DenseImpl(const DenseOptions& o) : s_{o.W_std, o.b_std, o.bias, o.parameterization} {
    check_spec(s_, "Dense");
  }
  std::string name() const override { return fmt::format("Dense(W_std={}, b_std={})", s_.W_std, s_.b_std); }
  int64_t linear_layers() const override { return 1; }
  void apply(Kernel& k) const override {
    KERN_CHECK(k.channels > 0 || s_.par == Parameterization::NTK,
               "limits::Dense: the standard parameterization needs the input's finite width: "
               "set KernelOptions::width");
    affine(k, s_, k.channels, "Dense");
    k.channels = k.width;
  }
  std::shared_ptr<nn::Module> twin(TwinShape& shape, TwinContext& ctx) const override {
    const bool readout = ctx.linear_index == ctx.linear_count - 1;
    const int64_t out = next_width(ctx);
    std::shared_ptr<nn::Module> m;
    if (shape.spatial()) {
      auto c = std::make_shared<nn::Conv2d>(nn::Conv2dOptions(shape.channels, out, 1).bias(s_.bias));
      c->to(DType::Float64);
      init_affine(*c, c->weight, c->bias, shape.channels, s_, readout, ctx.gen);
      m = c;
    } else {
      auto l = std::make_shared<nn::Linear>(nn::LinearOptions(shape.channels, out).bias(s_.bias));
      l->to(DType::Float64);
      init_affine(*l, l->weight, l->bias, shape.channels, s_, readout, ctx.gen);
      m = l;
    }
    shape.channels = out;
    return m;
  }

 private:
  AffineSpec s_;
};

// ---- Conv: A(K)[p, q] = 1/(kH kW) sum_d K[s p + d - pad, s q + d - pad]
class ConvImpl : public LayerImpl {
 public:
  ConvImpl(std::array<int64_t, 2> ks, const ConvOptions& o)
      : ks_(ks), o_(o), s_{o.W_std, o.b_std, o.bias, o.parameterization} {
    check_spec(s_, "Conv");
    KERN_CHECK(ks[0] >= 1 && ks[1] >= 1 && o.stride[0] >= 1 && o.stride[1] >= 1,
               "limits::Conv: kernel size (", ks[0], ", ", ks[1], ") and stride (", o.stride[0],
               ", ", o.stride[1], ") must be >= 1");
  }
  std::string name() const override { return fmt::format("Conv({}x{})", ks_[0], ks_[1]); }
  int64_t linear_layers() const override { return 1; }
  void apply(Kernel& k) const override {
    KERN_CHECK(k.spatial, "limits::Conv: needs images [N, C, H, W], got vectors (after Flatten "
               "or GlobalAvgPool, or [N, F] inputs)");
    const Axis ah = detail::make_axis(k.h, ks_[0], o_.stride[0], o_.padding, "limits::Conv");
    const Axis aw = detail::make_axis(k.w, ks_[1], o_.stride[1], o_.padding, "limits::Conv");
    KERN_CHECK(k.channels > 0 || s_.par == Parameterization::NTK,
               "limits::Conv: the standard parameterization needs the input's finite width: set "
               "KernelOptions::width");
    const int64_t fan_in = k.channels * ks_[0] * ks_[1];
    if (k.full) {
      const int64_t out = ah.out * aw.out * ah.out * aw.out;
      detail::map_blocks(
          k, out,
          [&](const double* in, double* o) {
            thread_local std::vector<double> tmp;
            detail::window_full(in, o, ah, aw, true, tmp);
          },
          /*f_allows_aliasing=*/true);
    } else {
      detail::map_blocks(k, ah.out * aw.out,
                         [&](const double* in, double* o) { detail::window_diag(in, o, ah, aw); });
    }
    k.h = ah.out;
    k.w = aw.out;
    affine(k, s_, fan_in, "Conv");
    k.channels = k.width;
  }
  std::shared_ptr<nn::Module> twin(TwinShape& shape, TwinContext& ctx) const override {
    KERN_CHECK(shape.spatial(), "limits::Conv twin: needs image inputs");
    const Axis ah = detail::make_axis(shape.h, ks_[0], o_.stride[0], o_.padding, "limits::Conv");
    const Axis aw = detail::make_axis(shape.w, ks_[1], o_.stride[1], o_.padding, "limits::Conv");
    const bool readout = ctx.linear_index == ctx.linear_count - 1;
    const int64_t out = next_width(ctx);
    // XLA's SAME padding puts the odd extra pixel on the high side; PyTorch's is symmetric.
    const int64_t hi_h = o_.padding == Padding::Same
                             ? (ah.out - 1) * ah.stride + ah.window - ah.in - ah.pad : 0;
    const int64_t hi_w = o_.padding == Padding::Same
                             ? (aw.out - 1) * aw.stride + aw.window - aw.in - aw.pad : 0;
    const bool symmetric = hi_h == ah.pad && hi_w == aw.pad;
    auto conv = std::make_shared<nn::Conv2d>(
        nn::Conv2dOptions(shape.channels, out, ks_)
            .stride(o_.stride)
            .padding(symmetric ? std::array<int64_t, 2>{ah.pad, aw.pad} : std::array<int64_t, 2>{0, 0})
            .bias(s_.bias));
    conv->to(DType::Float64);
    init_affine(*conv, conv->weight, conv->bias, shape.channels * ks_[0] * ks_[1], s_, readout,
                ctx.gen);
    shape.channels = out;
    shape.h = ah.out;
    shape.w = aw.out;
    if (symmetric) return conv;
    const std::vector<int64_t> pads{aw.pad, std::max<int64_t>(hi_w, 0), ah.pad,
                                    std::max<int64_t>(hi_h, 0)};
    return std::make_shared<nn::Sequential>(
        std::make_shared<nn::Functional>([pads](const Tensor& x) { return pad(x, pads); }, "SamePad"),
        conv);
  }

 private:
  std::array<int64_t, 2> ks_;
  ConvOptions o_;
  AffineSpec s_;
};

// ---- AvgPool: the window mean at p and at q independently (needs full covariances)
class AvgPoolImpl : public LayerImpl {
 public:
  AvgPoolImpl(std::array<int64_t, 2> window, const PoolOptions& o) : win_(window), o_(o) {
    if (o_.stride[0] == 0) o_.stride[0] = win_[0];
    if (o_.stride[1] == 0) o_.stride[1] = win_[1];
  }
  std::string name() const override { return fmt::format("AvgPool({}x{})", win_[0], win_[1]); }
  bool needs_full(bool) const override { return true; }
  void apply(Kernel& k) const override {
    KERN_CHECK(k.spatial, "limits::AvgPool: needs images [N, C, H, W], got vectors");
    KERN_CHECK(k.full, "limits::AvgPool: needs full pixel-pixel covariances, but the kernel "
               "keeps only their diagonal (KernelOptions::force_diagonal)");
    const Axis ah = detail::make_axis(k.h, win_[0], o_.stride[0], o_.padding, "limits::AvgPool");
    const Axis aw = detail::make_axis(k.w, win_[1], o_.stride[1], o_.padding, "limits::AvgPool");
    detail::map_blocks(k, ah.out * aw.out * ah.out * aw.out, [&](const double* in, double* o) {
      thread_local std::vector<double> tmp;
      detail::window_full(in, o, ah, aw, false, tmp);
    });
    k.h = ah.out;
    k.w = aw.out;
  }
  std::shared_ptr<nn::Module> twin(TwinShape& shape, TwinContext&) const override {
    KERN_CHECK(shape.spatial(), "limits::AvgPool twin: needs image inputs");
    const Axis ah = detail::make_axis(shape.h, win_[0], o_.stride[0], o_.padding, "limits::AvgPool");
    const Axis aw = detail::make_axis(shape.w, win_[1], o_.stride[1], o_.padding, "limits::AvgPool");
    const int64_t hi_h = o_.padding == Padding::Same ? (ah.out - 1) * ah.stride + ah.window - ah.in - ah.pad : 0;
    const int64_t hi_w = o_.padding == Padding::Same ? (aw.out - 1) * aw.stride + aw.window - aw.in - aw.pad : 0;
    const std::vector<int64_t> pads{aw.pad, std::max<int64_t>(hi_w, 0), ah.pad, std::max<int64_t>(hi_h, 0)};
    const auto win = win_;
    const auto st = o_.stride;
    shape.h = ah.out;
    shape.w = aw.out;
    // zero padding counted in the mean (count_include_pad), as the kernel map
    return std::make_shared<nn::Functional>(
        [pads, win, st](const Tensor& x) {
          return avg_pool2d(pad(x, pads), Pool2dParams{.kernel = win, .stride = st});
        },
        "AvgPool");
  }

 private:
  std::array<int64_t, 2> win_;
  PoolOptions o_;
};

// ---- GlobalAvgPool: nngp' = mean_{p, q} nngp[p, q]
class GlobalAvgPoolImpl : public LayerImpl {
 public:
  std::string name() const override { return "GlobalAvgPool"; }
  bool needs_full(bool) const override { return true; }
  void apply(Kernel& k) const override {
    KERN_CHECK(k.spatial, "limits::GlobalAvgPool: needs images [N, C, H, W], got vectors");
    KERN_CHECK(k.full, "limits::GlobalAvgPool: needs full pixel-pixel covariances, but the "
               "kernel keeps only their diagonal (KernelOptions::force_diagonal)");
    const int64_t S = k.entries();
    detail::map_blocks(k, 1, [&](const double* in, double* o) {
      double acc = 0.0;
      for (int64_t e = 0; e < S; ++e) acc += in[e];
      o[0] = acc / static_cast<double>(S);
    });
    k.h = k.w = 1;
    k.spatial = k.full = false;
  }
  std::shared_ptr<nn::Module> twin(TwinShape& shape, TwinContext&) const override {
    shape.h = shape.w = 0;
    return std::make_shared<nn::Functional>([](const Tensor& x) { return mean(x, {2, 3}); },
                                            "GlobalAvgPool");
  }
};

// ---- Flatten: nngp' = mean_p nngp[p, p] (only the diagonal is needed)
class FlattenImpl : public LayerImpl {
 public:
  std::string name() const override { return "Flatten"; }
  bool needs_full(bool) const override { return false; }
  void apply(Kernel& k) const override {
    if (!k.spatial) return;
    const int64_t P = k.pixels();
    const bool full = k.full;
    detail::map_blocks(k, 1, [&](const double* in, double* o) {
      double acc = 0.0;
      for (int64_t p = 0; p < P; ++p) acc += in[full ? p * P + p : p];
      o[0] = acc / static_cast<double>(P);
    });
    k.channels *= P;
    k.h = k.w = 1;
    k.spatial = k.full = false;
  }
  std::shared_ptr<nn::Module> twin(TwinShape& shape, TwinContext&) const override {
    if (shape.spatial()) shape.channels *= shape.h * shape.w;
    shape.h = shape.w = 0;
    return std::make_shared<nn::Flatten>();
  }
};

class IdentityImpl : public LayerImpl {
 public:
  std::string name() const override { return "Identity"; }
  void apply(Kernel&) const override {}
  std::shared_ptr<nn::Module> twin(TwinShape&, TwinContext&) const override {
    return std::make_shared<nn::Identity>();
  }
};

// ---- LayerNorm over channels (no affine): K[p, q] / sqrt(K11[p] K22[q]), ntk likewise
class LayerNormImpl : public LayerImpl {
 public:
  std::string name() const override { return "LayerNorm"; }
  void apply(Kernel& k) const override {
    detail::map_entries(k, [](double k12, double v1, double v2, double* kdot) {
      const double s = 1.0 / std::sqrt(v1 * v2);
      *kdot = s;
      return k12 * s;
    });
  }
  std::shared_ptr<nn::Module> twin(TwinShape&, TwinContext&) const override {
    // normalize over dim 1 (channels) of [N, C] or [N, C, H, W]; biased variance, no eps
    return std::make_shared<nn::Functional>(
        [](const Tensor& x) {
          Tensor c = x - mean(x, {1}, true);
          return c / sqrt(mean(c * c, {1}, true));
        },
        "LayerNorm");
  }
};

}  // namespace

Layer Dense(const DenseOptions& options) { return Layer(std::make_shared<DenseImpl>(options)); }
Layer Conv(int64_t kernel_size, const ConvOptions& options) {
  return Conv({kernel_size, kernel_size}, options);
}
Layer Conv(std::array<int64_t, 2> kernel_size, const ConvOptions& options) {
  return Layer(std::make_shared<ConvImpl>(kernel_size, options));
}
Layer AvgPool(std::array<int64_t, 2> window, const PoolOptions& options) {
  return Layer(std::make_shared<AvgPoolImpl>(window, options));
}
Layer GlobalAvgPool() { return Layer(std::make_shared<GlobalAvgPoolImpl>()); }
Layer Flatten() { return Layer(std::make_shared<FlattenImpl>()); }
Layer Identity() { return Layer(std::make_shared<IdentityImpl>()); }
Layer LayerNorm() { return Layer(std::make_shared<LayerNormImpl>()); }

}  // namespace kern::limits
