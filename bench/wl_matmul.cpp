// sgemm_peak and matmul_2048: float32 products through kern::mm (oneDNN sgemm).
#include "harness.hpp"

namespace kern::bench {
namespace {

Workload matmul_workload(const io::SafetensorsFile& in, int64_t n) {
  Tensor a = in.get("a"), b = in.get("b"), expected = in.get("out");
  KERN_CHECK(a.shape() == Shape({n, n}), "matmul workload: expected a [", n, ", ", n, "], got ", a.shape());
  Workload w;
  w.step = [a, b] { (void)mm(a, b); };
  w.check = [a, b, expected] {
    Comparator c(1e-4);
    c.compare("out", mm(a, b), expected);
    return c.result();
  };
  const double flop = 2.0 * n * n * n;
  w.extras = [flop](double median) { return nlohmann::json{{"gflops", flop / median / 1e9}}; };
  return w;
}

Register sgemm_peak("sgemm_peak", [](const io::SafetensorsFile& in, const Args&) { return matmul_workload(in, 4096); });
Register matmul_2048("matmul_2048", [](const io::SafetensorsFile& in, const Args&) { return matmul_workload(in, 2048); });

}  // namespace
}  // namespace kern::bench
