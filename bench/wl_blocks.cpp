// Block workloads: dwconv7_train, dwconv31_train, convnext_block_train,
// inceptionnext_block_train, convnext_block_bf16 (the forward under bf16 autocast). One timed
// iteration: clear grads, out = block(x), loss = sum(out * g), backward (grads of x and of
// every parameter).
#include <kern/autocast.hpp>

#include "blocks.hpp"
#include "harness.hpp"

namespace kern::bench {
namespace {

// Loads param.* into the module (strict), then builds the timed step and the check.
// bf16: the forward runs under AutocastGuard(BFloat16) and the check has a bf16 tolerance.
Workload block_workload(std::shared_ptr<nn::Module> block, const io::SafetensorsFile& in, bool bf16 = false) {
  nn::StateDict params;
  for (auto& [name, t] : in.tensors)
    if (name.rfind("param.", 0) == 0) params.emplace_back(name.substr(6), t);
  // Buffers (BatchNorm running stats) are not exported: keep the module's own.
  for (auto& [name, t] : block->named_buffers()) params.emplace_back(name, t);
  block->load_state_dict(params, true);
  block->train();
  Tensor x = in.get("x").clone().detach().requires_grad_(true), g = in.get("g");
  auto run = [block, x, g, bf16]() mutable {
    x.zero_grad();
    block->zero_grad();
    Tensor out;
    {
      AutocastGuard autocast(DType::BFloat16, bf16);
      out = (*block)(x);
    }
    sum(out * g).backward();
    return out;
  };
  Workload w;
  w.step = [run]() mutable { (void)run(); };
  w.check = [run, block, x, bf16, inputs = in]() mutable {
    Tensor out = run();
    Comparator c(bf16 ? 5e-2 : 2e-4);
    c.compare("out", out, inputs.get("out"));
    c.compare("grad.x", x.grad(), inputs.get("grad.x"));
    for (auto& [name, p] : block->named_parameters()) {
      // BatchNorm cancels a per-channel constant: these bias grads are rounding noise in
      // PyTorch's export (exactly 0 mathematically), so they are compared absolutely below.
      if (name.find("token_mixer.") == 0 && name.size() > 5 && name.substr(name.size() - 5) == ".bias") {
        if (max_abs_diff(p.grad(), zeros_like(p.grad())) > 1e-3) c.compare("grad.param." + name, p.grad(), zeros_like(p.grad()));
        continue;
      }
      c.compare("grad.param." + name, p.grad(), inputs.get("grad.param." + name));
    }
    return c.result();
  };
  if (bf16) w.extras = [](double) { return nlohmann::json{{"isa", autocast_isa()}}; };
  return w;
}

std::shared_ptr<nn::Module> depthwise(int64_t k) {
  return std::make_shared<nn::Conv2d>(nn::Conv2dOptions(64, 64, k).padding(k / 2).groups(64));
}

Register dw7("dwconv7_train", [](const io::SafetensorsFile& in, const Args&) { return block_workload(depthwise(7), in); });
Register dw31("dwconv31_train", [](const io::SafetensorsFile& in, const Args&) { return block_workload(depthwise(31), in); });
Register convnext("convnext_block_train", [](const io::SafetensorsFile& in, const Args&) {
  return block_workload(std::make_shared<ConvNeXtBlock>(64), in);
});
Register convnext_bf16("convnext_block_bf16", [](const io::SafetensorsFile& in, const Args&) {
  return block_workload(std::make_shared<ConvNeXtBlock>(64), in, true);
});
Register inceptionnext("inceptionnext_block_train", [](const io::SafetensorsFile& in, const Args&) {
  return block_workload(std::make_shared<MetaNeXtBlock>(64), in);
});

}  // namespace
}  // namespace kern::bench
