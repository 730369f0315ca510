// Per-sample gradient rules for kern_core's layers (see kern/nn/grad_sample.hpp): Linear,
// Conv2d, LayerNorm, LayerNorm2d, BatchNorm2d (eval). Each rule is one or two batched ops
// over the whole batch; no loop over samples.
//
// Legend: N batch, S positions (everything between the batch and the feature dims), m_w /
// m_b the forward multipliers of weight / bias (kern/param): the layers compute with
// m_w * W and m_b * b, so d L_n / d W carries a factor m_w.
//
//   Linear      x [N, S.., in], g [N, S.., out]:  gW[n] = m_w sum_s g[n,s]^T x[n,s]   (bmm)
//                                                 gb[n] = m_b sum_s g[n,s]
//   Conv2d      gW[n] = m_w conv2d_backward_weight(g[n], x[n]): the whole batch as ONE
//               convolution with N * groups groups (x viewed [1, N*C_in, H, W], g viewed
//               [1, N*C_out, Ho, Wo]): a depthwise conv stays depthwise (direct kernel)
//               gb[n] = m_b sum_{h,w} g[n]
//   LayerNorm   xh = layer_norm(x) without affine:  gW[n] = m_w sum_s g[n,s] * xh[n,s]
//   LayerNorm2d the same over the channels of NCHW (positions H, W)
//   BatchNorm2d eval: xh = (x - running_mean) / sqrt(running_var + eps), as LayerNorm2d.
//               On batch statistics the samples interact: the rule throws.
#include <kern/nn/conv.hpp>
#include <kern/nn/grad_sample.hpp>
#include <kern/nn/linear.hpp>
#include <kern/nn/norm.hpp>
#include <kern/ops.hpp>

#include <typeindex>
#include <utility>
#include <vector>

namespace kern::nn::detail {
namespace {

// `t * m` without an op when m == 1.
Tensor scaled(const Tensor& t, double m) { return m == 1.0 ? t : t * m; }

bool wants(const Param& p) { return p.defined() && p.tensor().requires_grad(); }

void check_batch(const char* who, const Tensor& input, const Tensor& output, const Tensor& grad_output) {
  KERN_CHECK(input.defined() && output.defined() && grad_output.defined(), who,
             " grad-sample rule: input, output and grad_output must be defined");
  KERN_CHECK(input.dim() >= 1 && output.dim() >= 1 && input.size(0) == output.size(0), who,
             " grad-sample rule: input ", input.shape(), " and output ", output.shape(),
             " must share the batch dim 0");
  KERN_CHECK(grad_output.shape() == output.shape(), who, " grad-sample rule: grad_output ",
             grad_output.shape(), " must have the output's shape ", output.shape());
}

// ---- Linear: x [N, S.., in] -> [N, S.., out]

std::vector<GradSample> linear_rule(Module& module, const Tensor& x, const Tensor& y, const Tensor& g) {
  auto& m = static_cast<Linear&>(module);
  check_batch("Linear", x, y, g);
  NoGradGuard ng;
  const int64_t N = x.size(0), in = m.options().in_features(), out = m.options().out_features();
  KERN_CHECK(x.size(-1) == in && g.size(-1) == out, "Linear grad-sample rule: input ", x.shape(), " / grad_output ",
             g.shape(), " do not end in ", in, " / ", out, " features");
  const int64_t S = N == 0 ? 0 : x.numel() / (N * in);
  Tensor g3 = g.reshape({N, S, out});
  std::vector<GradSample> r;
  if (wants(m.weight))  // [N, out, S] @ [N, S, in] -> [N, out, in]
    r.push_back({"weight", scaled(bmm(g3.transpose(1, 2), x.reshape({N, S, in})), m.weight.multiplier())});
  if (wants(m.bias)) r.push_back({"bias", scaled(sum(g3, {1}), m.bias.multiplier())});
  return r;
}

// ---- Conv2d: x [N, C_in, H, W] -> [N, C_out, Ho, Wo]

std::vector<GradSample> conv2d_rule(Module& module, const Tensor& x_in, const Tensor& y, const Tensor& g) {
  auto& m = static_cast<Conv2d&>(module);
  check_batch("Conv2d", x_in, y, g);
  NoGradGuard ng;
  const auto& o = m.options();
  KERN_CHECK(x_in.dim() == 4 && g.dim() == 4 && x_in.size(1) == o.in_channels() && g.size(1) == o.out_channels(),
             "Conv2d grad-sample rule: input ", x_in.shape(), " / grad_output ", g.shape(), " are not [N, ",
             o.in_channels(), ", H, W] / [N, ", o.out_channels(), ", Ho, Wo]");
  std::vector<GradSample> r;
  const int64_t N = x_in.size(0);
  if (wants(m.weight)) {
    Tensor x = x_in;
    if (o.padding_same()) {  // the forward's extra row/column after (odd total padding)
      const auto k = o.kernel_size(), d = o.dilation();
      const int64_t extra_h = (d[0] * (k[0] - 1)) % 2, extra_w = (d[1] * (k[1] - 1)) % 2;
      if (extra_h != 0 || extra_w != 0) x = pad(x, {0, extra_w, 0, extra_h});
    }
    Conv2dParams p = m.params();
    p.groups *= N;  // sample n's channels form groups of their own
    const Shape ws = m.weight.shape();
    Tensor gw = conv2d_backward_weight(g.contiguous().reshape({1, N * g.size(1), g.size(2), g.size(3)}),
                                       x.contiguous().reshape({1, N * x.size(1), x.size(2), x.size(3)}),
                                       {N * ws[0], ws[1], ws[2], ws[3]}, p);
    r.push_back({"weight", scaled(gw.view({N, ws[0], ws[1], ws[2], ws[3]}), m.weight.multiplier())});
  }
  if (wants(m.bias)) r.push_back({"bias", scaled(sum(g, {2, 3}), m.bias.multiplier())});
  return r;
}

// ---- diagonal (affine) norms: y = m_w w * xh + m_b b over a channel dim

// xh [N, R, C] and g [N, R, C] (R positions) -> the weight / bias samples [N, shape...].
std::vector<GradSample> affine_samples(const Param& w, const Param& b, const Tensor& xh3, const Tensor& g3,
                                       const Shape& shape) {
  const int64_t N = g3.size(0);
  Shape out{N};
  out.insert(out.end(), shape.begin(), shape.end());
  std::vector<GradSample> r;
  if (wants(w)) r.push_back({"weight", scaled(sum(g3 * xh3, {1}), w.multiplier()).reshape(out)});
  if (wants(b)) r.push_back({"bias", scaled(sum(g3, {1}), b.multiplier()).reshape(out)});
  return r;
}

std::vector<GradSample> layer_norm_rule(Module& module, const Tensor& x, const Tensor& y, const Tensor& g) {
  auto& m = static_cast<LayerNorm&>(module);
  check_batch("LayerNorm", x, y, g);
  if (!wants(m.weight) && !wants(m.bias)) return {};
  NoGradGuard ng;
  const Shape& ns = m.options().normalized_shape();
  const int64_t N = x.size(0), C = ns.numel();
  KERN_CHECK(x.dim() >= ns.ndim() + 1, "LayerNorm grad-sample rule: input ", x.shape(),
             " needs a batch dim before the normalized shape ", ns);
  const int64_t R = N == 0 ? 0 : x.numel() / (N * C);
  Tensor xh = layer_norm(x, ns, {}, {}, m.options().eps());
  return affine_samples(m.weight, m.bias, xh.reshape({N, R, C}), g.reshape({N, R, C}), ns);
}

// [N, C, H, W] -> [N, H*W, C]
Tensor channels_last(const Tensor& t) {
  return t.permute({0, 2, 3, 1}).reshape({t.size(0), t.size(2) * t.size(3), t.size(1)});
}

std::vector<GradSample> layer_norm2d_rule(Module& module, const Tensor& x, const Tensor& y, const Tensor& g) {
  auto& m = static_cast<LayerNorm2d&>(module);
  check_batch("LayerNorm2d", x, y, g);
  if (!wants(m.weight) && !wants(m.bias)) return {};
  NoGradGuard ng;
  const int64_t C = m.options().num_channels();
  KERN_CHECK(x.dim() == 4 && x.size(1) == C, "LayerNorm2d grad-sample rule: input ", x.shape(), " is not [N, ", C,
             ", H, W]");
  Tensor xh = layer_norm(x.permute({0, 2, 3, 1}), {C}, {}, {}, m.options().eps());  // [N, H, W, C]
  const int64_t N = x.size(0), R = x.size(2) * x.size(3);
  return affine_samples(m.weight, m.bias, xh.reshape({N, R, C}), channels_last(g), {C});
}

std::vector<GradSample> batch_norm2d_rule(Module& module, const Tensor& x, const Tensor& y, const Tensor& g) {
  auto& m = static_cast<BatchNorm2d&>(module);
  check_batch("BatchNorm2d", x, y, g);
  KERN_CHECK(!m.is_training() && m.options().track_running_stats(),
             "BatchNorm2d grad-sample rule: the module normalizes with batch statistics (",
             m.is_training() ? "training mode" : "track_running_stats=false",
             "), so every sample's output depends on the others and per-sample gradients are not "
             "defined. Call model.eval() first (running statistics).");
  if (!wants(m.weight) && !wants(m.bias)) return {};
  NoGradGuard ng;
  const int64_t C = m.options().num_features();
  KERN_CHECK(x.dim() == 4 && x.size(1) == C, "BatchNorm2d grad-sample rule: input ", x.shape(), " is not [N, ", C,
             ", H, W]");
  Tensor xh = batch_norm(x, m.running_mean(), m.running_var(), {}, {}, /*training=*/false, 0.0, m.options().eps());
  return affine_samples(m.weight, m.bias, channels_last(xh), channels_last(g), {C});
}

}  // namespace

// Read by the registry when it is first used (kern/nn/grad_sample.cpp), so the rules exist
// in every program that links kern_core, whatever the link order or static-init order.
std::vector<std::pair<std::type_index, GradSampleRule>> core_grad_sample_rules() {
  return {
      {std::type_index(typeid(Linear)), linear_rule},
      {std::type_index(typeid(Conv2d)), conv2d_rule},
      {std::type_index(typeid(LayerNorm)), layer_norm_rule},
      {std::type_index(typeid(LayerNorm2d)), layer_norm2d_rule},
      {std::type_index(typeid(BatchNorm2d)), batch_norm2d_rule},
  };
}

}  // namespace kern::nn::detail
