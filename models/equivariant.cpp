// p4 / p4m group-equivariant convolutions (Cohen & Welling 2016): the point group, lifting and
// group convolutions (filter banks built from the base weight with differentiable ops), group
// pooling, group batch norm and the P4CNN classifier. Conventions: see equivariant.hpp.
#include <kern/models/equivariant.hpp>

#include <kern/error.hpp>
#include <kern/ops.hpp>

#include <fmt/format.h>

#include <cmath>

namespace kern::models {
namespace {

std::string py_bool(bool b) { return b ? "True" : "False"; }

// Validates the options shared by both convolutions; `who` names the layer in errors.
void check_conv_options(const GroupConvOptions& o, const char* who) {
  KERN_CHECK(o.in_channels() >= 1 && o.out_channels() >= 1, who,
             ": in_channels and out_channels must be >= 1, got in_channels = ", o.in_channels(),
             ", out_channels = ", o.out_channels());
  KERN_CHECK(o.kernel_size() >= 1, who, ": kernel_size must be >= 1, got ", o.kernel_size());
  KERN_CHECK(!o.padding_same() || o.kernel_size() % 2 == 1, who,
             ": padding 'same' needs an odd kernel_size, got ", o.kernel_size());
  KERN_CHECK(o.padding() >= 0, who, ": padding must be >= 0, got ", o.padding());
}

// The per-channel bias shared over the |G| maps of a channel, as conv2d's [C_out * |G|] bias.
Tensor expand_bias(const Tensor& bias, int64_t order) {
  if (!bias.defined()) return {};
  const int64_t c = bias.size(0);
  return bias.unsqueeze(1).expand({c, order}).reshape({c * order});
}

// The PyTorch Conv2d default init over the weight's own shape (fan_in = prod(shape[1:])).
void init_conv(const Tensor& weight, const Tensor& bias, Generator* gen) {
  nn::init::kaiming_uniform_(weight, std::sqrt(5.0), "fan_in", "leaky_relu", gen);
  if (bias.defined()) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(weight.numel() / weight.size(0)));
    nn::init::uniform_(bias, -bound, bound, gen);
  }
}

std::string conv_repr(const GroupConvOptions& o) {
  return fmt::format("{}, {}, kernel_size={}, group={}, padding={}, bias={}", o.in_channels(),
                     o.out_channels(), o.kernel_size(), o.group(), o.padding(), py_bool(o.bias()));
}

}  // namespace

// ---- the point group

PlaneGroup::PlaneGroup(const std::string& name, const std::string& field) : name_(name) {
  KERN_CHECK(name == "p4" || name == "p4m", field, ": unknown group '", name,
             "' (expected 'p4' or 'p4m')");
  order_ = name == "p4" ? 4 : 8;
}

int64_t PlaneGroup::mul(int64_t a, int64_t b) const {
  KERN_CHECK(a >= 0 && a < order_ && b >= 0 && b < order_, "PlaneGroup(", name_, ")::mul: elements ",
             a, " and ", b, " must be in [0, ", order_, ")");
  const int64_t m1 = a / 4, r1 = a % 4, m2 = b / 4, r2 = b % 4;
  // R^r1 M^m1 R^r2 M^m2 = R^(r1 + (-1)^m1 r2) M^(m1 + m2), since M R = R^-1 M.
  const int64_t r = ((r1 + (m1 ? -r2 : r2)) % 4 + 4) % 4;
  return 4 * (m1 ^ m2) + r;
}

int64_t PlaneGroup::inv(int64_t g) const {
  KERN_CHECK(g >= 0 && g < order_, "PlaneGroup(", name_, ")::inv: element ", g,
             " must be in [0, ", order_, ")");
  return g >= 4 ? g : (4 - g) % 4;  // mirrors (R^r M) are involutions
}

Tensor PlaneGroup::transform_image(const Tensor& x, int64_t g) const {
  KERN_CHECK(g >= 0 && g < order_, "PlaneGroup(", name_, ")::transform_image: element ", g,
             " must be in [0, ", order_, ")");
  KERN_CHECK(x.dim() >= 2, "PlaneGroup(", name_,
             ")::transform_image: input must have at least 2 dims [..., H, W], got ", x.shape());
  Tensor y = g >= 4 ? flip(x, {-1}) : x;
  return g % 4 ? rot90(y, g % 4, {-2, -1}) : y;
}

Tensor PlaneGroup::left_inverse_index(int64_t g) const {
  const int64_t gi = inv(g);
  std::vector<int64_t> idx(order_);
  for (int64_t h = 0; h < order_; ++h) idx[h] = mul(gi, h);
  return from_vector(idx, {order_});
}

Tensor PlaneGroup::transform_features(const Tensor& x, int64_t g) const {
  KERN_CHECK(x.dim() >= 3 && x.size(-3) == order_, "PlaneGroup(", name_,
             ")::transform_features: input must be [..., |G| = ", order_, ", H, W], got ", x.shape());
  return transform_image(index_select(x, x.dim() - 3, left_inverse_index(g)), g);
}

// ---- lifting convolution

LiftingConv2d::LiftingConv2d(const GroupConvOptions& options)
    : options_(options), group_(options.group(), "LiftingConv2d: group") {
  check_conv_options(options_, "LiftingConv2d");
  const int64_t k = options_.kernel_size();
  weight = register_parameter("weight", empty({options_.out_channels(), options_.in_channels(), k, k}));
  if (options_.bias()) bias = register_parameter("bias", empty({options_.out_channels()}));
  reset_parameters();
}

void LiftingConv2d::reset_parameters(Generator* gen) {
  init_conv(weight.tensor(), bias.tensor(), gen);
}

Tensor LiftingConv2d::filter_bank() const {
  std::vector<Tensor> ws;
  const Tensor w = weight();  // through the slot: parameterization multiplier included
  for (int64_t g = 0; g < group_.order(); ++g) ws.push_back(group_.transform_image(w, g));
  const int64_t k = options_.kernel_size();
  // [C_out, |G|, C_in, k, k] -> [C_out * |G|, C_in, k, k]
  return stack(ws, 1).reshape({options_.out_channels() * group_.order(), options_.in_channels(), k, k});
}

Tensor LiftingConv2d::forward(const Tensor& x) {
  const auto& o = options_;
  KERN_CHECK(x.dim() == 4, "LiftingConv2d(", group_.name(), "): input must be 4-D [N, C_in = ",
             o.in_channels(), ", H, W], got ", x.shape());
  KERN_CHECK(x.size(1) == o.in_channels(), "LiftingConv2d(", group_.name(), "): input ", x.shape(),
             " has ", x.size(1), " channels but in_channels = ", o.in_channels());
  Conv2dParams p;
  p.padding = {o.padding(), o.padding()};
  Tensor y = conv2d(x, filter_bank(), expand_bias(bias(), group_.order()), p);
  return y.reshape({y.size(0), o.out_channels(), group_.order(), y.size(2), y.size(3)});
}

std::string LiftingConv2d::extra_repr() const { return conv_repr(options_); }

// ---- group convolution

GroupConv2d::GroupConv2d(const GroupConvOptions& options)
    : options_(options), group_(options.group(), "GroupConv2d: group") {
  check_conv_options(options_, "GroupConv2d");
  const int64_t k = options_.kernel_size();
  weight = register_parameter(
      "weight", empty({options_.out_channels(), options_.in_channels(), group_.order(), k, k}));
  if (options_.bias()) bias = register_parameter("bias", empty({options_.out_channels()}));
  reset_parameters();
}

void GroupConv2d::reset_parameters(Generator* gen) {
  init_conv(weight.tensor(), bias.tensor(), gen);
}

Tensor GroupConv2d::filter_bank() const {
  const int64_t n = group_.order();
  const Tensor w = weight();  // through the slot: parameterization multiplier included
  std::vector<Tensor> ws;
  for (int64_t g = 0; g < n; ++g)  // [C_out, C_in, |G|, k, k]: axis h holds weight[.., g^-1 h]
    ws.push_back(group_.transform_image(index_select(w, 2, group_.left_inverse_index(g)), g));
  const int64_t k = options_.kernel_size();
  // [C_out, |G|, C_in, |G|, k, k] -> [C_out * |G|, C_in * |G|, k, k]
  return stack(ws, 1).reshape({options_.out_channels() * n, options_.in_channels() * n, k, k});
}

Tensor GroupConv2d::forward(const Tensor& x) {
  const auto& o = options_;
  const int64_t n = group_.order();
  KERN_CHECK(x.dim() == 5, "GroupConv2d(", group_.name(), "): input must be 5-D [N, C_in = ",
             o.in_channels(), ", |G| = ", n, ", H, W], got ", x.shape());
  KERN_CHECK(x.size(1) == o.in_channels(), "GroupConv2d(", group_.name(), "): input ", x.shape(),
             " has ", x.size(1), " channels but in_channels = ", o.in_channels());
  KERN_CHECK(x.size(2) == n, "GroupConv2d(", group_.name(), "): input ", x.shape(),
             " has group axis (dim 2) of size ", x.size(2), " but |G| = ", n, " for group ",
             group_.name());
  Conv2dParams p;
  p.padding = {o.padding(), o.padding()};
  Tensor xs = x.reshape({x.size(0), o.in_channels() * n, x.size(3), x.size(4)});
  Tensor y = conv2d(xs, filter_bank(), expand_bias(bias(), n), p);
  return y.reshape({y.size(0), o.out_channels(), n, y.size(2), y.size(3)});
}

std::string GroupConv2d::extra_repr() const { return conv_repr(options_); }

// ---- group pooling

Tensor group_pool(const Tensor& x, const std::string& mode) {
  KERN_CHECK(mode == "max" || mode == "mean", "group_pool: unknown mode '", mode,
             "' (expected 'max' or 'mean')");
  KERN_CHECK(x.dim() == 5, "group_pool: input must be 5-D [N, C, |G|, H, W], got ", x.shape());
  return mode == "max" ? max(x, 2).values : mean(x, {2});
}

GroupPool::GroupPool(const std::string& group, const std::string& mode)
    : group_(group, "GroupPool: group"), mode_(mode) {
  KERN_CHECK(mode == "max" || mode == "mean", "GroupPool: unknown mode '", mode,
             "' (expected 'max' or 'mean')");
}

Tensor GroupPool::forward(const Tensor& x) {
  KERN_CHECK(x.dim() == 5 && x.size(2) == group_.order(), "GroupPool(", group_.name(),
             "): input must be [N, C, |G| = ", group_.order(), ", H, W], got ", x.shape());
  return group_pool(x, mode_);
}

std::string GroupPool::extra_repr() const {
  return fmt::format("group={}, mode={}", group_.name(), mode_);
}

// ---- group batch norm

GroupBatchNorm::GroupBatchNorm(const nn::BatchNorm2dOptions& options, const std::string& group)
    : nn::BatchNorm2d(options), group_(group, "GroupBatchNorm: group") {}

Tensor GroupBatchNorm::forward(const Tensor& x) {
  const int64_t c = options().num_features(), n = group_.order();
  KERN_CHECK(x.dim() == 5, "GroupBatchNorm(", group_.name(), "): input must be 5-D [N, C = ", c,
             ", |G| = ", n, ", H, W], got ", x.shape());
  KERN_CHECK(x.size(1) == c, "GroupBatchNorm(", group_.name(), "): input ", x.shape(), " has ",
             x.size(1), " channels but num_features = ", c);
  KERN_CHECK(x.size(2) == n, "GroupBatchNorm(", group_.name(), "): input ", x.shape(),
             " has group axis (dim 2) of size ", x.size(2), " but |G| = ", n);
  // Per-channel statistics over N, |G|, H, W: fold the group axis into H.
  Tensor y = nn::BatchNorm2d::forward(x.reshape({x.size(0), c, n * x.size(3), x.size(4)}));
  return y.reshape(x.shape());
}

std::string GroupBatchNorm::extra_repr() const {
  return nn::BatchNorm2d::extra_repr() + ", group=" + group_.name();
}

// ---- P4CNN

namespace equivariant {

GroupConvBlock::GroupConvBlock(bool lifting, const GroupConvOptions& conv_options) {
  if (lifting)
    conv = register_module("conv", std::make_shared<LiftingConv2d>(conv_options));
  else
    conv = register_module("conv", std::make_shared<GroupConv2d>(conv_options));
  bn = register_module("bn", std::make_shared<GroupBatchNorm>(conv_options.out_channels(),
                                                              conv_options.group()));
  act = register_module("act", std::make_shared<nn::ReLU>());
}

Tensor GroupConvBlock::forward(const Tensor& x) { return (*act)((*bn)((*conv)(x))); }

}  // namespace equivariant

namespace {

void check_p4cnn_options(const P4CNNOptions& o) {
  PlaneGroup(o.group, "P4CNNOptions.group");
  KERN_CHECK(o.in_chans >= 1, "P4CNNOptions.in_chans must be >= 1, got ", o.in_chans);
  KERN_CHECK(o.channels >= 1, "P4CNNOptions.channels must be >= 1, got ", o.channels);
  KERN_CHECK(o.num_layers >= 1, "P4CNNOptions.num_layers must be >= 1, got ", o.num_layers);
  KERN_CHECK(o.kernel_size >= 1 && o.kernel_size % 2 == 1,
             "P4CNNOptions.kernel_size must be odd and >= 1 (padding 'same'), got ", o.kernel_size);
  KERN_CHECK(o.num_classes >= 0, "P4CNNOptions.num_classes must be >= 0, got ", o.num_classes);
  KERN_CHECK(o.group_pool == "max" || o.group_pool == "mean", "P4CNNOptions.group_pool: unknown mode '",
             o.group_pool, "' (expected 'max' or 'mean')");
  KERN_CHECK(o.max_pool_after >= -1 && o.max_pool_after < o.num_layers,
             "P4CNNOptions.max_pool_after must be -1 or a layer index in [0, ", o.num_layers,
             "), got ", o.max_pool_after);
  KERN_CHECK(o.drop_rate >= 0.0 && o.drop_rate < 1.0, "P4CNNOptions.drop_rate must be in [0, 1), got ",
             o.drop_rate);
}

}  // namespace

P4CNN::P4CNN(const P4CNNOptions& options) : options_(options) {
  check_p4cnn_options(options_);
  const auto& o = options_;
  blocks = register_module("blocks", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    auto conv_options = GroupConvOptions(i == 0 ? o.in_chans : o.channels, o.channels, o.kernel_size)
                            .group(o.group)
                            .padding(nn::kSame)
                            .bias(false);  // the batch norm's bias follows
    blocks->push_back(std::make_shared<equivariant::GroupConvBlock>(i == 0, conv_options));
  }
  pool = register_module("pool", std::make_shared<GroupPool>(o.group, o.group_pool));
  drop = register_module("drop", std::make_shared<nn::Dropout>(o.drop_rate));
  if (o.num_classes > 0)
    head = register_module("head", std::make_shared<nn::Linear>(o.channels, o.num_classes));
  else
    head = register_module("head", std::make_shared<nn::Identity>());
}

Tensor P4CNN::forward_features(const Tensor& x) {
  const auto& o = options_;
  KERN_CHECK(x.dim() == 4 && x.size(1) == o.in_chans, "P4CNN(", o.group,
             "): input must be [N, in_chans = ", o.in_chans, ", H, W], got ", x.shape());
  Tensor y = x;
  int64_t i = 0;
  for (const auto& block : *blocks) {
    y = (*block)(y);
    if (i++ == o.max_pool_after) {
      // 2x2 max pool of every map: [N, C, |G|, H, W] -> [N, C, |G|, H/2, W/2].
      const Shape s = y.shape();
      Pool2dParams p;
      p.kernel = {2, 2};
      Tensor z = max_pool2d(y.reshape({s[0], s[1] * s[2], s[3], s[4]}), p);
      y = z.reshape({s[0], s[1], s[2], z.size(2), z.size(3)});
    }
  }
  return y;
}

Tensor P4CNN::forward_head(const Tensor& x) {
  Tensor y = (*pool)(x).mean({2, 3});  // invariant: [N, channels]
  return (*head)((*drop)(y));
}

namespace {

P4CNNOptions from_model_options(P4CNNOptions o, const ModelOptions& m, const char* name) {
  KERN_CHECK(m.drop_path_rate == 0.0, name, ": drop_path_rate = ", m.drop_path_rate,
             " is not supported (the network has no residual branches)");
  o.num_classes = m.num_classes;
  o.in_chans = m.in_chans;
  o.drop_rate = m.drop_rate;
  o.channels = scale_width(o.channels, m.width_mult);
  return o;
}

}  // namespace

std::shared_ptr<P4CNN> p4cnn(const ModelOptions& o) {
  return std::make_shared<P4CNN>(from_model_options(P4CNNOptions{.group = "p4"}, o, "p4cnn"));
}

std::shared_ptr<P4CNN> p4mcnn(const ModelOptions& o) {
  return std::make_shared<P4CNN>(
      from_model_options(P4CNNOptions{.group = "p4m", .channels = 7}, o, "p4mcnn"));
}

KERN_REGISTER_MODEL("p4cnn", p4cnn, ModelInfo{.width = 10});
KERN_REGISTER_MODEL("p4mcnn", p4mcnn, ModelInfo{.width = 7});

}  // namespace kern::models
