// kern_bench: runs one workload of ../shared/BENCHMARKS.md and prints one JSON line:
// {"id", "median_s", "min_s", "max_s", "peak_rss_mb", "check", "max_abs_err", ...extras}.
#include <CLI/CLI.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "harness.hpp"

namespace kern::bench {

std::map<std::string, Builder>& registry() {
  static std::map<std::string, Builder> r;
  return r;
}

void Comparator::compare(const std::string& name, const Tensor& kern_value, const Tensor& torch_value) {
  Tensor a = kern_value.detach().to(DType::Float64), b = torch_value.detach().to(DType::Float64);
  if (a.numel() == b.numel() && a.shape() != b.shape()) a = a.reshape(b.shape());
  double err = 1e300;
  if (a.shape() == b.shape()) {
    const double scale = std::max(1e-12, max_abs_diff(b, zeros_like(b)));
    err = max_abs_diff(a, b) / scale;
  }
  if (std::isnan(err)) err = 1e300;
  if (err >= worst_) {
    worst_ = err;
    worst_name_ = name;
  }
}

}  // namespace kern::bench

int main(int argc, char** argv) {
  using namespace kern;
  CLI::App app{"kern side of the benchmark workloads"};
  bench::Args args;
  std::string inputs_path;
  int warmup = 3, iters = 10;
  app.add_option("--workload", args.workload, "workload id")->required();
  app.add_option("--inputs", inputs_path, "safetensors file exported by bench/pytorch_peer.py")->required();
  app.add_option("--threads", args.threads, "threads")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "warm-up iterations")->check(CLI::NonNegativeNumber);
  app.add_option("--iters", iters, "timed iterations")->check(CLI::PositiveNumber);
  app.add_option("--length", args.length, "sequence length (longconv)");
  CLI11_PARSE(app, argc, argv);
  auto it = bench::registry().find(args.workload);
  if (it == bench::registry().end()) {
    std::cout << "unsupported\n";
    std::cerr << "kern_bench: workload '" << args.workload << "' is not implemented by kern yet\n";
    return 3;
  }
  try {
    set_num_threads(args.threads);
    const auto inputs = io::load_safetensors(inputs_path);
    bench::Workload w = it->second(inputs, args);
    const bench::CheckResult check = w.check();
    for (int i = 0; i < warmup; ++i) w.step();
    std::vector<double> times;
    for (int i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      w.step();
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::vector<double> sorted = times;
    std::sort(sorted.begin(), sorted.end());
    const size_t n = sorted.size();
    const double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    nlohmann::json out = {{"id", args.workload},
                          {"median_s", median},
                          {"min_s", sorted.front()},
                          {"max_s", sorted.back()},
                          {"peak_rss_mb", ru.ru_maxrss / 1024.0},
                          {"check", check.pass ? "pass" : "fail"},
                          {"max_abs_err", check.max_rel_err},
                          {"max_rel_err", check.max_rel_err},
                          {"worst", check.worst}};
    out.update(w.extras(median));
    out.update(w.after());
    std::cout << out.dump() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "kern_bench " << args.workload << ": " << e.what() << "\n";
    return 2;
  }
}
