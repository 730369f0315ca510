#pragma once
// Benchmark harness: a workload is built from the inputs PyTorch exported (same tensors on
// both sides), checked once against PyTorch's results, then timed.
#include <kern/io/safetensors.hpp>
#include <kern/kern.hpp>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>

namespace kern::bench {

struct Args {
  std::string workload;
  int64_t length = 4096;  // longconv only
  int threads = 2;
};

struct CheckResult {
  bool pass = false;
  double max_rel_err = 0.0;  // worst max|kern - torch| / max|torch| over the compared tensors
  std::string worst;         // which tensor was worst
};

struct Workload {
  std::function<void()> step;                          // one timed iteration
  std::function<CheckResult()> check;                  // untimed, before timing
  std::function<nlohmann::json(double median_s)> extras = [](double) { return nlohmann::json::object(); };
  std::function<nlohmann::json()> after = [] { return nlohmann::json::object(); };  // untimed
};

using Builder = std::function<Workload(const io::SafetensorsFile& inputs, const Args& args)>;

/// Registers a workload id; used by static registrars in the wl_*.cpp files.
std::map<std::string, Builder>& registry();
struct Register {
  Register(const std::string& id, Builder b) { registry()[id] = std::move(b); }
};

/// Accumulates comparisons of kern results against PyTorch's exported ones.
class Comparator {
 public:
  explicit Comparator(double tolerance) : tol_(tolerance) {}
  void compare(const std::string& name, const Tensor& kern_value, const Tensor& torch_value);
  CheckResult result() const { return {worst_ <= tol_, worst_, worst_name_}; }

 private:
  double tol_;
  double worst_ = 0.0;
  std::string worst_name_;
};

}  // namespace kern::bench
