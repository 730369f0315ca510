// Per-sample gradient rules of the p4 / p4m layers (kern/models/equivariant.hpp).
//
// LiftingConv2d and GroupConv2d run one conv2d with an expanded filter bank B = bank(m W)
// (m: weight's multiplier) and the per-channel bias repeated over the |G| maps. Per sample:
//   1. dL_n/dB = the conv's weight gradient on sample n alone. All N at once with the grouped
//      convolution trick: x as [1, N C_in, H, W], g as [1, N C_out, Ho, Wo], groups = N, so
//      group n of conv2d_backward_weight is sample n's gradient: [N, C_out |G|, C_in', k, k].
//   2. Back through the bank (linear in W): the adjoint of "rotate/flip by g (and permute the
//      group axis by h -> g^-1 h)" is the inverse transform, so
//        lifting:  dW[o]          = m sum_g T_g^-1 dB[o, g]
//        group:    dW[o, i, j]    = m sum_g T_g^-1 dB[o, g, i, g j]
//      (dB[o, g, i, h] is block (o |G| + g, i |G| + h) of the bank's gradient).
//   3. bias: dL_n/db[o] = m_b sum_{g, i, j} grad_output[n, o, g, i, j].
// GroupBatchNorm in eval mode is a per-channel affine map of the normalized input
// xhat = (x - running_mean) / sqrt(running_var + eps), statistics shared over the |G| maps:
//   dL_n/dweight[c] = m_w sum_{g, i, j} grad_output xhat,   dL_n/dbias[c] = m_b sum grad_output.
// Batch statistics (training mode, or track_running_stats = false) couple the samples: error.
#include "rule_util.hpp"

#include <kern/autograd.hpp>
#include <kern/models/equivariant.hpp>
#include <kern/ops.hpp>

namespace kern::models {
namespace {

using namespace grad_sample_detail;

// Per-sample weight gradients of y = conv2d(x, w) (groups 1, stride 1, symmetric padding):
//   x: [N, C, H, W], g: [N, O, Ho, Wo] -> [N, O, C, k, k]
Tensor per_sample_conv_weight(const Tensor& x, const Tensor& g, int64_t k, int64_t padding) {
  const int64_t N = x.size(0), C = x.size(1), O = g.size(1);
  Conv2dParams p;
  p.padding = {padding, padding};
  p.groups = N;
  Tensor xs = x.reshape({1, N * C, x.size(2), x.size(3)});
  Tensor gs = g.reshape({1, N * O, g.size(2), g.size(3)});
  return conv2d_backward_weight(gs, xs, {N * O, C, k, k}, p).reshape({N, O, C, k, k});
}

void check_group_output(const char* who, const PlaneGroup& group, int64_t C_out, const Tensor& y) {
  KERN_CHECK(y.dim() == 5 && y.size(1) == C_out && y.size(2) == group.order(), who,
             " grad-sample rule: expected output [N, C_out = ", C_out, ", |G| = ", group.order(), ", Ho, Wo], got ",
             y.shape());
}

// Bias of either conv: the sum of the output gradient over the group axis and the positions.
void push_bias(std::vector<nn::GradSample>& out, const nn::Param& bias, const Tensor& g) {
  if (bias.defined() && bias.tensor().requires_grad())
    out.push_back({"bias", times_multiplier(sum(g, {2, 3, 4}), bias.multiplier())});  // [N, C_out]
}

std::vector<nn::GradSample> lifting_rule(nn::Module& module, const Tensor& x, const Tensor& y, const Tensor& g) {
  auto& conv = static_cast<LiftingConv2d&>(module);
  const auto& o = conv.options();
  const PlaneGroup& G = conv.group();
  check_call("LiftingConv2d", x, y, g);
  KERN_CHECK(x.dim() == 4 && x.size(1) == o.in_channels(), "LiftingConv2d grad-sample rule: expected input [N, C_in = ",
             o.in_channels(), ", H, W], got ", x.shape());
  check_group_output("LiftingConv2d", G, o.out_channels(), y);
  NoGradGuard no_grad;
  const int64_t N = x.size(0), n = G.order(), k = o.kernel_size();
  std::vector<nn::GradSample> out;
  if (conv.weight.tensor().requires_grad()) {
    // dB: [N, C_out |G|, C_in, k, k] -> [N, C_out, |G|, C_in, k, k]
    Tensor dB = per_sample_conv_weight(x, g.reshape({N, o.out_channels() * n, y.size(3), y.size(4)}), k, o.padding())
                    .reshape({N, o.out_channels(), n, o.in_channels(), k, k});
    Tensor dW;
    for (int64_t e = 0; e < n; ++e) {
      Tensor t = G.transform_image(dB.select(2, e), G.inv(e));  // T_e^-1 dB[:, :, e]: [N, C_out, C_in, k, k]
      dW = dW.defined() ? dW + t : t;
    }
    out.push_back({"weight", times_multiplier(dW, conv.weight.multiplier())});
  }
  push_bias(out, conv.bias, g);
  return out;
}

std::vector<nn::GradSample> group_conv_rule(nn::Module& module, const Tensor& x, const Tensor& y, const Tensor& g) {
  auto& conv = static_cast<GroupConv2d&>(module);
  const auto& o = conv.options();
  const PlaneGroup& G = conv.group();
  const int64_t n = G.order(), k = o.kernel_size();
  check_call("GroupConv2d", x, y, g);
  KERN_CHECK(x.dim() == 5 && x.size(1) == o.in_channels() && x.size(2) == n,
             "GroupConv2d grad-sample rule: expected input [N, C_in = ", o.in_channels(), ", |G| = ", n, ", H, W], got ",
             x.shape());
  check_group_output("GroupConv2d", G, o.out_channels(), y);
  NoGradGuard no_grad;
  const int64_t N = x.size(0), Ci = o.in_channels(), Co = o.out_channels();
  std::vector<nn::GradSample> out;
  if (conv.weight.tensor().requires_grad()) {
    // dB: [N, C_out |G|, C_in |G|, k, k] -> [N, C_out, |G| (g), C_in, |G| (h), k, k]
    Tensor dB = per_sample_conv_weight(x.reshape({N, Ci * n, x.size(3), x.size(4)}),
                                       g.reshape({N, Co * n, y.size(3), y.size(4)}), k, o.padding())
                    .reshape({N, Co, n, Ci, n, k, k});
    Tensor dW;
    for (int64_t e = 0; e < n; ++e) {
      // Block e holds T_e W[:, :, e^-1 h] at group index h: undo T_e, then read index h = e j
      // for W's index j (left_inverse_index(e^-1) = [e j for j]).
      Tensor t = G.transform_image(dB.select(2, e), G.inv(e));  // [N, C_out, C_in, |G|, k, k]
      t = index_select(t, 3, G.left_inverse_index(G.inv(e)));
      dW = dW.defined() ? dW + t : t;
    }
    out.push_back({"weight", times_multiplier(dW, conv.weight.multiplier())});
  }
  push_bias(out, conv.bias, g);
  return out;
}

std::vector<nn::GradSample> group_batch_norm_rule(nn::Module& module, const Tensor& x, const Tensor& y,
                                                  const Tensor& g) {
  auto& bn = static_cast<GroupBatchNorm&>(module);
  const auto& o = bn.options();
  const int64_t C = o.num_features();
  check_call("GroupBatchNorm", x, y, g);
  KERN_CHECK(x.dim() == 5 && x.size(1) == C && y.shape() == x.shape(),
             "GroupBatchNorm grad-sample rule: expected input and output [N, C = ", C, ", |G|, H, W], got input ",
             x.shape(), " and output ", y.shape());
  KERN_CHECK(!bn.is_training() && o.track_running_stats(), "GroupBatchNorm grad-sample rule: the layer normalizes with ",
             "batch statistics (", bn.is_training() ? "training mode" : "track_running_stats = false",
             "), which couple the samples of the batch: no per-sample gradient exists; call eval()");
  std::vector<nn::GradSample> out;
  if (!o.affine()) return out;
  NoGradGuard no_grad;
  const Shape per_channel{1, C, 1, 1, 1};
  if (bn.weight.tensor().requires_grad()) {
    Tensor xhat = (x - bn.running_mean().to(x.dtype()).reshape(per_channel)) *
                  rsqrt(bn.running_var().to(x.dtype()) + o.eps()).reshape(per_channel);  // [N, C, |G|, H, W]
    out.push_back({"weight", times_multiplier(sum(g * xhat, {2, 3, 4}), bn.weight.multiplier())});
  }
  if (bn.bias.tensor().requires_grad())
    out.push_back({"bias", times_multiplier(sum(g, {2, 3, 4}), bn.bias.multiplier())});
  return out;
}

const nn::GradSampleRegistrar<LiftingConv2d> lifting_registrar{lifting_rule};
const nn::GradSampleRegistrar<GroupConv2d> group_conv_registrar{group_conv_rule};
const nn::GradSampleRegistrar<GroupBatchNorm> group_batch_norm_registrar{group_batch_norm_rule};

}  // namespace
}  // namespace kern::models
