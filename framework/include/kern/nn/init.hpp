#pragma once
// Parameter initializers with PyTorch's formulas (torch.nn.init). Each fills its tensor in
// place under NoGradGuard (so it works on parameters that require grad), draws from `gen`
// (kern::default_generator() when null) and returns the same tensor handle. Any strides
// are fine (a narrow() of a parameter initializes that slice). An empty tensor is left as is.
//
// Fans of a weight w: [out, in, k...] (Linear [out, in], Conv2d OIHW [out, in/groups, kH, kW]):
//   fan_in = in * prod(k), fan_out = out * prod(k).
#include <kern/generator.hpp>
#include <kern/tensor.hpp>

#include <optional>
#include <string_view>

namespace kern::nn::init {

struct Fans {
  int64_t fan_in = 0;
  int64_t fan_out = 0;
};
/// Fans of a tensor of >= 2 dims (throws for fewer, like PyTorch).
Fans calculate_fan_in_and_fan_out(const Tensor& t);

/// The recommended gain for a nonlinearity, as torch.nn.init.calculate_gain:
/// "linear", "conv1d/2d/3d", "conv_transpose1d/2d/3d", "sigmoid" -> 1; "tanh" -> 5/3;
/// "relu" -> sqrt(2); "leaky_relu" -> sqrt(2 / (1 + slope^2)) (slope = param, default 0.01);
/// "selu" -> 3/4. Anything else throws.
double calculate_gain(std::string_view nonlinearity, std::optional<double> param = std::nullopt);

/// U(a, b).
Tensor uniform_(const Tensor& t, double a = 0.0, double b = 1.0, Generator* gen = nullptr);
/// N(mean, std^2).
Tensor normal_(const Tensor& t, double mean = 0.0, double std = 1.0, Generator* gen = nullptr);
/// N(mean, std^2) truncated to [a, b] (absolute bounds, as PyTorch), by inverse-CDF sampling.
Tensor trunc_normal_(const Tensor& t, double mean = 0.0, double std = 1.0, double a = -2.0,
                     double b = 2.0, Generator* gen = nullptr);
Tensor constant_(const Tensor& t, double value);
Tensor zeros_(const Tensor& t);
Tensor ones_(const Tensor& t);

/// U(-bound, bound) with bound = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a),
/// fan = fan_in or fan_out by `mode` ("fan_in" | "fan_out"). Linear/Conv2d defaults use
/// a = sqrt(5), giving bound = 1 / sqrt(fan_in).
Tensor kaiming_uniform_(const Tensor& t, double a = 0.0, std::string_view mode = "fan_in",
                        std::string_view nonlinearity = "leaky_relu", Generator* gen = nullptr);
/// N(0, std^2) with std = gain / sqrt(fan).
Tensor kaiming_normal_(const Tensor& t, double a = 0.0, std::string_view mode = "fan_in",
                       std::string_view nonlinearity = "leaky_relu", Generator* gen = nullptr);
/// U(-bound, bound) with bound = gain * sqrt(6 / (fan_in + fan_out)).
Tensor xavier_uniform_(const Tensor& t, double gain = 1.0, Generator* gen = nullptr);
/// N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out)).
Tensor xavier_normal_(const Tensor& t, double gain = 1.0, Generator* gen = nullptr);

}  // namespace kern::nn::init
