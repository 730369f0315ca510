// AffConvNet: the residual G-ResNet on GL+(2) / SL(2) (affine_conv.hpp), registered as
// affconv_gl2 / affconv_sl2.
#include <kern/models/affine_conv.hpp>

#include <kern/error.hpp>
#include <kern/ops.hpp>

#include <algorithm>

namespace kern::models::lie {

namespace {

// LayerNorm over the channels of each (sample, pixel): [N, C, S, H, W] -> same.
Tensor channel_ln(nn::LayerNorm& ln, const Tensor& x) {
  return ln(x.permute({0, 2, 3, 4, 1})).permute({0, 4, 1, 2, 3});
}

}  // namespace

AffResBlock::AffResBlock(int64_t channels, const AffineConvOptions& conv_options) {
  ln1 = register_module("ln1", std::make_shared<nn::LayerNorm>(channels));
  conv1 = register_module("conv1", std::make_shared<AffineGroupConv>(conv_options));
  ln2 = register_module("ln2", std::make_shared<nn::LayerNorm>(channels));
  conv2 = register_module("conv2", std::make_shared<AffineGroupConv>(conv_options));
}

Tensor AffResBlock::forward(const Tensor&) {
  KERN_CHECK(false, "AffResBlock: forward needs the sample set: forward(x, samples)");
  return {};
}

Tensor AffResBlock::forward(const Tensor& x, const Samples& s) {
  Tensor h = conv1->forward(gelu(channel_ln(*ln1, x)), s, s);
  h = conv2->forward(gelu(channel_ln(*ln2, h)), s, s);
  return x + h;
}

AffConvNet::AffConvNet(const AffConvNetOptions& o)
    : options_(o), group_(parse_group(o.group, "AffConvNetOptions.group")), gen_(o.seed) {
  KERN_CHECK(o.lift_pool >= 1, "AffConvNetOptions.lift_pool must be >= 1, got ", o.lift_pool);
  KERN_CHECK(o.in_chans >= 1 && o.channels >= 1 && o.num_blocks >= 0 && o.num_samples >= 1 &&
                 o.num_classes >= 0,
             "AffConvNetOptions: in_chans, channels, num_samples must be >= 1 and num_blocks, "
             "num_classes >= 0, got ",
             o.in_chans, ", ", o.channels, ", ", o.num_samples, ", ", o.num_blocks, ", ", o.num_classes);
  auto conv = [&](int64_t in) {
    return AffineConvOptions(in, o.channels, o.kernel_size)
        .group(group_)
        .hidden(o.siren_hidden)
        .hidden_layers(o.siren_layers)
        .omega0(o.omega0);
  };
  lift = register_module("lift", std::make_shared<AffineLiftingConv>(conv(o.in_chans)));
  blocks = register_module("blocks", std::make_shared<nn::ModuleList>());
  for (int64_t b = 0; b < o.num_blocks; ++b)
    block_list.push_back(blocks->push_back(std::make_shared<AffResBlock>(o.channels, conv(o.channels))));
  drop = register_module("drop", std::make_shared<nn::Dropout>(o.drop_rate));
  if (o.num_classes > 0) {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(o.channels, o.channels));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(o.channels, o.num_classes));
  }
}

const Samples& AffConvNet::eval_samples(DType dtype) {
  if (!eval_samples_.g.defined() || eval_samples_.g.dtype() != dtype) {
    Generator g(options_.eval_seed);
    eval_samples_ = sample({.group = group_, .num_samples = options_.num_samples, .rotations = options_.rotations,
                            .log_std = options_.log_std, .haar_weights = options_.haar_weights},
                           &g, dtype);
  }
  return eval_samples_;
}

Tensor AffConvNet::forward(const Tensor& x) {
  KERN_CHECK(x.dim() == 4, "AffConvNet: input must be [N, C, H, W], got ", x.shape());
  if (!is_training()) return forward(x, eval_samples(x.dtype()));
  const auto& o = options_;
  const Samples s = sample({.group = group_, .num_samples = o.num_samples, .rotations = o.rotations,
                            .log_std = o.log_std, .haar_weights = o.haar_weights},
                           &gen_, x.dtype());
  return forward(x, s);
}

Tensor AffConvNet::forward(const Tensor& x, const Samples& s) {
  const auto& o = options_;
  KERN_CHECK(x.dim() == 4 && x.size(1) == o.in_chans, "AffConvNet: input must be [N, in_chans = ", o.in_chans,
             ", H, W], got ", x.shape());
  Tensor y = lift->forward(x, s);
  if (o.lift_pool > 1) y = spatial_max_pool(y, o.lift_pool);
  for (int64_t b = 0; b < static_cast<int64_t>(block_list.size()); ++b) {
    y = block_list[b]->forward(y, s);
    if (std::find(o.pool_after.begin(), o.pool_after.end(), b) != o.pool_after.end())
      y = spatial_max_pool(y, 2);
  }
  Tensor f = global_max(y);  // [N, C], invariant
  if (o.num_classes == 0) return f;
  return (*fc2)((*drop)(gelu((*fc1)(f))));
}

namespace {

AffConvNetOptions from_model_options(AffConvNetOptions o, const ModelOptions& m, const char* name) {
  KERN_CHECK(m.drop_path_rate == 0.0, name, ": drop_path_rate = ", m.drop_path_rate, " is not supported");
  o.num_classes = m.num_classes;
  o.in_chans = m.in_chans;
  o.drop_rate = m.drop_rate;
  o.channels = scale_width(o.channels, m.width_mult);
  return o;
}

}  // namespace

std::shared_ptr<AffConvNet> affconv_gl2(const ModelOptions& o) {
  return std::make_shared<AffConvNet>(from_model_options(AffConvNetOptions{.group = "gl2"}, o, "affconv_gl2"));
}

std::shared_ptr<AffConvNet> affconv_sl2(const ModelOptions& o) {
  return std::make_shared<AffConvNet>(from_model_options(AffConvNetOptions{.group = "sl2"}, o, "affconv_sl2"));
}

KERN_REGISTER_MODEL("affconv_gl2", affconv_gl2, ModelInfo{.width = 16});
KERN_REGISTER_MODEL("affconv_sl2", affconv_sl2, ModelInfo{.width = 16});

}  // namespace kern::models::lie
