// ntk_mlp and ntk_cnn: the full empirical NTK [N*10, N*10] of the models PyTorch exported
// (same parameters and inputs), by kern::tools::ntk (Auto = structured per-layer
// contraction). Extras: the Jacobian's size (what the functorch recipe materializes) and the
// memory one kern NTK needs, to show that it stays below the Jacobian's size. After a
// warm-up NTK (one-time costs: oneDNN kernels, primitives) and emptying kern's allocator
// cache, a polling thread samples every ~20 us
//   ntk_live_peak_mb:        resident memory minus the allocator's cached free blocks,
//                            above the baseline: the NTK's live working set;
//   ntk_peak_rss_growth_mb:  resident memory above the baseline, cache included (kern's
//                            allocator keeps freed blocks by exact size, so this counts
//                            every distinct buffer size the call ever held).
#include <kern/tools/ntk.hpp>

#include "harness.hpp"
#include "memory.hpp"

namespace kern::bench {
namespace {

/// MLP Linear(100,256) Tanh Linear(256,256) Tanh Linear(256,10), PyTorch's names fc1..fc3.
struct Mlp : nn::Module {
  Mlp() {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(100, 256));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(256, 256));
    fc3 = register_module("fc3", std::make_shared<nn::Linear>(256, 10));
  }
  Tensor forward(const Tensor& x) override { return (*fc3)(tanh((*fc2)(tanh((*fc1)(x))))); }
  std::shared_ptr<nn::Linear> fc1, fc2, fc3;
};

/// Conv3x3(3->16) ReLU Conv3x3(16->32, s2) ReLU Conv3x3(32->32, s2) ReLU GAP Linear(32->10),
/// all convs padding 1 with bias: [N,3,16,16] -> [N,16,16,16] -> [N,32,8,8] -> [N,32,4,4]
/// -> [N,32] -> [N,10].
struct SmallCnn : nn::Module {
  SmallCnn() {
    conv1 = register_module("conv1", std::make_shared<nn::Conv2d>(nn::Conv2dOptions(3, 16, 3).padding(1)));
    conv2 = register_module("conv2", std::make_shared<nn::Conv2d>(nn::Conv2dOptions(16, 32, 3).stride(2).padding(1)));
    conv3 = register_module("conv3", std::make_shared<nn::Conv2d>(nn::Conv2dOptions(32, 32, 3).stride(2).padding(1)));
    fc = register_module("fc", std::make_shared<nn::Linear>(32, 10));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = relu((*conv1)(x));
    h = relu((*conv2)(h));
    h = relu((*conv3)(h));
    return (*fc)(mean(h, {2, 3}));
  }
  std::shared_ptr<nn::Conv2d> conv1, conv2, conv3;
  std::shared_ptr<nn::Linear> fc;
};

template <class M>
Workload ntk_workload(const io::SafetensorsFile& in, const Shape& x_shape) {
  auto model = std::make_shared<M>();
  nn::StateDict sd;
  for (auto& [k, t] : in.tensors)
    if (k.rfind("param.", 0) == 0) sd.emplace_back(k.substr(6), t);
  model->load_state_dict(sd);
  model->eval();
  Tensor x = in.get("x"), expected = in.get("kernel");
  KERN_CHECK(x.shape() == x_shape, "ntk workload: expected x ", x_shape, ", got ", x.shape());
  const int64_t rows = expected.size(0);
  int64_t P = 0;
  for (auto& p : model->parameters()) P += p.numel();
  const double jacobian_mb = static_cast<double>(rows) * P * 4 / (1024.0 * 1024.0);
  auto info = std::make_shared<tools::NtkInfo>();
  auto memory = std::make_shared<MemoryPeak>();

  Workload w;
  w.step = [model, x] { (void)tools::ntk(*model, x); };
  w.check = [model, x, expected, info, memory] {
    (void)tools::ntk(*model, x);  // warm-up
    Tensor K;
    *memory = memory_peak([&] { K = tools::ntk(*model, x, {}, info.get()); });
    Comparator c(1e-4);
    c.compare("kernel", K, expected);
    return c.result();
  };
  w.extras = [info, memory, jacobian_mb, P](double) {
    return nlohmann::json{{"method", "structured"},
                          {"params", P},
                          {"structured_params", info->structured.size()},
                          {"fallback_params", info->fallback.size()},
                          {"jacobian_mb", jacobian_mb},
                          {"ntk_live_peak_mb", memory->live_mb},
                          {"ntk_peak_rss_growth_mb", memory->rss_growth_mb}};
  };
  return w;
}

Register ntk_mlp("ntk_mlp", [](const io::SafetensorsFile& in, const Args&) {
  return ntk_workload<Mlp>(in, Shape({64, 100}));
});
Register ntk_cnn("ntk_cnn", [](const io::SafetensorsFile& in, const Args&) {
  return ntk_workload<SmallCnn>(in, Shape({32, 3, 16, 16}));
});

}  // namespace
}  // namespace kern::bench
