// SIREN kernels, the affine lifting / group convolutions and the pooling helpers
// (affine_conv.hpp). The filters are built in forward from the Siren with differentiable ops,
// so gradients of any order reach the Siren's parameters; the sample sets are constants.
#include <kern/models/affine_conv.hpp>

#include <kern/error.hpp>
#include <kern/nn/init.hpp>
#include <kern/ops.hpp>

#include <fmt/format.h>

#include <cmath>

namespace kern::models::lie {

// ---- Siren

Siren::Siren(const SirenOptions& o) : options_(o) {
  KERN_CHECK(o.in_features >= 1 && o.out_features >= 1 && o.hidden >= 1 && o.hidden_layers >= 1,
             "Siren: in_features, out_features, hidden and hidden_layers must be >= 1, got ",
             o.in_features, ", ", o.out_features, ", ", o.hidden, ", ", o.hidden_layers);
  KERN_CHECK(std::isfinite(o.omega0) && o.omega0 > 0, "Siren: omega0 must be > 0, got ", o.omega0);
  layers = register_module("layers", std::make_shared<nn::ModuleList>());
  NoGradGuard ng;
  for (int64_t l = 0; l <= o.hidden_layers; ++l) {
    const int64_t in = l == 0 ? o.in_features : o.hidden;
    const int64_t out = l == o.hidden_layers ? o.out_features : o.hidden;
    auto lin = layers->push_back(std::make_shared<nn::Linear>(in, out));
    if (l == o.hidden_layers) continue;  // readout: Linear's default init
    const double bound = l == 0 ? 1.0 / static_cast<double>(in)
                                : std::sqrt(6.0 / static_cast<double>(in)) / o.omega0;
    nn::init::uniform_(lin->weight.tensor(), -bound, bound);
  }
}

Tensor Siren::forward(const Tensor& x) {
  KERN_CHECK(x.dim() >= 1 && x.size(-1) == options_.in_features, "Siren: input must be [..., ",
             options_.in_features, "], got ", x.shape());
  Tensor h = x;
  const int64_t L = options_.hidden_layers;
  int64_t l = 0;
  for (const auto& m : *layers) {
    h = (*m)(h);
    if (l++ < L) h = sin(h * options_.omega0);
  }
  return h;
}

std::string Siren::extra_repr() const {
  return fmt::format("in={}, out={}, hidden={}, hidden_layers={}, omega0={}", options_.in_features,
                     options_.out_features, options_.hidden, options_.hidden_layers, options_.omega0);
}

// ---- helpers

Tensor kernel_grid(int64_t k, DType dtype) {
  KERN_CHECK(k >= 1, "kernel_grid: kernel_size must be >= 1, got ", k);
  const double r = k > 1 ? (static_cast<double>(k) - 1) / 2 : 1.0;
  std::vector<double> u(k * k * 2);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      u[(i * k + j) * 2] = (static_cast<double>(i) - (static_cast<double>(k) - 1) / 2) / r;
      u[(i * k + j) * 2 + 1] = (static_cast<double>(j) - (static_cast<double>(k) - 1) / 2) / r;
    }
  return from_vector(u, {k * k, 2}).to(dtype);
}

int64_t group_embedding_dim(Group group) { return group == Group::GL2 ? 5 : 4; }

Tensor group_embedding(const Tensor& g, Group group) {
  const Tensor v = xi_inv(g, group);
  const int64_t d = algebra_dim(group);
  const Tensor theta = v.select(-1, d - 1);
  return cat({v.narrow(-1, 0, d - 1), cos(theta).unsqueeze(-1), sin(theta).unsqueeze(-1)}, -1);
}

namespace {

void check_samples(const Samples& s, Group group, DType dtype, const char* who, const char* which) {
  KERN_CHECK(s.size() >= 1 && s.g.dim() == 3 && s.g_inv.defined() && s.weight.defined(), who, ": ",
             which, " sample set is empty or incomplete");
  KERN_CHECK(s.group == group, who, ": ", which, " samples are on ", group_name(s.group),
             " but the layer is on ", group_name(group));
  KERN_CHECK(s.g.dtype() == dtype, who, ": ", which, " samples are ", s.g.dtype(), " but the input is ",
             dtype, " (Samples::to)");
}

void check_options(const AffineConvOptions& o, const char* who) {
  KERN_CHECK(o.in_channels() >= 1 && o.out_channels() >= 1, who,
             ": in_channels and out_channels must be >= 1, got ", o.in_channels(), ", ", o.out_channels());
  KERN_CHECK(o.kernel_size() >= 1 && o.kernel_size() % 2 == 1, who,
             ": kernel_size must be odd and >= 1 (padding 'same'), got ", o.kernel_size());
}

// Spatial coordinates h_s^-1 u: [S, k*k, 2].
Tensor transformed_grid(const Samples& s, int64_t k, DType dtype) {
  const int64_t S = s.size();
  const Tensor u = kernel_grid(k, dtype).unsqueeze(0).expand({S, k * k, 2});
  return bmm(u, s.g_inv.transpose(1, 2));  // [S, k*k, 2] x [S, 2, 2]^T
}

// The kernel envelope at coordinates c [..., 2]: (1 - |c|^2 / rho^2)^2 inside the disk, else 0
// -> [..., 1] (a constant: the coordinates carry no gradient). rho <= 0: undefined (none).
Tensor envelope_of(const Tensor& c, double rho) {
  if (rho <= 0) return {};
  NoGradGuard ng;
  const Tensor t2 = (c * c).sum({-1}, true) / (rho * rho);
  return where(t2 < 1.0, square(1.0 - t2), 0.0);
}

Tensor conv_same(const Tensor& x, const Tensor& w, const Tensor& bias, int64_t k) {
  Conv2dParams p;
  p.padding = {(k - 1) / 2, (k - 1) / 2};
  return conv2d(x, w, Tensor(), p);
}

}  // namespace

// ---- lifting

AffineLiftingConv::AffineLiftingConv(const AffineConvOptions& o) : options_(o) {
  check_options(o, "AffineLiftingConv");
  kernel = register_module("kernel", std::make_shared<Siren>(SirenOptions{
      .in_features = 2, .out_features = o.out_channels() * o.in_channels(), .hidden = o.hidden(),
      .hidden_layers = o.hidden_layers(), .omega0 = o.omega0()}));
  if (o.bias()) bias = register_parameter("bias", zeros({o.out_channels()}));
}

Tensor AffineLiftingConv::forward(const Tensor&) {
  KERN_CHECK(false, "AffineLiftingConv: forward needs the output sample set: forward(x, samples)");
  return {};
}

Tensor AffineLiftingConv::filter_bank(const Samples& s) {
  const auto& o = options_;
  const int64_t S = s.size(), k = o.kernel_size(), Co = o.out_channels(), Ci = o.in_channels();
  const DType dt = s.g.dtype();
  const Tensor coords = transformed_grid(s, k, dt);             // [S, k*k, 2]
  Tensor kv = kernel->forward(coords);                          // [S, k*k, Co*Ci]
  if (o.envelope() > 0) kv = kv * envelope_of(coords, o.envelope());
  Tensor w = kv.reshape({S, k, k, Co, Ci}).permute({3, 0, 4, 1, 2});  // [Co, S, Ci, k, k]
  // volume correction 1 / |det h_s| and the init scale 1 / sqrt(Ci k^2)
  const Tensor vol = (1.0 / abs(det2(s.g))).detach() / std::sqrt(static_cast<double>(Ci * k * k));
  w = w * vol.reshape({1, S, 1, 1, 1});
  return w.reshape({Co * S, Ci, k, k});
}

Tensor AffineLiftingConv::forward(const Tensor& x, const Samples& s) {
  const auto& o = options_;
  KERN_CHECK(x.dim() == 4 && x.size(1) == o.in_channels(), "AffineLiftingConv: input must be [N, C_in = ",
             o.in_channels(), ", H, W], got ", x.shape());
  check_samples(s, o.group(), x.dtype(), "AffineLiftingConv", "output");
  const int64_t S = s.size(), k = o.kernel_size(), Co = o.out_channels();
  Tensor y = conv_same(x, filter_bank(s), Tensor(), k);  // [N, Co*S, H, W]
  y = y.reshape({x.size(0), Co, S, y.size(2), y.size(3)});
  if (bias.defined()) y = y + bias().reshape({1, Co, 1, 1, 1});
  return y;
}

std::string AffineLiftingConv::extra_repr() const {
  return fmt::format("{}, {}, kernel_size={}, group={}", options_.in_channels(), options_.out_channels(),
                     options_.kernel_size(), group_name(options_.group()));
}

// ---- group conv

AffineGroupConv::AffineGroupConv(const AffineConvOptions& o) : options_(o) {
  check_options(o, "AffineGroupConv");
  kernel = register_module("kernel", std::make_shared<Siren>(SirenOptions{
      .in_features = 2 + group_embedding_dim(o.group()), .out_features = o.out_channels() * o.in_channels(),
      .hidden = o.hidden(), .hidden_layers = o.hidden_layers(), .omega0 = o.omega0()}));
  if (o.bias()) bias = register_parameter("bias", zeros({o.out_channels()}));
}

Tensor AffineGroupConv::forward(const Tensor&) {
  KERN_CHECK(false, "AffineGroupConv: forward needs the input and output sample sets: "
                    "forward(x, in_samples, out_samples)");
  return {};
}

Tensor AffineGroupConv::filter_bank(const Samples& in, const Samples& out) {
  const auto& o = options_;
  const int64_t So = out.size(), Si = in.size(), k = o.kernel_size(), K2 = k * k;
  const int64_t Co = o.out_channels(), Ci = o.in_channels();
  const DType dt = out.g.dtype();
  const int64_t E = group_embedding_dim(o.group());
  const Tensor spatial = transformed_grid(out, k, dt);  // [So, k*k, 2]
  // h_s^-1 g_j: [So, Si, 2, 2] -> embedding [So, Si, E] (constants: the sets carry no gradient)
  Tensor emb;
  {
    NoGradGuard ng;
    const Tensor rel = matmul2(out.g_inv.unsqueeze(1), in.g.unsqueeze(0));
    emb = group_embedding(rel, o.group());
  }
  const Tensor coords = cat({spatial.unsqueeze(1).expand({So, Si, K2, 2}),
                             emb.unsqueeze(2).expand({So, Si, K2, E})},
                            -1);                                      // [So, Si, k*k, 2 + E]
  Tensor kv = kernel->forward(coords);                                 // [So, Si, k*k, Co*Ci]
  if (o.envelope() > 0) kv = kv * envelope_of(spatial, o.envelope()).unsqueeze(1);
  Tensor w = kv.reshape({So, Si, k, k, Co, Ci}).permute({4, 0, 5, 1, 2, 3});  // [Co, So, Ci, Si, k, k]
  // Monte-Carlo weight w_j / S_in, volume correction 1 / |det h_s|, init scale.
  const Tensor f = (in.weight.reshape({1, Si}) / abs(det2(out.g)).reshape({So, 1})).detach() /
                   (static_cast<double>(Si) * std::sqrt(static_cast<double>(Ci * k * k)));
  w = w * f.reshape({1, So, 1, Si, 1, 1});
  return w.reshape({Co * So, Ci * Si, k, k});
}

Tensor AffineGroupConv::forward(const Tensor& x, const Samples& in, const Samples& out) {
  const auto& o = options_;
  KERN_CHECK(x.dim() == 5 && x.size(1) == o.in_channels(), "AffineGroupConv: input must be [N, C_in = ",
             o.in_channels(), ", S_in, H, W], got ", x.shape());
  check_samples(in, o.group(), x.dtype(), "AffineGroupConv", "input");
  check_samples(out, o.group(), x.dtype(), "AffineGroupConv", "output");
  KERN_CHECK(x.size(2) == in.size(), "AffineGroupConv: input ", x.shape(), " has ", x.size(2),
             " samples on axis 2 but the input sample set has ", in.size(),
             " (pass the set the input is defined on)");
  const int64_t N = x.size(0), k = o.kernel_size(), Co = o.out_channels(), So = out.size();
  Tensor y = conv_same(x.reshape({N, x.size(1) * x.size(2), x.size(3), x.size(4)}), filter_bank(in, out),
                       Tensor(), k);
  y = y.reshape({N, Co, So, y.size(2), y.size(3)});
  if (bias.defined()) y = y + bias().reshape({1, Co, 1, 1, 1});
  return y;
}

std::string AffineGroupConv::extra_repr() const {
  return fmt::format("{}, {}, kernel_size={}, group={}", options_.in_channels(), options_.out_channels(),
                     options_.kernel_size(), group_name(options_.group()));
}

// ---- pooling

Tensor spatial_max_pool(const Tensor& x, int64_t kernel) {
  KERN_CHECK(x.dim() == 5, "spatial_max_pool: input must be [N, C, S, H, W], got ", x.shape());
  KERN_CHECK(kernel >= 1, "spatial_max_pool: kernel must be >= 1, got ", kernel);
  const Shape s = x.shape();
  Pool2dParams p;
  p.kernel = {kernel, kernel};
  const Tensor z = max_pool2d(x.reshape({s[0], s[1] * s[2], s[3], s[4]}), p);
  return z.reshape({s[0], s[1], s[2], z.size(2), z.size(3)});
}

Tensor sample_pool(const Tensor& x, const std::string& mode) {
  KERN_CHECK(mode == "max" || mode == "mean", "sample_pool: unknown mode '", mode, "' (expected 'max' or 'mean')");
  KERN_CHECK(x.dim() == 5, "sample_pool: input must be [N, C, S, H, W], got ", x.shape());
  return mode == "max" ? max(x, 2).values : mean(x, {2});
}

Tensor global_max(const Tensor& x) {
  KERN_CHECK(x.dim() == 5, "global_max: input must be [N, C, S, H, W], got ", x.shape());
  return max(x.reshape({x.size(0), x.size(1), -1}), 2).values;
}

}  // namespace kern::models::lie
