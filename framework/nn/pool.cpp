// MaxPool2d, AvgPool2d, AdaptiveAvgPool2d: wrappers over the pooling ops.
#include <kern/nn/pool.hpp>

namespace kern::nn {

namespace {

std::string pair_str(std::array<int64_t, 2> v) {
  return v[0] == v[1] ? fmt::format("{}", v[0]) : fmt::format("({}, {})", v[0], v[1]);
}

template <class O>
void check_pool_options(const char* name, const O& o) {
  const auto k = o.kernel_size(), s = o.stride(), p = o.padding();
  KERN_CHECK(k[0] > 0 && k[1] > 0 && s[0] > 0 && s[1] > 0, name, ": kernel_size ", pair_str(k),
             " and stride ", pair_str(s), " must be > 0");
  KERN_CHECK(p[0] >= 0 && p[1] >= 0 && 2 * p[0] <= k[0] && 2 * p[1] <= k[1], name, ": padding ",
             pair_str(p), " must be >= 0 and at most half the kernel size ", pair_str(k));
}

void check_input(const char* name, const Tensor& x) {
  KERN_CHECK(x.dim() == 4, name, ": expected input [N, C, H, W], got ", x.shape());
}

}  // namespace

MaxPool2d::MaxPool2d(const MaxPool2dOptions& options) : options_(options) {
  check_pool_options("MaxPool2d", options);
}

Tensor MaxPool2d::forward(const Tensor& x) {
  check_input("MaxPool2d", x);
  return max_pool2d(x, options_.params());
}

std::string MaxPool2d::extra_repr() const {
  return fmt::format("kernel_size={}, stride={}, padding={}, dilation=1, ceil_mode={}",
                     pair_str(options_.kernel_size()), pair_str(options_.stride()),
                     pair_str(options_.padding()), options_.ceil_mode() ? "True" : "False");
}

AvgPool2d::AvgPool2d(const AvgPool2dOptions& options) : options_(options) {
  check_pool_options("AvgPool2d", options);
}

Tensor AvgPool2d::forward(const Tensor& x) {
  check_input("AvgPool2d", x);
  return avg_pool2d(x, options_.params());
}

std::string AvgPool2d::extra_repr() const {
  return fmt::format("kernel_size={}, stride={}, padding={}, ceil_mode={}, count_include_pad={}",
                     pair_str(options_.kernel_size()), pair_str(options_.stride()),
                     pair_str(options_.padding()), options_.ceil_mode() ? "True" : "False",
                     options_.count_include_pad() ? "True" : "False");
}

AdaptiveAvgPool2d::AdaptiveAvgPool2d(const AdaptiveAvgPool2dOptions& options) : options_(options) {
  const auto o = options.output_size();
  KERN_CHECK(o[0] > 0 && o[1] > 0, "AdaptiveAvgPool2d: output_size ", pair_str(o),
             " must be > 0");
}

Tensor AdaptiveAvgPool2d::forward(const Tensor& x) {
  check_input("AdaptiveAvgPool2d", x);
  return adaptive_avg_pool2d(x, options_.output_size());
}

std::string AdaptiveAvgPool2d::extra_repr() const {
  return fmt::format("output_size={}", pair_str(options_.output_size()));
}

}  // namespace kern::nn
