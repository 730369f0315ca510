// kern_bench_jvp: the cost of kern::jvp (forward mode, dual tensors) relative to a forward
// pass on mlp_train's network (bench/mlp.hpp: 784-1024-1024-10 ReLU, x [256, 784], float32),
// next to the double-vjp jvp it replaced (kern::jvp_double_vjp). kern only, no input files.
//   forward         the network's forward with its parameters requiring grad (as in training)
//   forward_nograd  the same under NoGradGuard
//   jvp_input       kern::jvp in the input x           (J_x t: one extra GEMM per layer)
//   jvp_params      kern::jvp in all six parameters    (J_theta t: two extra GEMMs per layer
//                   but the first, the linearized-network case of tools::linearize)
//   *_double_vjp    the same through two reverse passes
// The variants run round-robin (one of each per round) so machine load hits them alike;
// prints the median of each, the ratios of the medians to `forward`'s and those of the
// fastest rounds, as JSON.
#include <CLI/CLI.hpp>
#include <kern/forward_ad.hpp>
#include <kern/kern.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "../mlp.hpp"

using namespace kern;

int main(int argc, char** argv) {
  CLI::App app{"kern_bench_jvp: forward-mode jvp vs forward on the mlp_train network"};
  int rounds = 21, warmup = 3, threads = 2;
  int64_t batch = 256;
  app.add_option("--rounds", rounds, "timed rounds (median reported)");
  app.add_option("--warmup", warmup, "untimed rounds first");
  app.add_option("--threads", threads, "OpenMP threads");
  app.add_option("--batch", batch, "batch size");
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);

  manual_seed(0);
  bench::Mlp model;
  std::vector<Tensor> params = model.parameters();  // fc1.weight, fc1.bias, fc2..., fc3...
  Tensor x = randn({batch, 784});
  Tensor tx = randn({batch, 784});
  std::vector<Tensor> tparams;
  for (auto& p : params) tparams.push_back(randn(p.shape()));

  // The same network as a function of its parameters.
  auto net = [](const Tensor& in, const std::vector<Tensor>& p) {
    return linear(relu(linear(relu(linear(in, p[0], p[1])), p[2], p[3])), p[4], p[5]);
  };
  TensorFn of_input = [&](const std::vector<Tensor>& in) { return model.forward(in[0]); };
  TensorFn of_params = [&](const std::vector<Tensor>& p) { return net(x, p); };

  std::map<std::string, std::function<void()>> variants{
      {"forward", [&] { model.forward(x); }},
      {"forward_nograd",
       [&] {
         NoGradGuard ng;
         model.forward(x);
       }},
      {"jvp_input", [&] { jvp(of_input, {x}, {tx}); }},
      {"jvp_params", [&] { jvp(of_params, params, tparams); }},
      {"jvp_input_double_vjp", [&] { jvp_double_vjp(of_input, {x}, {tx}); }},
      {"jvp_params_double_vjp", [&] { jvp_double_vjp(of_params, params, tparams); }},
  };
  std::map<std::string, std::vector<double>> times;
  for (int r = 0; r < warmup + rounds; ++r)
    for (auto& [name, fn] : variants) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r >= warmup) times[name].push_back(s);
    }
  std::map<std::string, double> median, fastest;
  for (auto& [name, v] : times) {
    std::sort(v.begin(), v.end());
    median[name] = v[v.size() / 2];
    fastest[name] = v.front();
  }
  std::printf("{\"batch\": %lld, \"threads\": %d, \"rounds\": %d, \"median_s\": {", static_cast<long long>(batch),
              threads, rounds);
  bool first = true;
  for (auto& [name, m] : median) {
    std::printf("%s\"%s\": %.6f", first ? "" : ", ", name.c_str(), m);
    first = false;
  }
  std::printf("}, \"ratio_to_forward\": {");
  first = true;
  for (auto& [name, m] : median) {
    std::printf("%s\"%s\": %.3f", first ? "" : ", ", name.c_str(), m / median["forward"]);
    first = false;
  }
  // The fastest round is the least disturbed by other processes on a shared machine.
  std::printf("}, \"min_ratio_to_forward\": {");
  first = true;
  for (auto& [name, m] : fastest) {
    std::printf("%s\"%s\": %.3f", first ? "" : ", ", name.c_str(), m / fastest["forward"]);
    first = false;
  }
  std::printf("}}\n");
  return 0;
}
