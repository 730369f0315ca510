// Sampled Lie-group convolution (LieConv, Finzi et al. 2020) for T(2) and SE(2) on planar point
// clouds: lifting with the Lie-algebra pairs log(u_i^-1 u_j), the LieConv layer (MLP kernel on
// the pairs, PointConv trick, ball neighbourhoods, mean normalization) and LieConvNet.
// Conventions and shapes: see equivariant.hpp.
#include <kern/models/equivariant.hpp>

#include <kern/error.hpp>
#include <kern/ops.hpp>

#include <fmt/format.h>

#include <cmath>
#include <numbers>

namespace kern::models {

int64_t lie_algebra_dim(const std::string& group, const std::string& field) {
  KERN_CHECK(group == "T2" || group == "SE2", field, ": unknown Lie group '", group,
             "' (expected 'T2' or 'SE2')");
  return group == "T2" ? 2 : 3;
}

LieCloud lie_lift(const std::string& group, const Tensor& positions, const Tensor& features,
                  const Tensor& mask, int64_t lift_samples, double theta0) {
  lie_algebra_dim(group, "lie_lift: group");
  KERN_CHECK(positions.dim() == 3 && positions.size(2) == 2,
             "lie_lift: positions must be [B, N, 2], got ", positions.shape());
  const int64_t B = positions.size(0), N = positions.size(1);
  KERN_CHECK(features.dim() == 3 && features.size(0) == B && features.size(1) == N,
             "lie_lift: features must be [B = ", B, ", N = ", N, ", C], got ", features.shape(),
             " (positions ", positions.shape(), ")");
  KERN_CHECK(features.dtype() == positions.dtype(), "lie_lift: positions (", positions.dtype(),
             ") and features (", features.dtype(), ") must have the same dtype");
  KERN_CHECK(!mask.defined() || mask.shape() == (Shape{B, N}), "lie_lift: mask must be [B = ", B,
             ", N = ", N, "], got ", mask.shape());
  KERN_CHECK(group == "T2" || lift_samples >= 1, "lie_lift: lift_samples must be >= 1, got ",
             lift_samples);
  const DType dt = positions.dtype();
  const Tensor m = mask.defined() ? mask.to(dt).detach() : ones({B, N}, dt);
  // d[b, i, j] = x_j - x_i: [B, N, N, 2]
  const Tensor d = positions.unsqueeze(1) - positions.unsqueeze(2);
  if (group == "T2") return {d, features, m};

  const int64_t K = lift_samples, M = N * K;
  // Per pair of samples (k, l): theta_kl = theta_l - theta_k wrapped to (-pi, pi], and the
  // 2x2 map P_kl = V(theta_kl)^-1 R(-theta_k) taking d to the translation part of the log.
  const double pi = std::numbers::pi;
  std::vector<double> theta(K * K), P(K * K * 4);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t l = 0; l < K; ++l) {
      double t = 2 * pi * static_cast<double>(l - k) / static_cast<double>(K);
      t = std::remainder(t, 2 * pi);
      if (t <= -pi) t += 2 * pi;
      const double tk = theta0 + 2 * pi * static_cast<double>(k) / static_cast<double>(K);
      // V^-1 = [[A, B], [-B, A]] / (A^2 + B^2), A = sin t / t, B = (1 - cos t) / t.
      double a = 1, b = 0;
      if (t != 0) a = std::sin(t) / t, b = (1 - std::cos(t)) / t;
      const double s = a * a + b * b;
      const double vi[4] = {a / s, b / s, -b / s, a / s};
      const double r[4] = {std::cos(tk), std::sin(tk), -std::sin(tk), std::cos(tk)};  // R(-tk)
      double* p = &P[(k * K + l) * 4];
      p[0] = vi[0] * r[0] + vi[1] * r[2];
      p[1] = vi[0] * r[1] + vi[1] * r[3];
      p[2] = vi[2] * r[0] + vi[3] * r[2];
      p[3] = vi[2] * r[1] + vi[3] * r[3];
      theta[k * K + l] = t;
    }
  const Tensor Pt = from_vector(P, {1, 1, K, 1, K, 2, 2}).to(dt);
  const Tensor Tt = from_vector(theta, {1, 1, K, 1, K, 1}).to(dt);
  // a_t[b, i, k, j, l, :] = P_kl d[b, i, j]: [B, N, K, N, K, 2]
  const Tensor at = (Pt * d.reshape({B, N, 1, N, 1, 1, 2})).sum({-1});
  const Tensor ath = Tt.expand({B, N, K, N, K, 1});
  const Tensor pairs = cat({ath, at}, -1).reshape({B, M, M, 3});
  const Tensor values = features.unsqueeze(2).expand({B, N, K, features.size(2)}).reshape({B, M, -1});
  const Tensor lifted_mask = m.unsqueeze(2).expand({B, N, K}).reshape({B, M});
  return {pairs, values, lifted_mask};
}

// ---- LieConv

LieConv::LieConv(const LieConvOptions& options) : options_(options) {
  const auto& o = options_;
  const int64_t D = lie_algebra_dim(o.group(), "LieConvOptions.group");
  KERN_CHECK(o.in_channels() >= 1 && o.out_channels() >= 1 && o.kernel_hidden() >= 1,
             "LieConv: in_channels, out_channels and kernel_hidden must be >= 1, got ",
             o.in_channels(), ", ", o.out_channels(), ", ", o.kernel_hidden());
  KERN_CHECK(o.radius() > 0 && o.alpha() >= 0, "LieConv: radius must be > 0 and alpha >= 0, got ",
             o.radius(), " and ", o.alpha());
  const int64_t m = o.kernel_hidden();
  weightnet = register_module(
      "weightnet", std::make_shared<nn::Sequential>(nn::Linear(D, m), nn::SiLU(), nn::Linear(m, m),
                                                    nn::SiLU(), nn::Linear(m, m), nn::SiLU()));
  linear = register_module("linear", std::make_shared<nn::Linear>(m * o.in_channels(), o.out_channels()));
}

Tensor LieConv::neighborhood(const LieCloud& in) const {
  NoGradGuard ng;
  Tensor nb = in.mask.unsqueeze(1).expand({in.mask.size(0), in.mask.size(1), in.mask.size(1)});
  if (options_.radius() >= 1e300) return nb;
  Tensor d2;
  if (in.pairs.size(-1) == 3) {
    const Tensor th = in.pairs.narrow(-1, 0, 1).squeeze(-1), t = in.pairs.narrow(-1, 1, 2);
    d2 = (t * t).sum({-1}) + th * th * options_.alpha();
  } else {
    d2 = (in.pairs * in.pairs).sum({-1});
  }
  return nb * (d2 < options_.radius() * options_.radius());
}

LieCloud LieConv::forward(const LieCloud& in) {
  const auto& o = options_;
  const int64_t D = lie_algebra_dim(o.group());
  KERN_CHECK(in.pairs.dim() == 4 && in.pairs.size(3) == D, "LieConv(", o.group(),
             "): pairs must be [B, M, M, ", D, "], got ", in.pairs.shape());
  const int64_t B = in.pairs.size(0), M = in.pairs.size(1);
  KERN_CHECK(in.pairs.size(2) == M, "LieConv(", o.group(), "): pairs must be [B, M, M, ", D,
             "], got ", in.pairs.shape());
  KERN_CHECK(in.values.dim() == 3 && in.values.size(0) == B && in.values.size(1) == M,
             "LieConv(", o.group(), "): values must be [B = ", B, ", M = ", M, ", C_in], got ",
             in.values.shape());
  KERN_CHECK(in.values.size(2) == o.in_channels(), "LieConv(", o.group(), "): values ",
             in.values.shape(), " have ", in.values.size(2), " channels but in_channels = ",
             o.in_channels());
  KERN_CHECK(in.mask.shape() == (Shape{B, M}), "LieConv(", o.group(), "): mask must be [B = ", B,
             ", M = ", M, "], got ", in.mask.shape());
  const Tensor nb = neighborhood(in);                          // [B, M, M]
  const Tensor w = (*weightnet)(in.pairs) * nb.unsqueeze(-1);  // [B, M, M, m]
  // z[b, i, :, c] = sum_j w[b, i, j, :] f[b, j, c]: [B, M, m, C_in]
  const Tensor z = matmul(w.transpose(2, 3), in.values.unsqueeze(1));
  const Tensor count = clamp(nb.sum({2}), 1.0, std::nullopt).unsqueeze(-1);  // [B, M, 1]
  const Tensor y = (*linear)(z.reshape({B, M, -1})) / count;
  return {in.pairs, y * in.mask.unsqueeze(-1), in.mask};
}

std::string LieConv::extra_repr() const {
  const auto& o = options_;
  return fmt::format("{}, {}, group={}, kernel_hidden={}, radius={}, alpha={}", o.in_channels(),
                     o.out_channels(), o.group(), o.kernel_hidden(), o.radius(), o.alpha());
}

namespace equivariant {

LieConvBlock::LieConvBlock(const LieConvOptions& options) {
  conv = register_module("conv", std::make_shared<LieConv>(options));
  norm = register_module("norm", std::make_shared<nn::LayerNorm>(options.out_channels()));
  act = register_module("act", std::make_shared<nn::SiLU>());
}

LieCloud LieConvBlock::forward(const LieCloud& in) {
  LieCloud out = conv->forward(in);
  Tensor y = (*act)((*norm)(out.values));
  if (in.values.size(2) == y.size(2)) y = y + in.values;
  out.values = y * in.mask.unsqueeze(-1);
  return out;
}

}  // namespace equivariant

LieConvNet::LieConvNet(const LieConvNetOptions& options) : options_(options) {
  const auto& o = options_;
  lie_algebra_dim(o.group, "LieConvNetOptions.group");
  KERN_CHECK(o.in_chans >= 1, "LieConvNetOptions.in_chans must be >= 1, got ", o.in_chans);
  KERN_CHECK(o.channels >= 1, "LieConvNetOptions.channels must be >= 1, got ", o.channels);
  KERN_CHECK(o.num_layers >= 1, "LieConvNetOptions.num_layers must be >= 1, got ", o.num_layers);
  KERN_CHECK(o.lift_samples >= 1, "LieConvNetOptions.lift_samples must be >= 1, got ", o.lift_samples);
  KERN_CHECK(o.num_classes >= 0, "LieConvNetOptions.num_classes must be >= 0, got ", o.num_classes);
  blocks = register_module("blocks", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < o.num_layers; ++i)
    blocks->push_back(std::make_shared<equivariant::LieConvBlock>(
        LieConvOptions(i == 0 ? o.in_chans : o.channels, o.channels)
            .group(o.group)
            .kernel_hidden(o.kernel_hidden)
            .radius(o.radius)
            .alpha(o.alpha)));
  if (o.num_classes > 0)
    head = register_module("head", std::make_shared<nn::Linear>(o.channels, o.num_classes));
  else
    head = register_module("head", std::make_shared<nn::Identity>());
}

Tensor LieConvNet::forward(const Tensor& positions, const Tensor& features, const Tensor& mask,
                           double theta0) {
  const auto& o = options_;
  KERN_CHECK(features.dim() == 3 && features.size(2) == o.in_chans, "LieConvNet(", o.group,
             "): features must be [B, N, in_chans = ", o.in_chans, "], got ", features.shape());
  LieCloud c = lie_lift(o.group, positions, features, mask, o.lift_samples, theta0);
  for (const auto& b : *blocks) c = std::static_pointer_cast<equivariant::LieConvBlock>(b)->forward(c);
  // Masked mean over the lifted elements: [B, channels].
  const Tensor pooled = c.values.sum({1}) / clamp(c.mask.sum({1}), 1.0, std::nullopt).unsqueeze(-1);
  return (*head)(pooled);
}

}  // namespace kern::models
