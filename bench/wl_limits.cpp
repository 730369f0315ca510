// cntk_gap (and cntk_gap_16): the analytic infinite-width NNGP/NTK K(x, x) of Conv3x3 SAME
// ReLU x3, GlobalAvgPool, Dense (kern::limits, float64, full pixel-pixel covariances), for the
// images PyTorch exported; checked against PyTorch's float64 recursion (bench/peer/limits.py),
// exported as float32.
#include <kern/tools/limits/limits.hpp>

#include "harness.hpp"

#include <cmath>

namespace kern::bench {
namespace {

constexpr int64_t kBlock = 4;  // images per block side, as bench/peer/limits.py's CNTK_BLOCK

Workload cntk_workload(const io::SafetensorsFile& in, int64_t n) {
  Tensor x = in.get("x").to(DType::Float64);
  KERN_CHECK(x.shape() == Shape({n, 1, 28, 28}), "cntk_gap: expected x [", n, ", 1, 28, 28], got ",
             x.shape());
  Tensor nngp = in.get("nngp"), ntk = in.get("ntk");
  const limits::ConvOptions c{.W_std = std::sqrt(2.0), .b_std = 0.0};
  auto net = limits::serial({limits::Conv(3, c), limits::Relu(), limits::Conv(3, c), limits::Relu(),
                             limits::Conv(3, c), limits::Relu(), limits::GlobalAvgPool(),
                             limits::Dense()});
  Workload w;
  w.step = [net, x] { (void)net.kernel(x, {}, {.batch_size = kBlock}); };
  w.check = [net, x, nngp, ntk] {
    limits::Kernels k = net.kernel(x, {}, {.batch_size = kBlock});
    Comparator cmp(1e-6);  // the export is float32
    cmp.compare("nngp", k.nngp, nngp);
    cmp.compare("ntk", k.ntk, ntk);
    return cmp.result();
  };
  w.extras = [n](double median_s) {
    return nlohmann::json{{"pairs", n * n}, {"pairs_per_s", n * n / median_s}};
  };
  return w;
}

Register cntk_gap("cntk_gap", [](const io::SafetensorsFile& in, const Args&) {
  return cntk_workload(in, 64);
});
Register cntk_gap_16("cntk_gap_16", [](const io::SafetensorsFile& in, const Args&) {
  return cntk_workload(in, 16);
});

}  // namespace
}  // namespace kern::bench
