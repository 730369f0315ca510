// Post-accumulate-grad hooks and backward callbacks (kern/autograd.hpp): when they fire,
// what .grad holds then, and that grad() leaves them alone. Expected values are written out
// by hand (d/dw of sums and products), not taken from kern.
#include "gradcheck.hpp"

using namespace kern;

namespace {
Tensor f64(std::initializer_list<double> v) { return tensor(v, DType::Float64); }
}  // namespace

TEST_CASE("post-accumulate hook fires during backward, once per leaf, with the final .grad",
          "[autograd][hooks]") {
  Tensor x = f64({1.0, -2.0});
  Tensor w1 = f64({0.5, 3.0}).requires_grad_();
  Tensor w2 = f64({2.0, -1.0}).requires_grad_();
  // loss = sum(w2 * (w1 * x) * (w1 * x)): w2's edge runs first (it is consumed last),
  // w1 feeds two multiplications and must fire once, after both.
  Tensor h = w1 * x;
  Tensor loss = (w2 * h * h).sum();
  std::vector<std::string> order;
  bool w1_grad_missing_when_w2_fired = false;
  Tensor w2_seen, w1_seen;
  auto id2 = register_post_accumulate_grad_hook(w2, [&](const Tensor& t) {
    order.push_back("w2");
    w2_seen = t.grad().clone();
    w1_grad_missing_when_w2_fired = !w1.grad().defined();
  });
  auto id1 = register_post_accumulate_grad_hook(w1, [&](const Tensor& t) {
    order.push_back("w1");
    w1_seen = t.grad().clone();
  });
  int callbacks = 0;
  register_post_accumulate_grad_hook(w1, [&](const Tensor&) {
    queue_backward_callback([&] {
      ++callbacks;
      REQUIRE(w1.grad().defined());
      REQUIRE(w2.grad().defined());
    });
  });
  loss.backward();
  REQUIRE(order == std::vector<std::string>{"w2", "w1"});
  REQUIRE(w1_grad_missing_when_w2_fired);
  REQUIRE(callbacks == 1);
  // d/dw2 = (w1 x)^2 = [0.25, 36]; d/dw1 = 2 w2 w1 x^2 = [2*2*0.5*1, 2*(-1)*3*4] = [2, -24]
  REQUIRE(max_abs_diff(w2_seen, f64({0.25, 36.0})) == 0.0);
  REQUIRE(max_abs_diff(w1_seen, f64({2.0, -24.0})) == 0.0);

  // A second backward accumulates: the hook sees the sum of both passes.
  Tensor loss2 = (w1 * 3.0).sum();
  loss2.backward();
  REQUIRE(max_abs_diff(w1_seen, f64({5.0, -21.0})) == 0.0);

  // grad() writes no .grad and fires no hook.
  order.clear();
  Tensor loss3 = (w2 * w1).sum();
  auto g = grad({loss3}, {w1, w2});
  REQUIRE(order.empty());

  REQUIRE(remove_post_accumulate_grad_hook(id1));
  REQUIRE(remove_post_accumulate_grad_hook(id2));
  REQUIRE_FALSE(remove_post_accumulate_grad_hook(id2));
  order.clear();
  (w2 * w1).sum().backward();
  REQUIRE(order.empty());
}

TEST_CASE("hook and callback misuse is an error", "[autograd][hooks]") {
  Tensor w = f64({1.0}).requires_grad_();
  Tensor nonleaf = w * 2.0;
  REQUIRE_THROWS_WITH(register_post_accumulate_grad_hook(nonleaf, [](const Tensor&) {}),
                      Catch::Contains("expected a leaf"));
  REQUIRE_THROWS_WITH(queue_backward_callback([] {}), Catch::Contains("no backward() is running"));
}
