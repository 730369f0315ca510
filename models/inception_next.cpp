// InceptionNeXt / MetaNeXt, following timm/models/inception_next.py (names, order, init).
#include <kern/models/inception_next.hpp>

#include <kern/error.hpp>
#include <kern/ops.hpp>

#include <array>
#include <cmath>
#include <string>

namespace kern::models {
namespace inception_next {
namespace {

// Python's int(dim * ratio) for the positive values used here.
int64_t branch_channels(int64_t dim, double branch_ratio) {
  return static_cast<int64_t>(std::floor(static_cast<double>(dim) * branch_ratio));
}

std::shared_ptr<nn::Conv2d> depthwise(int64_t c, int64_t kh, int64_t kw) {
  return std::make_shared<nn::Conv2d>(
      nn::Conv2dOptions(c, c, std::array<int64_t, 2>{kh, kw}).padding({kh / 2, kw / 2}).groups(c));
}

}  // namespace

InceptionDWConv2d::InceptionDWConv2d(int64_t dim, int64_t square_kernel_size,
                                     int64_t band_kernel_size, double branch_ratio) {
  const int64_t gc = branch_channels(dim, branch_ratio);
  KERN_CHECK(gc >= 1 && dim - 3 * gc >= 0, "InceptionDWConv2d: dim ", dim, " with branch_ratio ",
             branch_ratio, " gives ", gc, " channels per conv branch and ", dim - 3 * gc,
             " identity channels (need int(dim * branch_ratio) >= 1 and 3 of them <= dim)");
  KERN_CHECK(square_kernel_size >= 1 && square_kernel_size % 2 == 1 && band_kernel_size >= 1 &&
                 band_kernel_size % 2 == 1,
             "InceptionDWConv2d: square_kernel_size (", square_kernel_size,
             ") and band_kernel_size (", band_kernel_size, ") must be odd and >= 1");
  split_ = {dim - 3 * gc, gc, gc, gc};
  dwconv_hw = register_module("dwconv_hw", depthwise(gc, square_kernel_size, square_kernel_size));
  dwconv_w = register_module("dwconv_w", depthwise(gc, 1, band_kernel_size));
  dwconv_h = register_module("dwconv_h", depthwise(gc, band_kernel_size, 1));
}

Tensor InceptionDWConv2d::run(const Tensor& x, bool fire_hooks) {
  const int64_t dim = split_[0] + 3 * split_[1];
  KERN_CHECK(x.dim() == 4 && x.size(1) == dim, "InceptionDWConv2d: expected [N, ", dim,
             ", H, W], got ", x.shape());
  auto call = [fire_hooks](nn::Module& m, const Tensor& t) { return fire_hooks ? m(t) : m.forward(t); };
  auto parts = split_with_sizes(x, split_, 1);  // x_id, x_hw, x_w, x_h
  std::vector<Tensor> out;
  if (split_[0] > 0) out.push_back(parts[0]);
  out.push_back(call(*dwconv_hw, parts[1]));
  out.push_back(call(*dwconv_w, parts[2]));
  out.push_back(call(*dwconv_h, parts[3]));
  return cat(out, 1);
}

Tensor InceptionDWConv2d::forward(const Tensor& x) { return run(x, true); }
Tensor InceptionDWConv2d::forward_unhooked(const Tensor& x) { return run(x, false); }

ConvMlp::ConvMlp(int64_t in_features, int64_t hidden_features) {
  fc1 = register_module("fc1", std::make_shared<nn::Conv2d>(in_features, hidden_features, 1));
  norm = register_module("norm", std::make_shared<nn::Identity>());
  act = register_module("act", std::make_shared<nn::GELU>());
  drop = register_module("drop", std::make_shared<nn::Dropout>(0.0));
  fc2 = register_module("fc2", std::make_shared<nn::Conv2d>(hidden_features, in_features, 1));
}

Tensor ConvMlp::forward(const Tensor& x) {
  return (*fc2)((*drop)((*act)((*norm)((*fc1)(x)))));
}

Tensor ConvMlp::forward_unhooked(const Tensor& x) {
  return fc2->forward(drop->forward(act->forward(norm->forward(fc1->forward(x)))));
}

MetaNeXtBlock::MetaNeXtBlock(int64_t dim, const InceptionNeXtOptions& o, double mlp_ratio,
                             double drop_path_rate) {
  // Own parameter first: PyTorch's state_dict lists a module's parameters before its children.
  if (o.ls_init_value != 0) gamma = register_parameter("gamma", full({dim}, o.ls_init_value));
  token_mixer = register_module(
      "token_mixer", std::make_shared<InceptionDWConv2d>(dim, o.square_kernel_size,
                                                         o.band_kernel_size, o.branch_ratio));
  norm = register_module("norm", std::make_shared<nn::BatchNorm2d>(dim));
  mlp = register_module("mlp", std::make_shared<ConvMlp>(
                                   dim, static_cast<int64_t>(mlp_ratio * static_cast<double>(dim))));
  if (drop_path_rate > 0)
    drop_path = register_module("drop_path", std::make_shared<nn::DropPath>(drop_path_rate));
  else
    drop_path = register_module("drop_path", std::make_shared<nn::Identity>());
}

Tensor MetaNeXtBlock::branch(const Tensor& x, bool fire_hooks) {
  if (fire_hooks) return (*mlp)((*norm)((*token_mixer)(x)));                    // [N, C, H, W]
  return mlp->forward_unhooked(norm->forward(token_mixer->forward_unhooked(x)));  // same, no hooks
}

Tensor MetaNeXtBlock::forward(const Tensor& x) {
  Tensor h = branch(x);  // [N, C, H, W]
  if (gamma.defined()) h = h * gamma().reshape({1, -1, 1, 1});
  return (*drop_path)(h) + x;
}

MetaNeXtStage::MetaNeXtStage(int64_t in_chs, int64_t out_chs, bool with_downsample,
                             int64_t depth, const std::vector<double>& drop_paths,
                             double mlp_ratio, const InceptionNeXtOptions& o) {
  KERN_CHECK(static_cast<int64_t>(drop_paths.size()) == depth, "MetaNeXtStage: ", depth,
             " blocks but ", drop_paths.size(), " drop_path rates");
  if (with_downsample)
    downsample = register_module(
        "downsample",
        std::make_shared<nn::Sequential>(
            std::make_shared<nn::BatchNorm2d>(in_chs),
            std::make_shared<nn::Conv2d>(nn::Conv2dOptions(in_chs, out_chs, 2).stride(2))));
  else
    downsample = register_module("downsample", std::make_shared<nn::Identity>());
  blocks = register_module("blocks", std::make_shared<nn::Sequential>());
  for (int64_t j = 0; j < depth; ++j)
    blocks->push_back(std::make_shared<MetaNeXtBlock>(out_chs, o, mlp_ratio, drop_paths[j]));
}

Tensor MetaNeXtStage::forward(const Tensor& x) { return (*blocks)((*downsample)(x)); }

MlpClassifierHead::MlpClassifierHead(int64_t in_features, int64_t num_classes, double mlp_ratio,
                                     double drop_rate)
    : num_features(static_cast<int64_t>(mlp_ratio * static_cast<double>(in_features))) {
  // timm's SelectAdaptivePool2d('avg', flatten=True): [N, C, H, W] -> [N, C].
  global_pool = register_module(
      "global_pool", std::make_shared<nn::Functional>(
                         [](const Tensor& x) { return x.mean({2, 3}); }, "SelectAdaptivePool2d"));
  fc1 = register_module("fc1", std::make_shared<nn::Linear>(in_features, num_features));
  act = register_module("act", std::make_shared<nn::GELU>());
  norm = register_module("norm", std::make_shared<nn::LayerNorm>(
                                     nn::LayerNormOptions(num_features).eps(1e-6)));
  if (num_classes > 0)
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(num_features, num_classes));
  else
    fc2 = register_module("fc2", std::make_shared<nn::Identity>());
  drop = register_module("drop", std::make_shared<nn::Dropout>(drop_rate));
}

Tensor MlpClassifierHead::forward(const Tensor& x, bool pre_logits) {
  KERN_CHECK(x.dim() == 4, "MlpClassifierHead: expected [N, C, H, W], got ", x.shape());
  Tensor h = (*drop)((*norm)((*act)((*fc1)((*global_pool)(x)))));  // [N, hidden]
  return pre_logits ? h : (*fc2)(h);
}

}  // namespace inception_next

namespace {

void check_options(const InceptionNeXtOptions& o) {
  const size_t n = o.depths.size();
  KERN_CHECK(n >= 1, "InceptionNeXt: depths must have at least one stage");
  KERN_CHECK(o.dims.size() == n, "InceptionNeXt: dims has ", o.dims.size(),
             " entries but depths has ", n, " (one per stage)");
  // Like timm, stage i uses mlp_ratios[i], so the default (4, 4, 4, 3) also serves fewer stages.
  KERN_CHECK(o.mlp_ratios.size() >= n || o.mlp_ratios.size() == 1, "InceptionNeXt: mlp_ratios has ",
             o.mlp_ratios.size(), " entries but depths has ", n, " (one per stage, or one for all)");
  for (size_t i = 0; i < n; ++i) {
    KERN_CHECK(o.depths[i] >= 0, "InceptionNeXt: depths[", i, "] must be >= 0, got ", o.depths[i]);
    const int64_t gc = inception_next::branch_channels(o.dims[i], o.branch_ratio);
    KERN_CHECK(o.dims[i] >= 1 && gc >= 1 && o.dims[i] - 3 * gc >= 0, "InceptionNeXt: dims[", i,
               "] = ", o.dims[i], " cannot be split with branch_ratio ", o.branch_ratio, ": int(",
               o.dims[i], " * ", o.branch_ratio, ") = ", gc,
               " channels per conv branch (need >= 1, and 3 branches <= dims[", i, "])");
  }
  for (size_t i = 0; i < o.mlp_ratios.size(); ++i)
    KERN_CHECK(o.mlp_ratios[i] > 0, "InceptionNeXt: mlp_ratios[", i, "] must be > 0, got ",
               o.mlp_ratios[i]);
  KERN_CHECK(o.head_mlp_ratio > 0, "InceptionNeXt: head_mlp_ratio must be > 0, got ",
             o.head_mlp_ratio);
  KERN_CHECK(o.num_classes >= 0, "InceptionNeXt: num_classes must be >= 0, got ", o.num_classes);
  KERN_CHECK(o.in_chans >= 1, "InceptionNeXt: in_chans must be >= 1, got ", o.in_chans);
  KERN_CHECK(o.drop_rate >= 0 && o.drop_rate < 1, "InceptionNeXt: drop_rate must be in [0, 1), got ",
             o.drop_rate);
  KERN_CHECK(o.drop_path_rate >= 0 && o.drop_path_rate < 1,
             "InceptionNeXt: drop_path_rate must be in [0, 1), got ", o.drop_path_rate);
}

}  // namespace

InceptionNeXt::InceptionNeXt(const InceptionNeXtOptions& options) : options_(options) {
  const InceptionNeXtOptions& o = options_;
  check_options(o);
  const size_t n = o.depths.size();
  stem = register_module(
      "stem", std::make_shared<nn::Sequential>(
                  std::make_shared<nn::Conv2d>(nn::Conv2dOptions(o.in_chans, o.dims[0], 4).stride(4)),
                  std::make_shared<nn::BatchNorm2d>(o.dims[0])));

  // Stochastic depth: torch.linspace(0, drop_path_rate, sum(depths)), cut per stage.
  int64_t total = 0;
  for (int64_t d : o.depths) total += d;
  std::vector<double> rates(static_cast<size_t>(total), 0.0);
  for (int64_t k = 1; k < total; ++k)
    rates[k] = o.drop_path_rate * static_cast<double>(k) / static_cast<double>(total - 1);

  stages = register_module("stages", std::make_shared<nn::Sequential>());
  int64_t prev = o.dims[0], first = 0;
  for (size_t i = 0; i < n; ++i) {
    std::vector<double> stage_rates(rates.begin() + first, rates.begin() + first + o.depths[i]);
    first += o.depths[i];
    const double mlp_ratio = o.mlp_ratios.size() == 1 ? o.mlp_ratios[0] : o.mlp_ratios[i];
    stages->push_back(std::make_shared<inception_next::MetaNeXtStage>(
        prev, o.dims[i], /*downsample=*/i > 0, o.depths[i], stage_rates, mlp_ratio, o));
    prev = o.dims[i];
  }
  num_features = prev;
  head = register_module("head", std::make_shared<inception_next::MlpClassifierHead>(
                                     num_features, o.num_classes, o.head_mlp_ratio, o.drop_rate));
  head_hidden_size = head->num_features;

  // timm's _init_weights: trunc_normal_(std=.02, a=-2, b=2) and zero bias for every Conv2d and
  // Linear; norms keep weight 1, bias 0. The bounds +-2 are +-100 std, which no double normal
  // sample reaches (Box-Muller tops out near 8.6 std), so that law is exactly N(0, .02^2):
  // normal_ draws it ~3x faster than trunc_normal_'s inverse CDF (86M weights of the base).
  apply([](nn::Module& m) {
    Tensor weight, bias;
    if (auto* conv = dynamic_cast<nn::Conv2d*>(&m)) weight = conv->weight.tensor(), bias = conv->bias.tensor();
    else if (auto* lin = dynamic_cast<nn::Linear*>(&m)) weight = lin->weight.tensor(), bias = lin->bias.tensor();
    else return;
    nn::init::normal_(weight, 0.0, 0.02);
    if (bias.defined()) nn::init::zeros_(bias);
  });
}

Tensor InceptionNeXt::forward_features(const Tensor& x) {
  KERN_CHECK(x.dim() == 4 && x.size(1) == options_.in_chans, "InceptionNeXt: expected input [N, ",
             options_.in_chans, ", H, W], got ", x.shape());
  return (*stages)((*stem)(x));
}

Tensor InceptionNeXt::forward_head(const Tensor& x, bool pre_logits) {
  // Through operator() (hooks on `head` fire) unless pre-logits are asked for.
  return pre_logits ? head->forward(x, true) : (*head)(x);
}

// ---- timm's variants

namespace {

std::shared_ptr<InceptionNeXt> make(const InceptionNeXtOptions& o, const ModelOptions& m) {
  return std::make_shared<InceptionNeXt>(with_model_options(o, m));
}

}  // namespace

std::shared_ptr<InceptionNeXt> inception_next_atto(const ModelOptions& m) {
  return make({.depths = {2, 2, 6, 2}, .dims = {40, 80, 160, 320}, .band_kernel_size = 9,
               .branch_ratio = 0.25},
              m);
}

std::shared_ptr<InceptionNeXt> inception_next_tiny(const ModelOptions& m) {
  return make({.depths = {3, 3, 9, 3}, .dims = {96, 192, 384, 768}}, m);
}

std::shared_ptr<InceptionNeXt> inception_next_small(const ModelOptions& m) {
  return make({.depths = {3, 3, 27, 3}, .dims = {96, 192, 384, 768}}, m);
}

std::shared_ptr<InceptionNeXt> inception_next_base(const ModelOptions& m) {
  return make({.depths = {3, 3, 27, 3}, .dims = {128, 256, 512, 1024}}, m);
}

KERN_REGISTER_MODEL("inception_next_atto", inception_next_atto, ModelInfo{.width = 40});
KERN_REGISTER_MODEL("inception_next_tiny", inception_next_tiny, ModelInfo{.width = 96});
KERN_REGISTER_MODEL("inception_next_small", inception_next_small, ModelInfo{.width = 96});
KERN_REGISTER_MODEL("inception_next_base", inception_next_base, ModelInfo{.width = 128});

}  // namespace kern::models
