// LayerNorm, LayerNorm2d, BatchNorm2d.
#include <kern/nn/init.hpp>
#include <kern/nn/norm.hpp>
#include <kern/ops/norm.hpp>
#include <kern/ops/shape_ops.hpp>

namespace kern::nn {

namespace {
const char* py_bool(bool b) { return b ? "True" : "False"; }
}  // namespace

// ---- LayerNorm

LayerNorm::LayerNorm(const LayerNormOptions& o) : options_(o) {
  KERN_CHECK(!o.normalized_shape().empty(), "LayerNorm: normalized_shape must not be empty");
  for (auto s : o.normalized_shape())
    KERN_CHECK(s > 0, "LayerNorm: normalized_shape ", o.normalized_shape(), " must be positive");
  if (o.elementwise_affine()) {
    weight = register_parameter("weight", empty(o.normalized_shape()));
    if (o.bias()) bias = register_parameter("bias", empty(o.normalized_shape()));
  }
  reset_parameters();
}

void LayerNorm::reset_parameters() {
  if (weight.defined()) init::ones_(weight.tensor());
  if (bias.defined()) init::zeros_(bias.tensor());
}

Tensor LayerNorm::forward(const Tensor& x) {
  const Shape& ns = options_.normalized_shape();
  bool ok = x.dim() >= ns.ndim();
  for (int64_t i = 0; ok && i < ns.ndim(); ++i) ok = x.size(x.dim() - ns.ndim() + i) == ns[i];
  KERN_CHECK(ok, "LayerNorm(", ns, "): input ", x.shape(), " must end in ", ns);
  return layer_norm(x, ns, weight(), bias(), options_.eps());
}

std::string LayerNorm::extra_repr() const {
  std::string shape = "(";
  for (auto s : options_.normalized_shape()) shape += fmt::format("{},", s);
  if (options_.normalized_shape().size() > 1) shape.pop_back();
  shape += ")";
  return fmt::format("{}, eps={}, elementwise_affine={}", shape, options_.eps(),
                     py_bool(options_.elementwise_affine()));
}

// ---- LayerNorm2d

LayerNorm2d::LayerNorm2d(const LayerNorm2dOptions& o) : options_(o) {
  KERN_CHECK(o.num_channels() > 0, "LayerNorm2d: num_channels must be > 0, got ",
             o.num_channels());
  if (o.elementwise_affine()) {
    weight = register_parameter("weight", empty({o.num_channels()}));
    bias = register_parameter("bias", empty({o.num_channels()}));
  }
  reset_parameters();
}

void LayerNorm2d::reset_parameters() {
  if (weight.defined()) init::ones_(weight.tensor());
  if (bias.defined()) init::zeros_(bias.tensor());
}

Tensor LayerNorm2d::forward(const Tensor& x) {
  KERN_CHECK(x.dim() == 4 && x.size(1) == options_.num_channels(), "LayerNorm2d(",
             options_.num_channels(), "): expected input [N, ", options_.num_channels(),
             ", H, W], got ", x.shape());
  // [N, C, H, W] -> [N, H, W, C] -> normalize C -> [N, C, H, W]
  Tensor y = layer_norm(x.permute({0, 2, 3, 1}), {options_.num_channels()}, weight(), bias(),
                        options_.eps());
  return y.permute({0, 3, 1, 2});
}

std::string LayerNorm2d::extra_repr() const {
  return fmt::format("({},), eps={}, elementwise_affine={}", options_.num_channels(),
                     options_.eps(), py_bool(options_.elementwise_affine()));
}

// ---- BatchNorm2d

BatchNorm2d::BatchNorm2d(const BatchNorm2dOptions& o) : options_(o) {
  KERN_CHECK(o.num_features() > 0, "BatchNorm2d: num_features must be > 0, got ",
             o.num_features());
  KERN_CHECK(o.eps() >= 0, "BatchNorm2d: eps must be >= 0, got ", o.eps());
  if (o.affine()) {
    weight = register_parameter("weight", empty({o.num_features()}));
    bias = register_parameter("bias", empty({o.num_features()}));
  }
  if (o.track_running_stats()) {
    running_mean = register_buffer("running_mean", zeros({o.num_features()}));
    running_var = register_buffer("running_var", ones({o.num_features()}));
    num_batches_tracked = register_buffer("num_batches_tracked", zeros({}, DType::Int64));
  }
  reset_parameters();
}

void BatchNorm2d::reset_running_stats() {
  if (!options_.track_running_stats()) return;
  init::zeros_(running_mean.tensor());
  init::ones_(running_var.tensor());
  NoGradGuard no_grad;
  Tensor(num_batches_tracked.tensor()).fill_(0);
}

void BatchNorm2d::reset_parameters() {
  reset_running_stats();
  if (weight.defined()) init::ones_(weight.tensor());
  if (bias.defined()) init::zeros_(bias.tensor());
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  KERN_CHECK(x.dim() == 4 && x.size(1) == options_.num_features(), "BatchNorm2d(",
             options_.num_features(), "): expected input [N, ", options_.num_features(),
             ", H, W], got ", x.shape());
  // torch.nn.modules.batchnorm._BatchNorm.forward.
  double factor = options_.momentum().value_or(0.0);
  if (is_training() && options_.track_running_stats()) {
    Tensor count = num_batches_tracked();  // functional_call's substitute during a call
    const double seen = count.item() + 1;
    NoGradGuard no_grad;
    count.fill_(seen);
    if (!options_.momentum()) factor = 1.0 / seen;
  }
  // Batch statistics in training mode, and in eval mode when no running stats are kept.
  const bool use_batch_stats = is_training() || !options_.track_running_stats();
  // Running stats are updated in training mode and read in eval mode.
  const bool pass_running = !is_training() || options_.track_running_stats();
  return batch_norm(x, pass_running ? running_mean() : Tensor(),
                    pass_running ? running_var() : Tensor(), weight(), bias(), use_batch_stats,
                    factor, options_.eps());
}

std::string BatchNorm2d::extra_repr() const {
  const auto& o = options_;
  return fmt::format("{}, eps={}, momentum={}, affine={}, track_running_stats={}",
                     o.num_features(), o.eps(),
                     o.momentum() ? fmt::format("{}", *o.momentum()) : std::string("None"),
                     py_bool(o.affine()), py_bool(o.track_running_stats()));
}

}  // namespace kern::nn
