// Per-sample gradient rules of the layer scales of ConvNeXtBlock and MetaNeXtBlock
// (InceptionNeXt): the block's only own parameter is gamma [C] in
//     y = x + drop_path(gamma * h),   h = branch(x): [N, C, H, W]
// so with g = dL/dy and drop_path inactive (eval, or rate 0)
//     dL_n / dgamma[c] = m * sum_{i, j} g[n, c, i, j] h[n, c, i, j]      (m: gamma's multiplier)
// h is recomputed from the input by a no-grad forward of the branch that fires no hook
// (block.branch(x, false)): it is the same computation forward did, so h is exact. Recovering
// it as (y - x) / gamma is not: y = fl(x + gamma h) keeps only the digits of gamma h that
// survive the addition, and with timm's ls_init_value = 1e-6 and |x| ~ 1 that loses about six
// of them (relative error ~ 1e-16 / 1e-6 in h).
#include "rule_util.hpp"

#include <kern/autograd.hpp>
#include <kern/models/convnext.hpp>
#include <kern/models/inception_next.hpp>
#include <kern/ops.hpp>

namespace kern::models {
namespace {

using namespace grad_sample_detail;

// gamma's per-sample gradient from the output gradient and the recomputed branch.
std::vector<nn::GradSample> layer_scale_grads(const nn::Param& gamma, const Tensor& g, const Tensor& h) {
  return {{"gamma", times_multiplier(sum(g * h, {2, 3}), gamma.multiplier())}};  // [N, C]
}

void check_block_call(const char* who, int64_t C, const Tensor& x, const Tensor& y, const Tensor& g) {
  check_call(who, x, y, g);
  KERN_CHECK(x.dim() == 4 && x.size(1) == C && y.shape() == x.shape(), who, " grad-sample rule: expected input and output [N, ",
             C, ", H, W], got input ", x.shape(), " and output ", y.shape());
}

std::vector<nn::GradSample> convnext_block_rule(nn::Module& module, const Tensor& x, const Tensor& y, const Tensor& g) {
  auto& block = static_cast<ConvNeXtBlock&>(module);
  if (!block.gamma.defined() || !block.gamma.tensor().requires_grad()) return {};
  check_block_call("ConvNeXtBlock", block.gamma.shape()[0], x, y, g);
  check_inactive("ConvNeXtBlock", block.drop_path.get(), "drop_path");
  NoGradGuard no_grad;
  return layer_scale_grads(block.gamma, g, block.branch(x, /*fire_hooks=*/false));
}

std::vector<nn::GradSample> metanext_block_rule(nn::Module& module, const Tensor& x, const Tensor& y, const Tensor& g) {
  auto& block = static_cast<inception_next::MetaNeXtBlock&>(module);
  if (!block.gamma.defined() || !block.gamma.tensor().requires_grad()) return {};
  check_block_call("MetaNeXtBlock", block.gamma.shape()[0], x, y, g);
  check_inactive("MetaNeXtBlock", block.drop_path.get(), "drop_path");
  // The branch's BatchNorm2d must use running statistics: batch statistics couple the samples
  // (no per-sample gradient exists), and recomputing in training mode would update them.
  KERN_CHECK(!block.norm->is_training() && block.norm->options().track_running_stats(),
             "MetaNeXtBlock grad-sample rule: norm (BatchNorm2d) uses batch statistics (",
             block.norm->is_training() ? "training mode" : "track_running_stats = false",
             "), which couple the samples of the batch; call eval()");
  NoGradGuard no_grad;
  return layer_scale_grads(block.gamma, g, block.branch(x, /*fire_hooks=*/false));
}

const nn::GradSampleRegistrar<ConvNeXtBlock> convnext_block_registrar{convnext_block_rule};
const nn::GradSampleRegistrar<inception_next::MetaNeXtBlock> metanext_block_registrar{metanext_block_rule};

}  // namespace
}  // namespace kern::models
