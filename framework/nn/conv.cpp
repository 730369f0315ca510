// Conv2d.
#include <kern/nn/conv.hpp>
#include <kern/nn/init.hpp>
#include <kern/ops/shape_ops.hpp>

#include <cmath>

namespace kern::nn {

namespace {
std::string pair_str(std::array<int64_t, 2> v) { return fmt::format("({}, {})", v[0], v[1]); }
}  // namespace

Conv2d::Conv2d(const Conv2dOptions& o) : options_(o) {
  const auto k = o.kernel_size(), s = o.stride(), p = o.padding(), d = o.dilation();
  KERN_CHECK(o.in_channels() > 0 && o.out_channels() > 0, "Conv2d: in_channels and out_channels ",
             "must be > 0, got ", o.in_channels(), " and ", o.out_channels());
  KERN_CHECK(o.groups() > 0 && o.in_channels() % o.groups() == 0 &&
                 o.out_channels() % o.groups() == 0,
             "Conv2d: groups = ", o.groups(), " must be > 0 and divide in_channels = ",
             o.in_channels(), " and out_channels = ", o.out_channels());
  KERN_CHECK(k[0] > 0 && k[1] > 0 && s[0] > 0 && s[1] > 0 && d[0] > 0 && d[1] > 0,
             "Conv2d: kernel_size ", pair_str(k), ", stride ", pair_str(s), " and dilation ",
             pair_str(d), " must be > 0");
  KERN_CHECK(p[0] >= 0 && p[1] >= 0, "Conv2d: padding ", pair_str(p), " must be >= 0");
  if (o.padding_same()) {
    KERN_CHECK(s[0] == 1 && s[1] == 1, "Conv2d: padding 'same' needs stride 1, got stride ",
               pair_str(s));
    // PyTorch: total = dilation * (k - 1); before = total / 2; after = total - before.
    for (int i = 0; i < 2; ++i) {
      const int64_t total = d[i] * (k[i] - 1);
      pad_before_[i] = total / 2;
      pad_after_[i] = total - pad_before_[i];
    }
  }
  weight = register_parameter(
      "weight", empty({o.out_channels(), o.in_channels() / o.groups(), k[0], k[1]}));
  if (o.bias()) bias = register_parameter("bias", empty({o.out_channels()}));
  reset_parameters();
}

void Conv2d::reset_parameters(Generator* gen) {
  init::kaiming_uniform_(weight.tensor(), std::sqrt(5.0), "fan_in", "leaky_relu", gen);
  if (bias.defined()) {
    const int64_t fan_in = init::calculate_fan_in_and_fan_out(weight.tensor()).fan_in;
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    init::uniform_(bias.tensor(), -bound, bound, gen);
  }
}

Conv2dParams Conv2d::params() const {
  Conv2dParams p;
  p.stride = options_.stride();
  p.padding = options_.padding_same() ? pad_before_ : options_.padding();
  p.dilation = options_.dilation();
  p.groups = options_.groups();
  return p;
}

Tensor Conv2d::forward(const Tensor& x) {
  KERN_CHECK(x.dim() == 4 && x.size(1) == options_.in_channels(), "Conv2d(",
             options_.in_channels(), ", ", options_.out_channels(), ", kernel_size=",
             pair_str(options_.kernel_size()), "): expected input [N, ", options_.in_channels(),
             ", H, W], got ", x.shape(), " ", x.dtype());
  Tensor in = x;
  if (pad_after_[0] != pad_before_[0] || pad_after_[1] != pad_before_[1]) {
    // Odd total padding: conv pads symmetrically by pad_before_, the extra row/column goes
    // after (bottom/right) by an explicit pad. pad order: W before/after, H before/after.
    in = pad(x, {0, pad_after_[1] - pad_before_[1], 0, pad_after_[0] - pad_before_[0]});
  }
  return conv2d(in, weight(), bias(), params());
}

std::string Conv2d::extra_repr() const {
  const auto& o = options_;
  std::string s = fmt::format("{}, {}, kernel_size={}, stride={}", o.in_channels(),
                              o.out_channels(), pair_str(o.kernel_size()), pair_str(o.stride()));
  if (o.padding_same()) s += ", padding=same";
  else if (o.padding() != std::array<int64_t, 2>{0, 0}) s += ", padding=" + pair_str(o.padding());
  if (o.dilation() != std::array<int64_t, 2>{1, 1}) s += ", dilation=" + pair_str(o.dilation());
  if (o.groups() != 1) s += fmt::format(", groups={}", o.groups());
  if (!bias.defined()) s += ", bias=False";
  return s;
}

}  // namespace kern::nn
