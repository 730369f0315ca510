// Parameter slots: every module reads its parameters through nn::Param handles, so a
// parameterization's forward multiplier reaches modules that never mention it (zoo layers,
// user-written modules), and functional_call substitutes through the same slots.
// Expected values are computed by hand from the definitions (NTK: W_eff = W / sqrt(fan_in)).
#include <catch2/catch.hpp>

#include <kern/kern.hpp>
#include <kern/models/equivariant.hpp>
#include <kern/nn/functional_call.hpp>
#include <kern/param/param.hpp>

#include <cmath>

namespace nn = kern::nn;
namespace param = kern::param;
namespace models = kern::models;
using kern::Tensor;

namespace {

// A user-written layer with a raw matrix and a gain: y = (x W^T) * g. It never mentions
// parameterizations.
struct UserLayer : nn::Module {
  UserLayer(int64_t in, int64_t out) {
    w = register_parameter("w", kern::randn({out, in}));
    g = register_parameter("g", kern::ones({out}));
  }
  Tensor forward(const Tensor& x) override { return kern::matmul(x, w().t()) * g(); }
  std::string name() const override { return "UserLayer"; }
  nn::Param w, g;
};

}  // namespace

TEST_CASE("slots: NTK multiplies a user-written module's matrix by 1/sqrt(fan_in)", "[param][slots]") {
  kern::manual_seed(3);
  auto net = std::make_shared<nn::Sequential>(nn::Linear(5, 12), nn::Tanh(),
                                              std::make_shared<UserLayer>(12, 7));
  net->to(kern::DType::Float64);
  param::apply(*net, param::Preset::ntk());
  auto user = net->at<UserLayer>(2);
  REQUIRE(user->w.multiplier() == Approx(1.0 / std::sqrt(12.0)).epsilon(1e-15));
  REQUIRE(user->g.multiplier() == 1.0);  // a gain keeps multiplier 1

  // By hand: h = tanh(x W0^T / sqrt(5) + b0), y = (h W^T / sqrt(12)) * g.
  const Tensor x = kern::randn({4, 5}, kern::DType::Float64);
  auto lin = net->at<nn::Linear>(0);
  const Tensor h = kern::tanh(kern::matmul(x, lin->weight.tensor().t()) / std::sqrt(5.0) +
                              lin->bias.tensor());
  const Tensor want = kern::matmul(h, user->w.tensor().t()) / std::sqrt(12.0) * user->g.tensor();
  CHECK(kern::max_abs_diff((*net)(x), want) < 1e-12);

  // The gradient w.r.t. the raw parameter carries the multiplier (chain rule through W / sqrt(n)).
  net->zero_grad();
  kern::sum((*net)(x)).backward();
  const Tensor gw = kern::matmul((user->g.tensor() / std::sqrt(12.0)).reshape({7, 1}).expand({7, 4}),
                                 h);  // d sum(y) / dW[o, i] = g_o / sqrt(12) * sum_n h[n, i]
  CHECK(kern::max_abs_diff(user->w.tensor().grad(), gw) < 1e-12);

  // Clearing the records restores the plain forward.
  param::clear(*net);
  CHECK(user->w.multiplier() == 1.0);
  CHECK(kern::max_abs_diff((*user)(h), kern::matmul(h, user->w.tensor().t()) * user->g.tensor()) < 1e-12);
}

TEST_CASE("slots: NTK on p4cnn scales every group convolution by 1/sqrt(fan_in)", "[param][slots][equivariant]") {
  kern::manual_seed(5);
  models::P4CNNOptions o;
  o.channels = 3;
  o.num_layers = 3;
  o.num_classes = 4;
  auto net = std::make_shared<models::P4CNN>(o);
  net->to(kern::DType::Float64);
  net->eval();
  const Tensor x = kern::randn({2, 1, 7, 7}, kern::DType::Float64);

  // Plain forwards of each conv with the raw weights (no records yet), kept for comparison.
  auto lift = std::dynamic_pointer_cast<models::LiftingConv2d>(
      net->get_submodule("blocks.0.conv"));
  auto gconv = std::dynamic_pointer_cast<models::GroupConv2d>(net->get_submodule("blocks.1.conv"));
  REQUIRE(lift);
  REQUIRE(gconv);
  param::apply(*net, param::Preset::ntk());

  // fan_in by hand: lifting [C_out, C_in, k, k] -> C_in * k * k; group conv
  // [C_out, C_in, |G|, k, k] -> C_in * |G| * k * k.
  const double lift_fan = 1 * 3 * 3, group_fan = 3 * 4 * 3 * 3;
  CHECK(lift->weight.multiplier() == Approx(1.0 / std::sqrt(lift_fan)).epsilon(1e-15));
  CHECK(gconv->weight.multiplier() == Approx(1.0 / std::sqrt(group_fan)).epsilon(1e-15));

  // The layer outputs: the NTK forward is the raw-weight forward divided by sqrt(fan_in) (no
  // bias in P4CNN's convs). The raw-weight forward is computed by a twin layer holding the
  // same raw tensors and no records.
  models::LiftingConv2d lift_raw(lift->options());
  models::GroupConv2d gconv_raw(gconv->options());
  lift_raw.to(kern::DType::Float64);
  gconv_raw.to(kern::DType::Float64);
  {
    kern::NoGradGuard ng;
    lift_raw.weight.tensor().copy_(lift->weight.tensor());
    gconv_raw.weight.tensor().copy_(gconv->weight.tensor());
  }
  const Tensor y1 = (*lift)(x);
  CHECK(kern::max_abs_diff(y1, lift_raw(x) / std::sqrt(lift_fan)) < 1e-12);
  CHECK(kern::max_abs_diff((*gconv)(y1), gconv_raw(y1) / std::sqrt(group_fan)) < 1e-12);

  // Activations stay O(1) at init under NTK (unit-variance weights would otherwise blow up by
  // sqrt(fan_in) per layer): the lifting output's std is about that of the input.
  const double s = kern::std(y1).item<double>();
  CHECK(s > 0.3);
  CHECK(s < 3.0);
}

TEST_CASE("slots: functional_call backward accumulates into the substitutes", "[nn][functional_call][slots]") {
  kern::manual_seed(8);
  nn::Linear lin(3, 2);
  lin.to(kern::DType::Float64);
  const Tensor x = kern::randn({4, 3}, kern::DType::Float64);
  Tensor w = kern::randn({2, 3}, kern::DType::Float64).requires_grad_();
  Tensor b = kern::randn({2}, kern::DType::Float64).requires_grad_();
  nn::functional_call(lin, {{"weight", w}, {"bias", b}}, [&](nn::Module& m) {
    Tensor loss = kern::sum(m(x));
    loss.backward();  // inside the call
    return loss;
  });
  REQUIRE(w.grad().defined());
  REQUIRE(b.grad().defined());
  // d sum(x W^T + b) / dW[o, i] = sum_n x[n, i]; / db = N.
  CHECK(kern::max_abs_diff(w.grad(), kern::sum(x, {0}).reshape({1, 3}).expand({2, 3})) < 1e-12);
  CHECK(kern::max_abs_diff(b.grad(), kern::full({2}, 4.0, kern::DType::Float64)) < 1e-12);
  CHECK_FALSE(lin.weight.tensor().grad().defined());  // the module's own parameter got nothing
  // The slot holds the module's own tensor again.
  CHECK(lin.weight.tensor().impl_ptr() != w.impl_ptr());
  CHECK(lin.named_parameters()[0].second.impl_ptr() == lin.weight.tensor().impl_ptr());
}

TEST_CASE("slots: functional_call nests and restores the outer substitutes", "[nn][functional_call][slots]") {
  kern::manual_seed(9);
  nn::Linear lin(2, 2);
  const Tensor own = lin.weight.tensor();
  const Tensor w1 = kern::ones({2, 2}), w2 = kern::full({2, 2}, 2.0);
  nn::functional_call(lin, {{"weight", w1}}, [&](nn::Module&) {
    CHECK(lin.weight.tensor().impl_ptr() == w1.impl_ptr());
    nn::functional_call(lin, {{"weight", w2}}, [&](nn::Module&) {
      CHECK(lin.weight.tensor().impl_ptr() == w2.impl_ptr());
      CHECK(lin.get_parameter("weight").impl_ptr() == w2.impl_ptr());
      return Tensor();
    });
    CHECK(lin.weight.tensor().impl_ptr() == w1.impl_ptr());  // the outer substitute is back
    return Tensor();
  });
  CHECK(lin.weight.tensor().impl_ptr() == own.impl_ptr());
}

TEST_CASE("slots: handles survive re-registration and module moves", "[nn][slots]") {
  nn::Module m;
  nn::Param p = m.register_parameter("p", kern::zeros({3}));
  m.register_parameter("p", kern::ones({3}));  // replaces the slot's tensor in place
  CHECK(p.tensor().sum().item() == 3.0);
  nn::Linear a(2, 3);
  nn::Param w = a.weight;
  nn::Linear b(std::move(a));
  CHECK(b.weight.tensor().impl_ptr() == w.tensor().impl_ptr());
  CHECK(b.named_parameters()[0].second.impl_ptr() == w.tensor().impl_ptr());
  // An unregistered handle is undefined and says so when its shape is asked for.
  nn::Param none;
  CHECK_FALSE(none.defined());
  CHECK_FALSE(none().defined());
  CHECK_THROWS_WITH(none.shape(), Catch::Contains("unregistered"));
}
