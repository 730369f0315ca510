// RepLKNet: blocks, stages and the model with the reference repo's structure and names.
#include <kern/models/replknet.hpp>

#include <kern/ops/shape_ops.hpp>

#include <numeric>

namespace kern::models {

namespace {

std::shared_ptr<nn::Module> make_drop_path(double p) {
  if (p > 0.0) return std::make_shared<nn::DropPath>(p);
  return std::make_shared<nn::Identity>();
}

// conv_bn / conv_bn_relu of the repo.
std::shared_ptr<ConvBN> conv_bn(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t padding,
                                int64_t groups, bool relu) {
  return std::make_shared<ConvBN>(ConvBNOptions{
      nn::Conv2dOptions(in, out, k).stride(stride).padding(padding).groups(groups), relu});
}

}  // namespace

// ---------------------------------------------------------------- RepLKBlock

RepLKBlock::RepLKBlock(const RepLKBlockOptions& o) {
  KERN_CHECK(o.in_channels >= 1 && o.dw_channels >= 1, "RepLKBlock: in_channels = ", o.in_channels,
             " and dw_channels = ", o.dw_channels, " must be >= 1");
  KERN_CHECK(o.drop_path >= 0.0 && o.drop_path < 1.0, "RepLKBlock: drop_path = ", o.drop_path,
             " must be in [0, 1)");
  // Registration order is the repo's (it fixes the state_dict order).
  pw1 = register_module("pw1", conv_bn(o.in_channels, o.dw_channels, 1, 1, 0, 1, true));
  pw2 = register_module("pw2", conv_bn(o.dw_channels, o.in_channels, 1, 1, 0, 1, false));
  large_kernel = register_module(
      "large_kernel", std::make_shared<ReparamLargeKernelConv>(
                          ReparamLargeKernelConvOptions(o.dw_channels, o.dw_channels, o.kernel_size)
                              .groups(o.dw_channels)
                              .small_kernel(o.small_kernel)
                              .small_kernel_merged(o.small_kernel_merged)));
  lk_nonlinear = register_module("lk_nonlinear", std::make_shared<nn::ReLU>());
  prelkb_bn = register_module("prelkb_bn", std::make_shared<nn::BatchNorm2d>(o.in_channels));
  drop_path = register_module("drop_path", make_drop_path(o.drop_path));
}

Tensor RepLKBlock::forward(const Tensor& x) {
  Tensor h = (*pw1)((*prelkb_bn)(x));           // [N, dw, H, W]
  h = (*pw2)((*lk_nonlinear)((*large_kernel)(h)));  // [N, C, H, W]
  return x + (*drop_path)(h);
}

// ---------------------------------------------------------------- ConvFFN

ConvFFN::ConvFFN(const ConvFFNOptions& o) {
  KERN_CHECK(o.in_channels >= 1 && o.internal_channels >= 1 && o.out_channels == o.in_channels,
             "ConvFFN: in_channels = ", o.in_channels, ", internal_channels = ",
             o.internal_channels, ", out_channels = ", o.out_channels,
             " (all >= 1, out_channels == in_channels for the residual)");
  KERN_CHECK(o.drop_path >= 0.0 && o.drop_path < 1.0, "ConvFFN: drop_path = ", o.drop_path,
             " must be in [0, 1)");
  drop_path = register_module("drop_path", make_drop_path(o.drop_path));
  preffn_bn = register_module("preffn_bn", std::make_shared<nn::BatchNorm2d>(o.in_channels));
  pw1 = register_module("pw1", conv_bn(o.in_channels, o.internal_channels, 1, 1, 0, 1, false));
  pw2 = register_module("pw2", conv_bn(o.internal_channels, o.out_channels, 1, 1, 0, 1, false));
  nonlinear = register_module("nonlinear", std::make_shared<nn::GELU>());
}

Tensor ConvFFN::forward(const Tensor& x) {
  Tensor h = (*pw2)((*nonlinear)((*pw1)((*preffn_bn)(x))));
  return x + (*drop_path)(h);
}

// ---------------------------------------------------------------- RepLKNetStage

RepLKNetStage::RepLKNetStage(const RepLKNetStageOptions& o) {
  KERN_CHECK(o.channels >= 1 && o.num_blocks >= 0, "RepLKNetStage: channels = ", o.channels,
             " must be >= 1 and num_blocks = ", o.num_blocks, " >= 0");
  KERN_CHECK(o.drop_paths.empty() || static_cast<int64_t>(o.drop_paths.size()) == o.num_blocks,
             "RepLKNetStage: drop_paths has ", o.drop_paths.size(), " entries for ", o.num_blocks,
             " blocks");
  const auto dw = static_cast<int64_t>(static_cast<double>(o.channels) * o.dw_ratio);
  const auto ffn = static_cast<int64_t>(static_cast<double>(o.channels) * o.ffn_ratio);
  blocks = register_module("blocks", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < o.num_blocks; ++i) {
    const double dp = o.drop_paths.empty() ? 0.0 : o.drop_paths[static_cast<size_t>(i)];
    blocks->push_back(std::make_shared<RepLKBlock>(RepLKBlockOptions{
        .in_channels = o.channels,
        .dw_channels = dw,
        .kernel_size = o.kernel_size,
        .small_kernel = o.small_kernel,
        .drop_path = dp,
        .small_kernel_merged = o.small_kernel_merged}));
    blocks->push_back(std::make_shared<ConvFFN>(ConvFFNOptions{
        .in_channels = o.channels, .internal_channels = ffn, .out_channels = o.channels, .drop_path = dp}));
  }
  norm = register_module("norm", std::make_shared<nn::Identity>());
}

Tensor RepLKNetStage::forward(const Tensor& x) {
  Tensor h = x;
  for (const auto& b : *blocks) h = (*b)(h);
  return h;
}

// ---------------------------------------------------------------- RepLKNet

RepLKNet::RepLKNet(const RepLKNetOptions& options) : options_(options) {
  const auto& o = options_;
  const size_t n = o.layers.size();
  KERN_CHECK(n >= 1 && o.large_kernel_sizes.size() == n && o.channels.size() == n,
             "RepLKNet: large_kernel_sizes (", o.large_kernel_sizes.size(), " entries), layers (", n,
             ") and channels (", o.channels.size(), ") need the same number of stages, >= 1");
  KERN_CHECK(o.small_kernel >= 0 && (o.small_kernel == 0 || o.small_kernel % 2 == 1),
             "RepLKNet: small_kernel = ", o.small_kernel, " must be odd (or 0 for none)");
  for (size_t i = 0; i < n; ++i) {
    const int64_t k = o.large_kernel_sizes[i];
    KERN_CHECK(k >= 1 && k % 2 == 1, "RepLKNet: large_kernel_sizes[", i, "] = ", k,
               " must be odd and >= 1");
    KERN_CHECK(o.small_kernel <= k, "RepLKNet: small_kernel = ", o.small_kernel,
               " must be <= every large kernel, but large_kernel_sizes[", i, "] = ", k);
    KERN_CHECK(o.layers[i] >= 1, "RepLKNet: layers[", i, "] = ", o.layers[i], " must be >= 1");
    KERN_CHECK(o.channels[i] >= 1, "RepLKNet: channels[", i, "] = ", o.channels[i], " must be >= 1");
    KERN_CHECK(static_cast<int64_t>(static_cast<double>(o.channels[i]) * o.dw_ratio) >= 1 &&
                   static_cast<int64_t>(static_cast<double>(o.channels[i]) * o.ffn_ratio) >= 1,
               "RepLKNet: dw_ratio = ", o.dw_ratio, " and ffn_ratio = ", o.ffn_ratio,
               " must leave >= 1 channel for channels[", i, "] = ", o.channels[i]);
  }
  KERN_CHECK(o.in_chans >= 1, "RepLKNet: in_chans = ", o.in_chans, " must be >= 1");
  KERN_CHECK(o.num_classes >= 0, "RepLKNet: num_classes = ", o.num_classes, " must be >= 0");
  KERN_CHECK(o.drop_rate >= 0.0 && o.drop_rate < 1.0, "RepLKNet: drop_rate = ", o.drop_rate,
             " must be in [0, 1)");
  KERN_CHECK(o.drop_path_rate >= 0.0 && o.drop_path_rate < 1.0, "RepLKNet: drop_path_rate = ",
             o.drop_path_rate, " must be in [0, 1)");

  const int64_t base = o.channels[0];
  stem = register_module("stem", std::make_shared<nn::ModuleList>());
  stem->push_back(conv_bn(o.in_chans, base, 3, 2, 1, 1, true));
  stem->push_back(conv_bn(base, base, 3, 1, 1, base, true));
  stem->push_back(conv_bn(base, base, 1, 1, 0, 1, true));
  stem->push_back(conv_bn(base, base, 3, 2, 1, base, true));

  // Per-block drop-path rates: torch.linspace(0, drop_path_rate, sum(layers)).
  const int64_t total = std::accumulate(o.layers.begin(), o.layers.end(), int64_t{0});
  std::vector<double> dpr(static_cast<size_t>(total), 0.0);
  for (int64_t i = 1; i < total; ++i)
    dpr[static_cast<size_t>(i)] = o.drop_path_rate * static_cast<double>(i) / static_cast<double>(total - 1);

  stages = register_module("stages", std::make_shared<nn::ModuleList>());
  transitions = register_module("transitions", std::make_shared<nn::ModuleList>());
  size_t first = 0;
  for (size_t i = 0; i < n; ++i) {
    const auto count = static_cast<size_t>(o.layers[i]);
    stages->push_back(std::make_shared<RepLKNetStage>(RepLKNetStageOptions{
        .channels = o.channels[i],
        .num_blocks = o.layers[i],
        .kernel_size = o.large_kernel_sizes[i],
        .drop_paths = std::vector<double>(dpr.begin() + static_cast<std::ptrdiff_t>(first),
                                          dpr.begin() + static_cast<std::ptrdiff_t>(first + count)),
        .small_kernel = o.small_kernel,
        .dw_ratio = o.dw_ratio,
        .ffn_ratio = o.ffn_ratio,
        .small_kernel_merged = o.small_kernel_merged}));
    first += count;
    if (i + 1 < n) {
      const int64_t next = o.channels[i + 1];
      transitions->push_back(std::make_shared<nn::Sequential>(
          conv_bn(o.channels[i], next, 1, 1, 0, 1, true), conv_bn(next, next, 3, 2, 1, next, true)));
    }
  }

  norm = register_module("norm", std::make_shared<nn::BatchNorm2d>(o.channels.back()));
  avgpool = register_module("avgpool", std::make_shared<nn::AdaptiveAvgPool2d>(1));
  if (o.drop_rate > 0.0) head_drop = register_module("head_drop", std::make_shared<nn::Dropout>(o.drop_rate));
  if (o.num_classes > 0)
    head = register_module("head", std::make_shared<nn::Linear>(o.channels.back(), o.num_classes));
  else
    head = register_module("head", std::make_shared<nn::Identity>());
}

Tensor RepLKNet::forward_features(const Tensor& x) {
  KERN_CHECK(x.dim() == 4 && x.size(1) == options_.in_chans, "RepLKNet: expected input [N, ",
             options_.in_chans, ", H, W], got ", x.shape(), " ", x.dtype());
  Tensor h = x;
  for (const auto& m : *stem) h = (*m)(h);
  for (size_t i = 0; i < stages->size(); ++i) {
    h = (*(*stages)[i])(h);
    if (i < transitions->size()) h = (*(*transitions)[i])(h);
  }
  return h;
}

Tensor RepLKNet::forward(const Tensor& x) {
  Tensor h = (*avgpool)((*norm)(forward_features(x))).flatten(1);  // [N, C]
  if (head_drop) h = (*head_drop)(h);
  return (*head)(h);
}

// ---------------------------------------------------------------- registered variants

namespace {
std::shared_ptr<RepLKNet> build(const RepLKNetOptions& opts, const ModelOptions& o) {
  return std::make_shared<RepLKNet>(with_model_options(opts, o));
}
}  // namespace

std::shared_ptr<RepLKNet> replknet_31b(const ModelOptions& o) {
  return build(RepLKNetOptions{}, o);
}

std::shared_ptr<RepLKNet> replknet_31l(const ModelOptions& o) {
  return build(RepLKNetOptions{.channels = {192, 384, 768, 1536}}, o);
}

std::shared_ptr<RepLKNet> replknet_xl(const ModelOptions& o) {
  return build(RepLKNetOptions{.large_kernel_sizes = {27, 27, 27, 13},
                               .channels = {256, 512, 1024, 2048},
                               .small_kernel = 0,
                               .dw_ratio = 1.5},
               o);
}

KERN_REGISTER_MODEL("replknet_31b", replknet_31b, ModelInfo{.width = RepLKNetOptions{}.channels.front()});
KERN_REGISTER_MODEL("replknet_31l", replknet_31l, ModelInfo{.width = 192});
KERN_REGISTER_MODEL("replknet_xl", replknet_xl, ModelInfo{.width = 256});

}  // namespace kern::models
