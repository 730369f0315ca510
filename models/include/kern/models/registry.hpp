#pragma once
// The model zoo's name registry, like timm.create_model: every zoo variant registers itself
// under timm's name ("convnext_atto", "inception_next_tiny", ...) from its family's .cpp, so
// adding a family touches no shared file.
//
//   auto model = kern::models::create_model("convnext_atto", {.num_classes = 10});
//   for (auto& name : kern::models::list_models("convnext*")) ...
#include <kern/nn/module.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace kern::models {

/// The options every zoo model understands (timm's create_model keyword arguments). A family's
/// own options struct (ConvNeXtOptions, ...) has more; the registry maps these onto it.
struct ModelOptions {
  int64_t num_classes = 1000;   // 0: no classifier, forward returns pooled features
  int64_t in_chans = 3;
  double drop_rate = 0.0;       // dropout before the classifier
  double drop_path_rate = 0.0;  // stochastic depth, linearly increasing over blocks
  /// Multiplies every channel width of the family (ConvNeXt / InceptionNeXt dims, RepLKNet
  /// channels, p4cnn channels, long-conv d_model), rounded to the nearest integer >= 1: the
  /// width knob of muP studies (kern coord-check, base shapes from a narrower model).
  double width_mult = 1.0;
};

/// round(c * width_mult), at least 1 (throws unless width_mult is finite and > 0).
int64_t scale_width(int64_t c, double width_mult);

/// A family options struct with ModelOptions' fields applied to it (for families whose
/// struct names them the same: InceptionNeXtOptions, RepLKNetOptions, ...): the four common
/// fields are overwritten, and width_mult scales the family's `dims` or `channels`.
template <class FamilyOptions>
FamilyOptions with_model_options(FamilyOptions o, const ModelOptions& m) {
  o.num_classes = m.num_classes;
  o.in_chans = m.in_chans;
  o.drop_rate = m.drop_rate;
  o.drop_path_rate = m.drop_path_rate;
  if constexpr (requires { o.dims; })
    for (auto& d : o.dims) d = scale_width(d, m.width_mult);
  if constexpr (requires { o.channels; })
    for (auto& c : o.channels) c = scale_width(c, m.width_mult);
  return o;
}

/// What a registered model takes as input, for tools that feed it synthetic data
/// (kern coord-check): images [N, in_chans, H, W] or sequences [N, L, in_chans].
enum class InputKind { Image, Sequence };
struct ModelInfo {
  InputKind input = InputKind::Image;
  /// The width width_mult scales, at width_mult 1 (the first stage's channels, p4cnn's
  /// channels, long-conv d_model); 0: the model has no width knob.
  int64_t width = 0;
};

using ModelFactory = std::function<std::shared_ptr<nn::Module>(const ModelOptions&)>;

/// Builds a registered model. Throws kern::Error naming the unknown name and the closest
/// registered names.
std::shared_ptr<nn::Module> create_model(const std::string& name, const ModelOptions& options = {});

/// Registered names, sorted; `pattern` may contain '*' wildcards (fnmatch-style, like timm).
std::vector<std::string> list_models(const std::string& pattern = "*");

/// True if `name` is registered.
bool has_model(const std::string& name);

/// Adds a factory under `name`. Throws if the name is already taken. Returns true so it can
/// initialize a static (see KERN_REGISTER_MODEL).
bool register_model(const std::string& name, ModelFactory factory, ModelInfo info = {});

/// The ModelInfo `name` was registered with (throws for an unknown name, like create_model).
ModelInfo model_info(const std::string& name);

/// create_model(name, options) with width_mult = width / model_info(name).width: the model at
/// another width (its first stage's channels), for muP studies and coordinate checks. Throws
/// for a model without a width knob.
std::shared_ptr<nn::Module> create_model_at_width(const std::string& name, int64_t width,
                                                  ModelOptions options = {});

}  // namespace kern::models

#define KERN_MODELS_CONCAT_INNER(a, b) a##b
#define KERN_MODELS_CONCAT(a, b) KERN_MODELS_CONCAT_INNER(a, b)
/// At namespace scope in a family's .cpp:
///   KERN_REGISTER_MODEL("inception_next_atto", inception_next_atto);  // any callable ModelOptions -> shared_ptr<Module-derived>
#define KERN_REGISTER_MODEL(name, ...)                                           \
  [[maybe_unused]] static const bool KERN_MODELS_CONCAT(kern_model_registered_, __LINE__) = \
      ::kern::models::register_model(name, __VA_ARGS__)
