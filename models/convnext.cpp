// ConvNeXt, timm-compatible (see kern/models/convnext.hpp for the module tree).
#include <kern/error.hpp>
#include <kern/models/convnext.hpp>

#include <map>
#include <numeric>

namespace kern::models {
namespace {

std::string list_str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// Every field that can make the model ill-formed, with the field's name in the message.
void validate(const ConvNeXtOptions& o) {
  KERN_CHECK(!o.depths.empty(), "ConvNeXt: depths must have at least one stage, got []");
  KERN_CHECK(o.depths.size() == o.dims.size(), "ConvNeXt: depths and dims must have one entry per stage, got depths ",
             list_str(o.depths), " (", o.depths.size(), " stages) and dims ", list_str(o.dims), " (",
             o.dims.size(), " stages)");
  for (size_t i = 0; i < o.depths.size(); ++i) {
    KERN_CHECK(o.depths[i] >= 1, "ConvNeXt: depths[", i, "] must be >= 1, got depths ", list_str(o.depths));
    KERN_CHECK(o.dims[i] >= 1, "ConvNeXt: dims[", i, "] must be >= 1, got dims ", list_str(o.dims));
  }
  // Odd kernels only: the depthwise conv pads (k - 1) / 2 on each side to keep H and W.
  KERN_CHECK(o.kernel_size >= 1 && o.kernel_size % 2 == 1,
             "ConvNeXt: kernel_size must be a positive odd number (symmetric 'same' padding), got ",
             o.kernel_size);
  if (!o.kernel_sizes.empty()) {
    KERN_CHECK(o.kernel_sizes.size() == o.depths.size(), "ConvNeXt: kernel_sizes must have one entry per stage (",
               o.depths.size(), "), got ", list_str(o.kernel_sizes));
    for (size_t i = 0; i < o.kernel_sizes.size(); ++i)
      KERN_CHECK(o.kernel_sizes[i] >= 1 && o.kernel_sizes[i] % 2 == 1, "ConvNeXt: kernel_sizes[", i,
                 "] must be a positive odd number (symmetric 'same' padding), got ", list_str(o.kernel_sizes));
  }
  KERN_CHECK(o.num_classes >= 0, "ConvNeXt: num_classes must be >= 0, got ", o.num_classes);
  KERN_CHECK(o.in_chans >= 1, "ConvNeXt: in_chans must be >= 1, got ", o.in_chans);
  KERN_CHECK(o.patch_size >= 1, "ConvNeXt: patch_size must be >= 1, got ", o.patch_size);
  KERN_CHECK(o.norm_eps > 0, "ConvNeXt: norm_eps must be > 0, got ", o.norm_eps);
  for (int64_t d : o.dims)
    KERN_CHECK(static_cast<int64_t>(o.mlp_ratio * static_cast<double>(d)) >= 1,
               "ConvNeXt: mlp_ratio ", o.mlp_ratio, " gives an empty Mlp hidden layer for dim ", d);
  KERN_CHECK(o.drop_rate >= 0 && o.drop_rate < 1, "ConvNeXt: drop_rate must be in [0, 1), got ", o.drop_rate);
  KERN_CHECK(o.drop_path_rate >= 0 && o.drop_path_rate < 1, "ConvNeXt: drop_path_rate must be in [0, 1), got ",
             o.drop_path_rate);
}

}  // namespace

// ---- Mlp

ConvNeXtMlp::ConvNeXtMlp(int64_t in_features, int64_t hidden_features, int64_t out_features, bool use_conv) {
  if (use_conv) {
    fc1 = register_module("fc1", std::make_shared<nn::Conv2d>(in_features, hidden_features, 1));
    act = register_module("act", std::make_shared<nn::GELU>());
    fc2 = register_module("fc2", std::make_shared<nn::Conv2d>(hidden_features, out_features, 1));
  } else {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(in_features, hidden_features));
    act = register_module("act", std::make_shared<nn::GELU>());
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(hidden_features, out_features));
  }
}

Tensor ConvNeXtMlp::forward(const Tensor& x) { return (*fc2)((*act)((*fc1)(x))); }

Tensor ConvNeXtMlp::forward_unhooked(const Tensor& x) { return fc2->forward(act->forward(fc1->forward(x))); }

// ---- Block

ConvNeXtBlock::ConvNeXtBlock(int64_t dim, int64_t kernel_size, double drop_path_rate, const ConvNeXtOptions& o)
    : conv_mlp_(o.conv_mlp) {
  // timm registers gamma before the submodules, so it comes first in the state_dict.
  if (o.ls_init_value > 0) gamma = register_parameter("gamma", full({dim}, o.ls_init_value));
  conv_dw = register_module("conv_dw", std::make_shared<nn::Conv2d>(nn::Conv2dOptions(dim, dim, kernel_size)
                                                                         .padding((kernel_size - 1) / 2)
                                                                         .groups(dim)));
  if (o.conv_mlp)
    norm = register_module("norm", std::make_shared<nn::LayerNorm2d>(nn::LayerNorm2dOptions(dim).eps(o.norm_eps)));
  else
    norm = register_module("norm", std::make_shared<nn::LayerNorm>(nn::LayerNormOptions(dim).eps(o.norm_eps)));
  const auto hidden = static_cast<int64_t>(o.mlp_ratio * static_cast<double>(dim));
  mlp = register_module("mlp", std::make_shared<ConvNeXtMlp>(dim, hidden, dim, o.conv_mlp));
  if (drop_path_rate > 0)
    drop_path = register_module("drop_path", std::make_shared<nn::DropPath>(drop_path_rate));
  else
    drop_path = register_module("drop_path", std::make_shared<nn::Identity>());
}

Tensor ConvNeXtBlock::branch(const Tensor& x, bool fire_hooks) {
  // Leaf children: operator() fires their hooks, forward() does not.
  auto call = [fire_hooks](nn::Module& m, const Tensor& t) { return fire_hooks ? m(t) : m.forward(t); };
  auto call_mlp = [&](const Tensor& t) { return fire_hooks ? (*mlp)(t) : mlp->forward_unhooked(t); };
  Tensor h = call(*conv_dw, x);                                  // [N, C, H, W]
  if (conv_mlp_) return call_mlp(call(*norm, h));                // [N, C, H, W]
  return call_mlp(call(*norm, h.permute({0, 2, 3, 1}))).permute({0, 3, 1, 2});  // via [N, H, W, C]
}

Tensor ConvNeXtBlock::forward(const Tensor& x) {
  Tensor h = branch(x);  // [N, C, H, W]
  if (gamma.defined()) h = h * gamma().reshape({1, -1, 1, 1});
  return (*drop_path)(h) + x;
}

// ---- Stage

ConvNeXtStage::ConvNeXtStage(int64_t in_chs, int64_t out_chs, bool has_downsample, int64_t kernel_size,
                             const std::vector<double>& drop_path_rates, const ConvNeXtOptions& o) {
  if (has_downsample) {
    downsample = register_module(
        "downsample", std::make_shared<nn::Sequential>(
                          nn::LayerNorm2d(nn::LayerNorm2dOptions(in_chs).eps(o.norm_eps)),
                          nn::Conv2d(nn::Conv2dOptions(in_chs, out_chs, 2).stride(2))));
  } else {
    downsample = register_module("downsample", std::make_shared<nn::Identity>());
  }
  blocks = register_module("blocks", std::make_shared<nn::Sequential>());
  for (double rate : drop_path_rates)
    blocks->push_back(std::make_shared<ConvNeXtBlock>(out_chs, kernel_size, rate, o));
}

Tensor ConvNeXtStage::forward(const Tensor& x) { return (*blocks)((*downsample)(x)); }

// ---- Head

ConvNeXtHead::ConvNeXtHead(int64_t in_features, int64_t num_classes, double drop_rate, double norm_eps) {
  global_pool = register_module("global_pool", std::make_shared<nn::AdaptiveAvgPool2d>(1));
  norm = register_module("norm", std::make_shared<nn::LayerNorm2d>(nn::LayerNorm2dOptions(in_features).eps(norm_eps)));
  flatten = register_module("flatten", std::make_shared<nn::Flatten>());
  drop = register_module("drop", std::make_shared<nn::Dropout>(drop_rate));
  if (num_classes > 0)
    fc = register_module("fc", std::make_shared<nn::Linear>(in_features, num_classes));
  else
    fc = register_module("fc", std::make_shared<nn::Identity>());
}

Tensor ConvNeXtHead::forward(const Tensor& x, bool pre_logits) {
  Tensor h = (*flatten)((*norm)((*global_pool)(x)));  // [N, C]
  if (pre_logits) return h;
  return (*fc)((*drop)(h));
}

// ---- ConvNeXt

ConvNeXt::ConvNeXt(const ConvNeXtOptions& options) : options_(options) {
  validate(options_);
  const auto& o = options_;
  stem = register_module(
      "stem", std::make_shared<nn::Sequential>(
                  nn::Conv2d(nn::Conv2dOptions(o.in_chans, o.dims[0], o.patch_size).stride(o.patch_size)),
                  nn::LayerNorm2d(nn::LayerNorm2dOptions(o.dims[0]).eps(o.norm_eps))));

  // Stochastic depth rises linearly over all blocks of all stages (torch.linspace(0, rate, total)).
  const int64_t total = std::accumulate(o.depths.begin(), o.depths.end(), int64_t{0});
  int64_t block = 0;
  stages = register_module("stages", std::make_shared<nn::Sequential>());
  for (size_t i = 0; i < o.depths.size(); ++i) {
    std::vector<double> rates;
    for (int64_t j = 0; j < o.depths[i]; ++j, ++block)
      rates.push_back(total > 1 ? o.drop_path_rate * static_cast<double>(block) / static_cast<double>(total - 1) : 0.0);
    const int64_t in = i ? o.dims[i - 1] : o.dims[0];
    const int64_t k = o.kernel_sizes.empty() ? o.kernel_size : o.kernel_sizes[i];
    // Stage 0 keeps the stem's resolution and width: timm gives it an Identity downsample.
    stages->push_back(std::make_shared<ConvNeXtStage>(in, o.dims[i], /*downsample=*/i > 0, k, rates, o));
  }
  head = register_module("head", std::make_shared<ConvNeXtHead>(o.dims.back(), o.num_classes, o.drop_rate, o.norm_eps));
  init_weights();
}

void ConvNeXt::init_weights() {
  NoGradGuard ng;
  for (auto& [name, m] : named_modules()) {
    Tensor w, b;
    bool classifier = false;
    if (auto conv = std::dynamic_pointer_cast<nn::Conv2d>(m)) {
      w = conv->weight.tensor(), b = conv->bias.tensor();
    } else if (auto lin = std::dynamic_pointer_cast<nn::Linear>(m)) {
      w = lin->weight.tensor(), b = lin->bias.tensor();
      classifier = name.rfind("head.", 0) == 0;  // timm scales the head's Linear only
    } else {
      continue;
    }
    nn::init::trunc_normal_(w, 0.0, 0.02);  // cut at +-2 absolute (100 std): timm's call
    if (b.defined()) nn::init::zeros_(b);
    if (classifier && options_.head_init_scale != 1.0) {
      w.copy_(w * options_.head_init_scale);
      if (b.defined()) b.copy_(b * options_.head_init_scale);
    }
  }
}

Tensor ConvNeXt::forward_features(const Tensor& x) {
  KERN_CHECK(x.dim() == 4 && x.size(1) == options_.in_chans, "ConvNeXt: expected input [N, ", options_.in_chans,
             ", H, W], got ", x.shape());
  return (*stages)((*stem)(x));
}

Tensor ConvNeXt::forward_head(const Tensor& features, bool pre_logits) {
  KERN_CHECK(features.dim() == 4 && features.size(1) == num_features(),
             "ConvNeXt::forward_head: expected features [N, ", num_features(), ", H, W], got ", features.shape());
  return head->forward(features, pre_logits);
}

// ---- timm's variants

namespace {

struct Variant {
  std::vector<int64_t> depths, dims;
  bool conv_mlp;
};

// timm.models.convnext: the atto..nano models are timm's own and use conv_mlp=True.
const std::map<std::string, Variant>& variants() {
  static const std::map<std::string, Variant> table = {
      {"convnext_atto", {{2, 2, 6, 2}, {40, 80, 160, 320}, true}},
      {"convnext_femto", {{2, 2, 6, 2}, {48, 96, 192, 384}, true}},
      {"convnext_pico", {{2, 2, 6, 2}, {64, 128, 256, 512}, true}},
      {"convnext_nano", {{2, 2, 8, 2}, {80, 160, 320, 640}, true}},
      {"convnext_tiny", {{3, 3, 9, 3}, {96, 192, 384, 768}, false}},
      {"convnext_small", {{3, 3, 27, 3}, {96, 192, 384, 768}, false}},
      {"convnext_base", {{3, 3, 27, 3}, {128, 256, 512, 1024}, false}},
  };
  return table;
}

}  // namespace

ConvNeXtOptions convnext_options(const std::string& variant, const ModelOptions& o) {
  auto it = variants().find(variant);
  if (it == variants().end()) {
    std::string known;
    for (const auto& [name, v] : variants()) known += (known.empty() ? "" : ", ") + name;
    KERN_CHECK(false, "convnext_options: unknown variant '", variant, "'; known: ", known);
  }
  const Variant& v = it->second;
  return with_model_options(ConvNeXtOptions{.depths = v.depths, .dims = v.dims, .conv_mlp = v.conv_mlp}, o);
}

// Every variant of the table, under its name.
[[maybe_unused]] static const bool registered = [] {
  for (const auto& [name, v] : variants())  // `name = name`: clang < 16 cannot capture a binding
    register_model(
        name, [name = name](const ModelOptions& o) { return std::make_shared<ConvNeXt>(convnext_options(name, o)); },
        ModelInfo{.width = v.dims.front()});
  return true;
}();

}  // namespace kern::models
