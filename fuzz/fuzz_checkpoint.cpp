// libFuzzer target: io::load_checkpoint into a model and an Adam optimizer (the model of
// tests/data/make_regression.py: Sequential(Linear(2, 3), BatchNorm2d(3)), Adam stepped once
// so every parameter has state). A load either succeeds, after which the model trains one
// more step, or throws kern::Error and leaves the model, the optimizer and the default
// generator exactly as they were (all or nothing).
#include <kern/kern.hpp>
#include <kern/optim/optim.hpp>

#include <cstring>

#include "fuzz_util.hpp"

namespace {

namespace nn = kern::nn;
using Named = std::vector<std::pair<std::string, kern::Tensor>>;

struct Trainee {
  std::shared_ptr<nn::Sequential> model =
      std::make_shared<nn::Sequential>(nn::Linear(2, 3), nn::BatchNorm2d(3));
  kern::optim::Adam opt{model->parameters(), {.lr = 0.01}};
  Trainee() {
    for (auto p : model->parameters()) p.set_grad(kern::ones_like(p));
    opt.step();
    opt.zero_grad();
  }
  void train_step() {
    kern::Generator g(3);
    const kern::Tensor x = kern::randn({4, 2}, kern::DType::Float32, &g);
    const kern::Tensor h = model->at<nn::Linear>(0)->forward(x).view({4, 3, 1, 1});
    const kern::Tensor loss = model->at<nn::BatchNorm2d>(1)->forward(h).sum();
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
};

Named copies(const Named& sd) {
  kern::NoGradGuard ng;
  Named out;
  for (const auto& [n, t] : sd) out.emplace_back(n, t.clone());
  return out;
}

// Bitwise equality (NaN == NaN): the state must be untouched, not merely close.
bool same(const Named& a, const Named& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const kern::Tensor &x = a[i].second, &y = b[i].second;
    if (a[i].first != b[i].first || x.dtype() != y.dtype() || x.shape() != y.shape()) return false;
    const kern::Tensor cx = x.contiguous(), cy = y.contiguous();
    if (std::memcmp(cx.raw_data(), cy.raw_data(), cx.numel() * kern::dtype_size(cx.dtype())) != 0)
      return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const kern::fuzz::MemFile file(data, size);
  kern::manual_seed(7);
  Trainee t;
  const Named model_before = copies(t.model->state_dict());
  const Named optim_before = t.opt.state_dict();  // already copies
  const std::string rng_before = kern::default_generator().state();
  try {
    const int64_t step = kern::io::load_checkpoint(file.path(), *t.model, t.opt);
    if (step < 0) kern::fuzz::invariant_failed("load_checkpoint returned a negative step");
  } catch (const kern::Error&) {
    if (!same(model_before, t.model->state_dict())) kern::fuzz::invariant_failed("a failed load changed the model");
    if (!same(optim_before, t.opt.state_dict())) kern::fuzz::invariant_failed("a failed load changed the optimizer");
    if (rng_before != kern::default_generator().state())
      kern::fuzz::invariant_failed("a failed load changed the generator");
    return 0;
  }
  t.train_step();  // whatever values were loaded (NaN too), training goes on without UB
  (void)kern::randn({4});  // and the restored generator works
  return 0;
}
