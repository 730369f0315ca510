// kern_load_probe: times one small workload and prints one JSON line
// {"workload", "median_s", "min_s", "max_s", "times": [...], "threads"}; bench/shared_machine.py
// runs it on an idle machine and next to busy processes (README: "Performance on a shared
// machine"). No PyTorch, no input files: weights are drawn from a fixed seed.
//   mlp_train          one SGD step of the 784-1024-1024-10 ReLU MLP on x [256, 784]
//                      (make bench's mlp_train shapes)
//   convnext_forward   convnext_atto (1 input channel, 10 classes), eval-mode forward of
//                      x [64, 1, 32, 32] under NoGradGuard (zoo_train's batch)
#include <CLI/CLI.hpp>
#include <fmt/ranges.h>
#include <kern/kern.hpp>
#include <kern/models/models.hpp>
#include <kern/optim/optim.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace {

using kern::Tensor;
namespace nn = kern::nn;

std::function<void()> mlp_train() {
  auto model = std::make_shared<nn::Sequential>(nn::Linear(784, 1024), nn::ReLU(), nn::Linear(1024, 1024),
                                                nn::ReLU(), nn::Linear(1024, 10));
  auto opt = std::make_shared<kern::optim::SGD>(model->parameters(), kern::optim::SGDOptions{.lr = 0.01});
  Tensor x = kern::randn({256, 784});
  Tensor y = kern::randint(0, 10, {256});
  return [=] {
    opt->zero_grad();
    kern::cross_entropy((*model)(x), y).backward();
    opt->step();
  };
}

std::function<void()> convnext_forward() {
  auto model = kern::models::create_model("convnext_atto", {.num_classes = 10, .in_chans = 1});
  model->eval();
  Tensor x = kern::randn({64, 1, 32, 32});
  return [=] {
    kern::NoGradGuard g;
    (void)(*model)(x).sum().item();
  };
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kern_load_probe: time a small workload (bench/shared_machine.py runs it)"};
  std::string workload;
  int threads = 2, warmup = 2, iters = 10;
  app.add_option("--workload", workload, "mlp_train | convnext_forward")->required();
  app.add_option("--threads", threads, "threads")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed iterations")->check(CLI::NonNegativeNumber);
  app.add_option("--iters", iters, "timed iterations")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  kern::set_num_threads(threads);
  kern::manual_seed(0);
  std::function<void()> step;
  if (workload == "mlp_train") step = mlp_train();
  else if (workload == "convnext_forward") step = convnext_forward();
  else {
    fmt::print(stderr, "kern_load_probe: unknown workload '{}' (mlp_train, convnext_forward)\n", workload);
    return 1;
  }
  for (int i = 0; i < warmup; ++i) step();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::vector<double> s = t;
  std::sort(s.begin(), s.end());
  const double median = s.size() % 2 ? s[s.size() / 2] : 0.5 * (s[s.size() / 2 - 1] + s[s.size() / 2]);
  fmt::print("{{\"workload\": \"{}\", \"threads\": {}, \"median_s\": {:.6f}, \"min_s\": {:.6f}, \"max_s\": {:.6f}, "
             "\"times\": [{:.6f}]}}\n",
             workload, threads, median, s.front(), s.back(), fmt::join(t, ", "));
  return 0;
}
