// bf16 autocast (kern/autocast.hpp): products under autocast against float64 references with
// a rigorous bf16 error bound, float32 master weights and gradients, a Hessian-vector product
// through an autocast region, ops outside the list staying float32, every zoo family running
// forward + backward, the guard's scoping, and the saved-activation saving.
//
// Tolerance. bf16 keeps 8 significant bits: rounding a float32 x to bf16 gives x (1 + d) with
// |d| <= u = 2^-8. A product of two rounded operands is off by at most (2u + u^2) |x w|, and
// float32 accumulation over K terms adds at most K 2^-24 sum |x w|. So for y = sum_k x_k w_k
//   |y_autocast - y_exact| <= (2u + u^2 + K 2^-24) * sum_k |x_k| |w_k|,
// which the tests evaluate in float64 as (|x| @ |w|) (or the convolution of |x| and |w|).
// Gradients of bf16 inputs are rounded to bf16 once more before the conversion back to float32
// (one more u). Typical errors are far below the bound (random signs), but a silent float32
// fallback is caught separately: it would be ~1000x closer to float32 than bf16 allows.
#include <catch2/catch.hpp>
#include <kern/autocast.hpp>
#include <kern/kern.hpp>
#include <kern/models/models.hpp>
#include <kern/models/reparam.hpp>

#include <cmath>
#include <functional>
#include <unordered_set>

using namespace kern;

namespace {

const DType f32 = DType::Float32, f64 = DType::Float64, b16 = DType::BFloat16;
constexpr double u = 1.0 / 256.0;  // bf16 unit roundoff, 2^-8

Tensor rnd(const Shape& s, uint64_t seed, DType dt = f32) {
  Generator g(seed);
  return randn(s, f64, &g).to(dt);
}

// max over elements of |got - want| / bound (<= 1 passes).
double bound_ratio(const Tensor& got, const Tensor& want, const Tensor& bound) {
  NoGradGuard ng;
  const Tensor r = abs(got.to(f64) - want) / (bound + 1e-30);
  return max(r).item<double>();
}

// Is an op named `name` reachable in the graph behind t?
bool graph_has(const Tensor& t, const std::string& name) {
  if (!t.grad_fn()) return false;
  std::vector<const Node*> stack{t.grad_fn().get()};
  std::unordered_set<const Node*> seen;
  while (!stack.empty()) {
    const Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    if (n->name() == name) return true;
    for (const auto& in : n->inputs())
      if (in.defined() && in.grad_fn()) stack.push_back(in.grad_fn().get());
  }
  return false;
}

// Did a product run under autocast in the graph behind t? (linear records one fused node,
// mm / bmm / conv2d record the conversions of their operands.)
bool ran_bf16(const Tensor& t) { return graph_has(t, "autocast_to_bfloat16") || graph_has(t, "linear_autocast"); }

Conv2dParams cp(int64_t stride, int64_t padding, int64_t groups, int64_t dilation = 1) {
  Conv2dParams p;
  p.stride = {stride, stride};
  p.padding = {padding, padding};
  p.dilation = {dilation, dilation};
  p.groups = groups;
  return p;
}

}  // namespace

TEST_CASE("autocast: oneDNN dispatches bf16 kernels on this CPU", "[autocast]") {
  const std::string isa = autocast_isa();
  INFO(isa);
  REQUIRE(isa.find("matmul") != std::string::npos);
  REQUIRE(isa.find("conv") != std::string::npos);
  // The machines this project runs on have AVX512-BF16; on an older CPU oneDNN emulates bf16
  // (results stay correct, tests below still pass) and this is the line that says so.
  REQUIRE((isa.find("bf16") != std::string::npos || isa.find("amx") != std::string::npos));
}

TEST_CASE("autocast: linear and matmul match float64 within the bf16 bound and are really bf16",
          "[autocast]") {
  const int64_t M = 37, K = 300, N = 29;
  const Tensor x = rnd({M, K}, 1), w = rnd({N, K}, 2), b = rnd({N}, 3);
  const Tensor x64 = x.to(f64), w64 = w.to(f64), b64 = b.to(f64);
  const Tensor want = linear(x64, w64, b64);
  const Tensor bound = matmul(abs(x64), abs(w64).t()) * (2 * u + u * u + K * std::ldexp(1.0, -24)) + 1e-12;
  Tensor y, ymm, y3;
  {
    AutocastGuard guard(b16);
    y = linear(x, w, b);
    ymm = matmul(x, w.t());
    y3 = matmul(reshape(x, {1, M, K}), reshape(w.t(), {1, K, N}));  // the bmm path
  }
  REQUIRE(y.dtype() == f32);
  REQUIRE(ymm.dtype() == f32);
  CHECK(bound_ratio(y, want, bound) <= 1.0);
  CHECK(bound_ratio(ymm, want - b64, bound) <= 1.0);
  CHECK(bound_ratio(reshape(y3, {M, N}), want - b64, bound) <= 1.0);
  // Exactly a bf16 product: float64 of the bf16-rounded operands agrees to float32
  // accumulation error, while the float32 result is off by a bf16-sized amount.
  const Tensor exact_bf = matmul(x.to(b16).to(f64), w.to(b16).to(f64).t());
  const Tensor acc = matmul(abs(x64), abs(w64).t()) * (K * std::ldexp(1.0, -24)) + 1e-12;
  CHECK(bound_ratio(ymm, exact_bf, acc) <= 1.0);
  const double scale = max(abs(want)).item<double>();
  CHECK(max_abs_diff(ymm, matmul(x, w.t())) > 1e-4 * scale);
}

TEST_CASE("autocast: conv2d dense, grouped, depthwise and strided match float64", "[autocast]") {
  struct Case {
    const char* name;
    Shape x, w;
    Conv2dParams p;
  };
  const std::vector<Case> cases = {
      {"dense 3x3", {2, 8, 11, 11}, {12, 8, 3, 3}, cp(1, 1, 1)},
      {"grouped 3x3 stride 2", {2, 8, 11, 11}, {12, 2, 3, 3}, cp(2, 1, 4)},
      {"depthwise 7x7", {2, 16, 12, 12}, {16, 1, 7, 7}, cp(1, 3, 16)},
      {"depthwise 5x5 dilated", {1, 8, 13, 13}, {8, 1, 5, 5}, cp(1, 4, 8, 2)},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    const Tensor x = rnd(c.x, 10), w = rnd(c.w, 11), b = rnd({c.w[0]}, 12);
    const int64_t K = c.w[1] * c.w[2] * c.w[3];
    const Tensor want = conv2d(x.to(f64), w.to(f64), b.to(f64), c.p);
    const Tensor bound = conv2d(abs(x.to(f64)), abs(w.to(f64)), {}, c.p) * (2 * u + u * u + K * std::ldexp(1.0, -24));
    Tensor y;
    {
      AutocastGuard guard(b16);
      y = conv2d(x, w, b, c.p);
    }
    REQUIRE(y.dtype() == f32);
    CHECK(bound_ratio(y, want, bound + 1e-12) <= 1.0);
    const Tensor exact_bf = conv2d(x.to(b16).to(f64), w.to(b16).to(f64), b.to(f64), c.p);
    const Tensor acc = conv2d(abs(x.to(f64)), abs(w.to(f64)), {}, c.p) * (K * std::ldexp(1.0, -24)) + 1e-12;
    CHECK(bound_ratio(y, exact_bf, acc + 1e-6 * abs(b.to(f64)).reshape({1, -1, 1, 1})) <= 1.0);
    CHECK(max_abs_diff(y, conv2d(x, w, b, c.p)) > 1e-4 * max(abs(want)).item<double>());
  }
}

TEST_CASE("autocast: parameters stay float32 and gradients are float32 and match float64", "[autocast]") {
  const int64_t B = 16, K = 64, N = 24;
  const Tensor x0 = rnd({B, K}, 20), r = rnd({B, N}, 21);
  Tensor w = rnd({N, K}, 22).requires_grad_(), b = rnd({N}, 23).requires_grad_();
  Tensor x = x0.clone().requires_grad_();
  {
    AutocastGuard guard(b16);
    Tensor loss = sum(linear(x, w, b) * r);
    loss.backward();
  }
  REQUIRE(w.dtype() == f32);
  REQUIRE(w.grad().dtype() == f32);
  REQUIRE(b.grad().dtype() == f32);
  REQUIRE(x.grad().dtype() == f32);
  // d/dW sum(r * (x W^T + b)) = r^T x, d/dx = r W, d/db = sum_rows r.
  const Tensor r64 = r.to(f64), x64 = x0.to(f64), w64 = w.detach().to(f64);
  const double tol = 3 * u + u * u + 64 * std::ldexp(1.0, -24);
  CHECK(bound_ratio(w.grad(), matmul(r64.t(), x64), matmul(abs(r64).t(), abs(x64)) * tol + 1e-12) <= 1.0);
  CHECK(bound_ratio(x.grad(), matmul(r64, w64), matmul(abs(r64), abs(w64)) * tol + 1e-12) <= 1.0);
  CHECK(max_abs_diff(b.grad().to(f64), sum(r64, {0})) < 1e-4);  // float32 sum of float32 grads

  // conv2d: gradients of a grouped convolution against the float64 reference path.
  const Conv2dParams p = cp(1, 1, 2);
  const Tensor cx0 = rnd({2, 4, 9, 9}, 24), cr = rnd({2, 6, 9, 9}, 25);
  Tensor cw = rnd({6, 2, 3, 3}, 26).requires_grad_();
  Tensor cx = cx0.clone().requires_grad_();
  {
    AutocastGuard guard(b16);
    sum(conv2d(cx, cw, {}, p) * cr).backward();
  }
  REQUIRE(cw.grad().dtype() == f32);
  REQUIRE(cx.grad().dtype() == f32);
  Tensor cx64 = cx0.to(f64).requires_grad_(), cw64 = cw.detach().to(f64).requires_grad_();
  sum(conv2d(cx64, cw64, {}, p) * cr.to(f64)).backward();
  // Bounds: the same sums over |.| (the gradients of sum(conv(|x|, |w|) * |r|)).
  Tensor ax = abs(cx0.to(f64)).requires_grad_(), aw = abs(cw.detach().to(f64)).requires_grad_();
  sum(conv2d(ax, aw, {}, p) * abs(cr.to(f64))).backward();
  const double ctol = 3 * u + u * u + 200 * std::ldexp(1.0, -24);
  CHECK(bound_ratio(cw.grad(), cw64.grad(), aw.grad() * ctol + 1e-12) <= 1.0);
  CHECK(bound_ratio(cx.grad(), cx64.grad(), ax.grad() * ctol + 1e-12) <= 1.0);
}

TEST_CASE("autocast: a Hessian-vector product through an autocast region matches float64", "[autocast]") {
  // f(W1, W2) = 0.5 |tanh(x W1^T) W2^T|^2; HVP = d/dW <grad f, v>.
  const Tensor x = rnd({8, 20}, 30);
  const Tensor w1_0 = rnd({16, 20}, 31) * 0.3, w2_0 = rnd({5, 16}, 32) * 0.3;
  const Tensor v1 = rnd({16, 20}, 33), v2 = rnd({5, 16}, 34);
  auto hvp_of = [&](DType dt, bool autocast) {
    Tensor w1 = w1_0.to(dt).requires_grad_(), w2 = w2_0.to(dt).requires_grad_();
    Tensor loss;
    {
      AutocastGuard guard(b16, autocast);
      const Tensor y = linear(tanh(linear(x.to(dt), w1)), w2);
      loss = sum(y * y) * 0.5;
      if (autocast) REQUIRE(ran_bf16(loss));
    }
    auto g = grad({loss}, {w1, w2}, {}, {.create_graph = true});
    const Tensor gv = sum(g[0] * v1.to(dt)) + sum(g[1] * v2.to(dt));
    auto h = grad({gv}, {w1, w2});
    return std::vector<Tensor>{h[0].to(f64), h[1].to(f64), g[0].detach().to(f64)};
  };
  const auto h64 = hvp_of(f64, false);
  const auto hbf = hvp_of(f32, true);
  REQUIRE(hbf[0].defined());
  for (int i = 0; i < 2; ++i) {
    const double scale = max(abs(h64[i])).item<double>();
    INFO("block " << i << " max |hvp| " << scale << " err " << max_abs_diff(hbf[i], h64[i]));
    // Several bf16 products in a row (forward, backward, double backward): a few percent.
    CHECK(max_abs_diff(hbf[i], h64[i]) <= 3e-2 * scale);
  }
  CHECK(max_abs_diff(hbf[2], h64[2]) <= 3e-2 * max(abs(h64[2])).item<double>());
}

TEST_CASE("autocast: second order through bf16 conv2d and matmul (the composite path)", "[autocast]") {
  // f(w, m) = 0.5 |tanh(conv2d(x, w)) flattened @ m|^2: conv2d and mm record bf16 conversions
  // of their operands and bf16 backward ops; the HVP differentiates those again.
  const Tensor x = rnd({2, 3, 7, 7}, 35);
  const Tensor w0 = rnd({4, 3, 3, 3}, 36) * 0.3, m0 = rnd({100, 6}, 37) * 0.1;
  const Tensor vw = rnd({4, 3, 3, 3}, 38), vm = rnd({100, 6}, 39);
  auto hvp_of = [&](DType dt, bool autocast) {
    Tensor w = w0.to(dt).requires_grad_(), m = m0.to(dt).requires_grad_();
    Tensor loss;
    {
      AutocastGuard guard(b16, autocast);
      const Tensor h = tanh(conv2d(x.to(dt), w, {}, cp(1, 1, 1)));  // [2, 4, 7, 7]
      const Tensor y = matmul(reshape(h, {2, 196}).narrow(1, 0, 100), m);
      loss = sum(y * y) * 0.5;
      if (autocast) REQUIRE(graph_has(loss, "autocast_to_bfloat16"));
    }
    auto g = grad({loss}, {w, m}, {}, {.create_graph = true});
    REQUIRE(g[0].dtype() == dt);
    auto h = grad({sum(g[0] * vw.to(dt)) + sum(g[1] * vm.to(dt))}, {w, m});
    return std::vector<Tensor>{h[0].to(f64), h[1].to(f64)};
  };
  const auto h64 = hvp_of(f64, false), hbf = hvp_of(f32, true), h32 = hvp_of(f32, false);
  for (int i = 0; i < 2; ++i) {
    const double scale = max(abs(h64[i])).item<double>();
    INFO("block " << i << " max |hvp| " << scale << " bf16 err " << max_abs_diff(hbf[i], h64[i]));
    CHECK(max_abs_diff(hbf[i], h64[i]) <= 3e-2 * scale);
    // ... and it is a bf16 result, not a float32 one.
    CHECK(max_abs_diff(hbf[i], h32[i]) > 1e-5 * scale);
  }
}

TEST_CASE("autocast: ops outside the list stay float32 and unchanged", "[autocast]") {
  const Tensor x = rnd({6, 10}, 40), gamma = rnd({10}, 41), beta = rnd({10}, 42);
  const Tensor t = randint(0, 10, {6});
  const Tensor ln = layer_norm(x, {10}, gamma, beta), sm = softmax(x, 1), ce = cross_entropy(x, t), s = sum(x);
  AutocastGuard guard(b16);
  const Tensor ln2 = layer_norm(x, {10}, gamma, beta), sm2 = softmax(x, 1), ce2 = cross_entropy(x, t), s2 = sum(x);
  for (const auto& [a, b] : std::vector<std::pair<Tensor, Tensor>>{{ln, ln2}, {sm, sm2}, {ce, ce2}, {s, s2}}) {
    REQUIRE(b.dtype() == f32);
    REQUIRE(max_abs_diff(a, b) == 0.0);
  }
  // float64 products are not autocast either (PyTorch's CPU autocast casts float32 only).
  const Tensor d = rnd({4, 4}, 43, f64);
  REQUIRE(mm(d, d).dtype() == f64);
  REQUIRE(max_abs_diff(mm(d, d), [&] {
            AutocastGuard off(f32);
            return mm(d, d);
          }()) == 0.0);
}

TEST_CASE("autocast: the guard nests, disables, restores after exceptions; outside nothing changes",
          "[autocast]") {
  const Tensor x = rnd({9, 33}, 50), w = rnd({7, 33}, 51);
  const Tensor before = linear(x, w, {});
  REQUIRE_FALSE(autocast_enabled());
  {
    AutocastGuard on(b16);
    REQUIRE(autocast_enabled());
    REQUIRE(autocast_dtype() == b16);
    {
      AutocastGuard off(f32);
      REQUIRE_FALSE(autocast_enabled());
      REQUIRE(max_abs_diff(linear(x, w, {}), before) == 0.0);
    }
    {
      AutocastGuard off(b16, false);  // torch.autocast(enabled=False)
      REQUIRE_FALSE(autocast_enabled());
    }
    REQUIRE(autocast_enabled());
    REQUIRE(max_abs_diff(linear(x, w, {}), before) > 0.0);
  }
  try {
    AutocastGuard on(b16);
    throw std::runtime_error("boom");
  } catch (const std::runtime_error&) {
  }
  REQUIRE_FALSE(autocast_enabled());
  REQUIRE_THROWS_WITH(AutocastGuard(DType::Float16), Catch::Contains("AutocastGuard") && Catch::Contains("float16"));
  REQUIRE_FALSE(autocast_enabled());
  // Bitwise the same float32 result (and graph) as before any guard existed.
  Tensor wg = w.clone().requires_grad_();
  const Tensor after = linear(x, wg, {});
  REQUIRE(max_abs_diff(after, before) == 0.0);
  REQUIRE_FALSE(ran_bf16(after));
  // bf16 products reject a mismatched bias dtype with an error naming the op.
  REQUIRE_THROWS_WITH(linear(x.to(b16), w.to(b16), rnd({7}, 52, f64)), Catch::Contains("linear: bias"));
}

TEST_CASE("autocast: every zoo family runs forward and backward", "[autocast][models]") {
  struct Zoo {
    std::string name;
    Shape input;
    models::ModelOptions o;
  };
  const std::vector<Zoo> zoo = {
      {"convnext_atto", {2, 3, 32, 32}, {.num_classes = 5, .width_mult = 0.25}},
      {"inception_next_atto", {2, 3, 32, 32}, {.num_classes = 5, .width_mult = 0.25}},
      {"replknet_31b", {2, 3, 32, 32}, {.num_classes = 5, .width_mult = 0.0625}},
      {"p4cnn", {2, 1, 28, 28}, {.num_classes = 5, .in_chans = 1, .width_mult = 0.25}},
      {"p4mcnn", {2, 1, 28, 28}, {.num_classes = 5, .in_chans = 1, .width_mult = 0.25}},
      {"affconv_gl2", {2, 1, 28, 28}, {.num_classes = 5, .in_chans = 1, .width_mult = 0.25}},
      {"longconv_small", {2, 32, 1}, {.num_classes = 5, .in_chans = 1, .width_mult = 0.125}},
      {"sgconv_small", {2, 32, 1}, {.num_classes = 5, .in_chans = 1, .width_mult = 0.125}},
  };
  for (const auto& z : zoo) {
    INFO(z.name);
    manual_seed(1);
    auto model = models::create_model(z.name, z.o);
    const Tensor x = rnd(z.input, 60);
    // Outputs compared in eval mode: train-mode BatchNorm over the 2 values per channel of
    // the last stages (tiny inputs) is ill-conditioned, any rounding flips its sign.
    model->eval();
    const Tensor y32 = [&] {
      NoGradGuard ng;
      return model->forward(x);
    }();
    Tensor y;
    {
      AutocastGuard guard(b16);
      y = model->forward(x);
    }
    REQUIRE(y.dtype() == f32);
    REQUIRE(ran_bf16(y));
    const double scale = max(abs(y32)).item<double>() + 1e-6;
    INFO("max |y| " << scale << ", |y_bf16 - y_f32| " << max_abs_diff(y, y32));
    CHECK(max_abs_diff(y, y32) <= 0.1 * scale);  // many bf16 layers in a row: a loose sanity bound
    model->train();
    {
      AutocastGuard guard(b16);
      y = model->forward(x);
    }
    REQUIRE(ran_bf16(y));
    sum(y * y).backward();
    for (auto& [pname, prm] : model->named_parameters()) {
      INFO(pname);
      REQUIRE(prm.dtype() == f32);
      if (!prm.grad().defined()) continue;
      REQUIRE(prm.grad().dtype() == f32);
      REQUIRE(std::isfinite(sum(abs(prm.grad())).item<double>()));
    }
  }
  // UniRepLKNet's dilated reparam block (depthwise dilated branches + BN).
  models::DilatedReparamBlock blk(models::DilatedReparamBlockOptions(8, 7));
  const Tensor x = rnd({2, 8, 12, 12}, 61).requires_grad_();
  Tensor y;
  {
    AutocastGuard guard(b16);
    y = blk.forward(x);
  }
  REQUIRE(ran_bf16(y));
  sum(y * y).backward();
  REQUIRE(x.grad().dtype() == f32);
  REQUIRE(std::isfinite(sum(abs(x.grad())).item<double>()));
}

TEST_CASE("autocast: an MLP's saved activations halve for the matmul inputs", "[autocast][memory]") {
  const int64_t B = 32, D = 784, H = 256, C = 10;
  const Tensor x = rnd({B, D}, 70);
  Tensor w1 = rnd({H, D}, 71).requires_grad_(), w2 = rnd({H, H}, 72).requires_grad_();
  Tensor w3 = rnd({C, H}, 73).requires_grad_(), b1 = rnd({H}, 74).requires_grad_();
  auto net = [&] { return linear(relu(linear(relu(linear(x, w1, b1)), w2)), w3); };
  const Tensor y32 = net();
  Tensor ybf;
  {
    AutocastGuard guard(b16);
    ybf = net();
  }
  const std::size_t s32 = memory::saved_activation_bytes(y32), sbf = memory::saved_activation_bytes(ybf);
  // float32: the linears keep x, h1, h2 (float32), the relus keep their inputs z1, z2.
  const std::size_t matmul_in32 = 4 * B * (D + 2 * H), relu_in = 4 * B * 2 * H;
  REQUIRE(s32 == matmul_in32 + relu_in);
  // autocast: the linears keep bf16 x, h1, h2 and the bf16 weight copies; the conversion
  // nodes keep nothing of h1, h2; the relus still keep float32 z1, z2 (relu is not autocast).
  const std::size_t matmul_inbf = 2 * B * (D + 2 * H), weights_bf = 2 * (H * D + H * H + C * H);
  REQUIRE(sbf == matmul_inbf + weights_bf + relu_in);
  REQUIRE(static_cast<double>(matmul_inbf) / matmul_in32 == 0.5);
  // The backward still works with the float32 activations dropped by the conversion nodes.
  sum(ybf * ybf).backward();
  REQUIRE(w1.grad().dtype() == f32);
  REQUIRE(memory::saved_activation_bytes(x) == 0);
}
