// In-place writes and autograd: version counters (a backward that would read overwritten
// values throws), the grad-mode rule of copy_ / fill_, and copy_ between overlapping views.
// Expected gradients are worked out by hand in the comments (d/dx sum(x*x) = 2x, ...).
#include "gradcheck.hpp"

#include <kern/optim/optim.hpp>

#include <memory>

using namespace kern;

namespace {

const DType F64 = DType::Float64;

Tensor f64(std::initializer_list<double> v) { return tensor(v, F64); }

// The message PyTorch gives, which kern's error starts with after naming the op.
const char* kModified = "modified by an inplace operation";

}  // namespace

// ---------------------------------------------------------------- version counters

TEST_CASE("version counters: in-place writes bump them; views and detach share them, clones do not",
          "[autograd][version]") {
  Tensor x = zeros({4, 3}, F64);
  const uint64_t v0 = x.version();
  Tensor row = x.select(0, 1), flat = x.reshape({12}), d = x.detach(), c = x.clone();
  row.fill_(1.0);
  REQUIRE(x.version() == v0 + 1);
  REQUIRE(flat.version() == v0 + 1);
  REQUIRE(d.version() == v0 + 1);
  const uint64_t cv = c.version();
  d.copy_(ones({4, 3}, F64));
  REQUIRE(row.version() == v0 + 2);
  REQUIRE(c.version() == cv);  // a clone has its own storage
  x.bump_version();
  REQUIRE(flat.version() == v0 + 3);
  // The values written are there (the counter is not the only effect).
  REQUIRE(x.sum().item() == 12.0);
}

TEST_CASE("version counters: init functions and optimizer steps bump the parameter's version",
          "[autograd][version][optim]") {
  Tensor w = zeros({3, 2}, F64).requires_grad_();
  uint64_t v = w.version();
  nn::init::normal_(w, 0.0, 1.0);
  REQUIRE(w.version() > v);
  v = w.version();
  nn::init::constant_(w, 0.5);
  REQUIRE(w.version() > v);
  for (int which = 0; which < 3; ++which) {
    DYNAMIC_SECTION((which == 0 ? "SGD" : which == 1 ? "Adam" : "AdamW")) {
      Tensor p = full({3}, 1.0, F64).requires_grad_();
      std::unique_ptr<optim::Optimizer> opt;
      if (which == 0) opt = std::make_unique<optim::SGD>(std::vector<Tensor>{p}, optim::SGDOptions{.lr = 0.1, .momentum = 0.9});
      if (which == 1) opt = std::make_unique<optim::Adam>(std::vector<Tensor>{p}, optim::AdamOptions{.lr = 0.1});
      if (which == 2) opt = std::make_unique<optim::AdamW>(std::vector<Tensor>{p}, optim::AdamWOptions{.lr = 0.1});
      (p * p).sum().backward();
      const uint64_t before = p.version();
      opt->step();
      REQUIRE(p.version() > before);
      // a strided parameter (updated through a copy) too
      Tensor base = zeros({3, 2}, F64);
      Tensor q = base.t().detach();  // [2, 3], non-contiguous
      q.requires_grad_();
      q.set_grad(ones({2, 3}, F64));
      std::unique_ptr<optim::Optimizer> o2 =
          std::make_unique<optim::SGD>(std::vector<Tensor>{q}, optim::SGDOptions{.lr = 0.5});
      const uint64_t qb = q.version();
      o2->step();
      REQUIRE(q.version() > qb);
      REQUIRE(base.sum().item() == Approx(-3.0));  // every element moved by -lr * 1
    }
  }
}

TEST_CASE("copy_ into a tensor mul saved makes backward throw instead of a wrong gradient",
          "[autograd][version]") {
  // Issue 12: y = sum(x * x); overwriting x with [10, 20, 30] used to give dy/dx = 2 * [10,
  // 20, 30] = [20, 40, 60] instead of 2 * [1, 2, 3] = [2, 4, 6].
  SECTION("without the write the gradient is 2x") {
    Tensor x = f64({1, 2, 3}).requires_grad_();
    Tensor y = (x * x).sum();
    y.backward();
    REQUIRE(max_abs_diff(x.grad(), f64({2, 4, 6})) == 0.0);
  }
  SECTION("under NoGradGuard") {
    Tensor x = f64({1, 2, 3}).requires_grad_();
    Tensor y = (x * x).sum();
    {
      NoGradGuard ng;
      x.copy_(f64({10, 20, 30}));
    }
    REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("backward of op 'mul'") && Catch::Contains(kModified) &&
                                          Catch::Contains("input 0 (float64 [3])") &&
                                          Catch::Contains("is at version 1; the op recorded it at version 0"));
    REQUIRE_FALSE(x.grad().defined());  // nothing was accumulated
  }
  SECTION("through a detached alias with grad mode on") {
    Tensor x = f64({1, 2, 3}).requires_grad_();
    Tensor y = (x * x).sum();
    x.detach().copy_(f64({10, 20, 30}));
    REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("'mul'") && Catch::Contains(kModified));
  }
  SECTION("through a view of the input") {
    Tensor x = f64({1, 2, 3, 4}).requires_grad_();
    Tensor y = (x * x).sum();
    x.detach().narrow(0, 2, 2).fill_(0.0);
    REQUIRE_THROWS_WITH(y.backward(), Catch::Contains(kModified));
  }
}

TEST_CASE("fill_ on exp's saved output makes backward throw", "[autograd][version]") {
  Tensor x = f64({0.0, 1.0}).requires_grad_();
  Tensor e = exp(x);
  Tensor y = e.sum();
  {
    NoGradGuard ng;
    e.fill_(0.0);
  }
  REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("backward of op 'exp'") && Catch::Contains(kModified) &&
                                        Catch::Contains("its output (float64 [2])"));
  // Without the write: d/dx sum(exp(x)) = exp(x) = [1, e].
  Tensor x2 = f64({0.0, 1.0}).requires_grad_();
  exp(x2).sum().backward();
  REQUIRE(max_abs_diff(x2.grad(), f64({1.0, std::exp(1.0)})) < 1e-15);
}

TEST_CASE("an optimizer step between forward and backward throws when an op saved the parameter",
          "[autograd][version][optim]") {
  // h = x @ w1 (h needs a gradient), out = sum(h @ w2): mm's backward reads w2 for h's
  // gradient, so stepping w2 before backward must fail, for every optimizer.
  for (int which = 0; which < 3; ++which) {
    DYNAMIC_SECTION((which == 0 ? "SGD" : which == 1 ? "Adam" : "AdamW")) {
      Generator g(3);
      Tensor x = randn({4, 3}, F64, &g);
      Tensor w1 = randn({3, 5}, F64, &g).requires_grad_(), w2 = randn({5, 2}, F64, &g).requires_grad_();
      std::vector<Tensor> ps{w1, w2};
      std::unique_ptr<optim::Optimizer> opt;
      if (which == 0) opt = std::make_unique<optim::SGD>(ps, optim::SGDOptions{.lr = 0.1});
      if (which == 1) opt = std::make_unique<optim::Adam>(ps, optim::AdamOptions{.lr = 0.1});
      if (which == 2) opt = std::make_unique<optim::AdamW>(ps, optim::AdamWOptions{.lr = 0.1, .weight_decay = 0.1});
      // A legitimate step: forward, backward, step.
      opt->zero_grad();
      mm(mm(x, w1), w2).sum().backward();
      REQUIRE_NOTHROW(opt->step());
      // Forward, then a step (the gradients from above are still there), then backward.
      Tensor loss = mm(mm(x, w1), w2).sum();
      opt->step();
      REQUIRE_THROWS_WITH(loss.backward(), Catch::Contains("backward of op 'mm'") && Catch::Contains(kModified) &&
                                               Catch::Contains("input 1 (float64 [5, 2])"));
    }
  }
}

TEST_CASE("legitimate in-place patterns keep working", "[autograd][version]") {
  SECTION("SGD steps after backward give w - lr * grad") {
    // loss = sum(x * w) has d loss / dw = x; two steps of lr 0.5 from w0 give w0 - x.
    Tensor x = f64({1, -2, 3});
    Tensor w = f64({0.5, 0.5, 0.5}).requires_grad_();
    optim::SGD opt({w}, {.lr = 0.5});
    for (int step = 0; step < 2; ++step) {
      opt.zero_grad();
      (x * w).sum().backward();
      opt.step();
    }
    REQUIRE(max_abs_diff(w.detach(), f64({-0.5, 2.5, -2.5})) < 1e-15);
  }
  SECTION("writing into an input whose values the backward does not read") {
    // add: d/db sum(x + b) = 1 whatever b holds.
    Tensor x = f64({1, 2}).requires_grad_(), b = f64({3, 4}).requires_grad_();
    Tensor y = (x + b).sum();
    {
      NoGradGuard ng;
      b.fill_(100.0);
    }
    y.backward();
    REQUIRE(max_abs_diff(b.grad(), f64({1, 1})) == 0.0);
    // mul by a constant: d/dx sum(3 x) = 3 reads only the constant.
    Tensor z = (x * 3.0).sum();
    x.detach().fill_(-7.0);
    z.backward();
    REQUIRE(max_abs_diff(x.grad(), f64({4, 4})) == 0.0);  // 1 (from y) + 3
    // a view's backward reads nothing either
    Tensor v = x.narrow(0, 0, 1).sum();
    x.detach().fill_(5.0);
    REQUIRE_NOTHROW(v.backward());
  }
  SECTION("stepping a weight multiplied by data that needs no gradient") {
    // out = sum(x @ w): d/dw = x^T 1 reads x only, so w may change (as in PyTorch).
    Tensor x = f64({1, 2, 3, 4}).reshape({2, 2});
    Tensor w = f64({1, 0, 0, 1}).reshape({2, 2}).requires_grad_();
    Tensor out = mm(x, w).sum();
    {
      NoGradGuard ng;
      w.fill_(9.0);
    }
    out.backward();
    REQUIRE(max_abs_diff(w.grad(), f64({4, 4, 6, 6}).reshape({2, 2})) == 0.0);
  }
  SECTION("BatchNorm's running statistics updated by a second training forward") {
    // The training-mode backward reads x and the weight only.
    Generator g(5);
    Tensor x1 = randn({4, 3, 2}, F64, &g), x2 = randn({4, 3, 2}, F64, &g);
    Tensor w = ones({3}, F64).requires_grad_(), b = zeros({3}, F64).requires_grad_();
    Tensor rm = zeros({3}, F64), rv = ones({3}, F64);
    Tensor y1 = (batch_norm(x1, rm, rv, w, b, true, 0.1, 1e-5) * x1).sum();
    const uint64_t before = rm.version();
    Tensor y2 = batch_norm(x2, rm, rv, w, b, true, 0.1, 1e-5).sum();
    REQUIRE(rm.version() > before);  // the update is an in-place write
    REQUIRE_NOTHROW(y1.backward());
    REQUIRE(b.grad().defined());
  }
  SECTION("retain_graph: a second backward after an unrelated write") {
    Tensor x = f64({1, 2}).requires_grad_();
    Tensor other = zeros({2}, F64);
    Tensor y = (x * x).sum();
    y.backward({}, /*retain_graph=*/true);
    other.fill_(1.0);
    y.backward();
    REQUIRE(max_abs_diff(x.grad(), f64({4, 8})) == 0.0);
  }
}

TEST_CASE("true positives beyond the basic ops", "[autograd][version]") {
  SECTION("eval-mode BatchNorm reads running_mean in the weight's gradient") {
    Generator g(6);
    Tensor x = randn({2, 3, 2}, F64, &g);
    Tensor w = ones({3}, F64).requires_grad_();
    Tensor rm = f64({0.1, 0.2, 0.3}), rv = f64({1, 2, 3});
    Tensor y = batch_norm(x, rm, rv, w, {}, false).sum();
    rm.fill_(0.0);
    REQUIRE_THROWS_WITH(y.backward(), Catch::Contains(kModified));
  }
  SECTION("a second backward with retain_graph after the input changed") {
    Tensor x = f64({1, 2}).requires_grad_();
    Tensor y = (x * x).sum();
    y.backward({}, true);
    x.detach().fill_(3.0);
    REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("'mul'") && Catch::Contains(kModified));
  }
  SECTION("an index tensor changed after index_select / gather / max") {
    Tensor x = f64({1, 5, 3}).requires_grad_();
    Tensor idx = from_vector<int64_t>({2, 0}, {2});
    Tensor y = index_select(x, 0, idx).sum();
    idx.fill_(1);
    REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("'index_select'") && Catch::Contains("input 1 (int64 [2])"));
    Tensor y2 = gather(x, 0, idx).sum();
    idx.fill_(0);
    REQUIRE_THROWS_WITH(y2.backward(), Catch::Contains("'gather'"));
    auto m = max(x, 0);
    Tensor y3 = m.values.sum();
    m.indices.fill_(0);
    REQUIRE_THROWS_WITH(y3.backward(), Catch::Contains("'max'"));
  }
  SECTION("conv2d's input, needed for the weight's gradient") {
    Generator g(8);
    Tensor x = randn({1, 2, 5, 5}, F64, &g);
    Tensor w = randn({3, 2, 3, 3}, F64, &g).requires_grad_();
    Tensor y = conv2d(x, w).sum();
    x.fill_(0.0);
    REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("'conv2d'") && Catch::Contains("input 0 (float64 [1, 2, 5, 5])"));
  }
  SECTION("a custom op recorded with the default SavedValues::all()") {
    Tensor x = f64({1, 2}).requires_grad_();
    Tensor y = record_op("my_identity", x.detach().clone(), {x},
                         [](const BackwardContext& c) { return std::vector<Tensor>{c.grad}; });
    Tensor y_none = record_op("my_identity_none", x.detach().clone(), {x},
                              [](const BackwardContext& c) { return std::vector<Tensor>{c.grad}; },
                              SavedValues::none());
    x.detach().fill_(0.0);
    REQUIRE_THROWS_WITH(y.sum().backward(), Catch::Contains("'my_identity'") && Catch::Contains(kModified));
    y_none.sum().backward();
    REQUIRE(max_abs_diff(x.grad(), f64({1, 1})) == 0.0);
  }
}

// ---------------------------------------------------------------- copy_ / fill_ rules

TEST_CASE("copy_ and fill_ treat tensors that require grad alike", "[autograd][version][errors]") {
  Tensor w = f64({1, 2}).requires_grad_();
  SECTION("a leaf outside NoGradGuard: both rejected") {
    REQUIRE_THROWS_WITH(w.copy_(f64({3, 4})), Catch::Contains("copy_: in-place write into a leaf that requires grad") &&
                                                  Catch::Contains("float64 [2]") && Catch::Contains("NoGradGuard"));
    REQUIRE_THROWS_WITH(w.fill_(0.0), Catch::Contains("fill_: in-place write into a leaf that requires grad"));
    REQUIRE(max_abs_diff(w.detach(), f64({1, 2})) == 0.0);  // nothing written
  }
  SECTION("a leaf under NoGradGuard: both allowed") {
    NoGradGuard ng;
    w.copy_(f64({3, 4}));
    REQUIRE(max_abs_diff(w.detach(), f64({3, 4})) == 0.0);
    w.fill_(-1.0);
    REQUIRE(max_abs_diff(w.detach(), f64({-1, -1})) == 0.0);
  }
  SECTION("a non-leaf that requires grad (or a view of a leaf): both rejected, naming the op") {
    Tensor h = w * 2.0;
    REQUIRE_THROWS_WITH(h.copy_(f64({0, 0})), Catch::Contains("copy_") && Catch::Contains("produced by op 'mul'"));
    REQUIRE_THROWS_WITH(h.fill_(0.0), Catch::Contains("fill_") && Catch::Contains("produced by op 'mul'"));
    REQUIRE_THROWS_WITH(w.narrow(0, 0, 1).fill_(0.0), Catch::Contains("produced by op 'narrow'"));
  }
}

TEST_CASE("copy_ between overlapping views", "[tensor][version][errors]") {
  SECTION("a destination whose elements share memory is rejected") {
    Tensor base = zeros({3}, F64);
    Tensor e = base.expand({2, 3});
    REQUIRE_THROWS_WITH(e.copy_(f64({1, 2, 3, 4, 5, 6}).reshape({2, 3})),
                        Catch::Contains("copy_: the destination (float64 [2, 3], strides 0, 1) has elements that "
                                        "share memory"));
    REQUIRE(base.sum().item() == 0.0);
    e.fill_(2.0);  // every element gets the same value: well defined
    REQUIRE(max_abs_diff(base, f64({2, 2, 2})) == 0.0);
  }
  SECTION("a source overlapping the destination is read as it was before the copy") {
    // x[1:] = x[:-1] shifts right: [0, 0, 1, ..., 8] (an in-place element loop would give all 0).
    Tensor x = arange(0.0, 10.0, 1.0, F64);
    x.narrow(0, 1, 9).copy_(x.narrow(0, 0, 9));
    REQUIRE(max_abs_diff(x, f64({0, 0, 1, 2, 3, 4, 5, 6, 7, 8})) == 0.0);
    // x[:-1] = x[1:] shifts left.
    Tensor y = arange(0.0, 10.0, 1.0, F64);
    y.narrow(0, 0, 9).copy_(y.narrow(0, 1, 9));
    REQUIRE(max_abs_diff(y, f64({1, 2, 3, 4, 5, 6, 7, 8, 9, 9})) == 0.0);
    // a square matrix transposed in place
    Tensor m = f64({0, 1, 2, 3, 4, 5, 6, 7, 8}).reshape({3, 3});
    m.copy_(m.t());
    REQUIRE(max_abs_diff(m, f64({0, 3, 6, 1, 4, 7, 2, 5, 8}).reshape({3, 3})) == 0.0);
    // a broadcast row of the destination itself
    Tensor r = f64({1, 2, 3, 4, 5, 6}).reshape({2, 3});
    r.copy_(r.select(0, 1));
    REQUIRE(max_abs_diff(r, f64({4, 5, 6, 4, 5, 6}).reshape({2, 3})) == 0.0);
    // converting dtype through the same storage is not possible; disjoint views copy directly
    Tensor z = arange(0.0, 6.0, 1.0, F64);
    z.narrow(0, 0, 3).copy_(z.narrow(0, 3, 3));
    REQUIRE(max_abs_diff(z, f64({3, 4, 5, 3, 4, 5})) == 0.0);
  }
  SECTION("copying a tensor into itself changes nothing") {
    Tensor x = f64({1, 2, 3});
    x.copy_(x);
    REQUIRE(max_abs_diff(x, f64({1, 2, 3})) == 0.0);
  }
}
