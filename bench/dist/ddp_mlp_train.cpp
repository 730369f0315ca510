// kern_bench_dist: the ddp_mlp_train workload (../shared/BENCHMARKS.md), kern's side, run by
// bench/run_bench.py as
//   mpirun -np 2 kern_bench_dist --workload ddp_mlp_train --inputs FILE --warmup W --iters N
// with OMP_NUM_THREADS=1: mlp_train (784-1024-1024-10 ReLU MLP, SGD lr 0.01) wrapped in
// nn::DistributedDataParallel, rank r training on rows [r*B/n, (r+1)*B/n) of mlp_train's
// global batch x [256, 784]. One timed step = zero grads, forward of the local shard, mean
// cross-entropy, backward (gradients averaged over ranks by DDP's bucketed all-reduces),
// SGD step. Every step starts after a barrier (untimed); rank 0's times are reported, and
// rank 0 prints the one JSON line. The check: one DDP step from the exported initial
// parameters reproduces PyTorch's single-process step on the whole batch (param_after.*)
// and the mean loss. A separate binary from kern_bench so that kern_bench stays free of MPI.
#include <kern/dist/ddp.hpp>
#include <kern/io/safetensors.hpp>
#include <kern/kern.hpp>
#include <kern/optim/optim.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include "../mlp.hpp"

#include <algorithm>
#include <chrono>
#include <iostream>

using namespace kern;

namespace {

using bench::Mlp;  // mlp_train's network (bench/mlp.hpp)

nn::StateDict with_prefix(const io::SafetensorsFile& in, const std::string& prefix) {
  nn::StateDict sd;
  for (auto& [name, t] : in.tensors)
    if (name.rfind(prefix, 0) == 0) sd.emplace_back(name.substr(prefix.size()), t);
  return sd;
}

struct Trainer {
  std::shared_ptr<Mlp> model = std::make_shared<Mlp>();
  std::shared_ptr<nn::DistributedDataParallel> ddp;
  std::unique_ptr<optim::SGD> opt;
  Tensor x, y;  // this rank's shard

  explicit Trainer(const io::SafetensorsFile& in) {
    model->load_state_dict(with_prefix(in, "param."));
    ddp = std::make_shared<nn::DistributedDataParallel>(model);
    opt = std::make_unique<optim::SGD>(ddp->parameters(), optim::SGDOptions{.lr = 0.01});
    Tensor gx = in.get("x"), gy = in.get("labels");
    const int64_t n = gx.size(0), world = dist::world_size(), r = dist::rank();
    KERN_CHECK(n % world == 0, "ddp_mlp_train: global batch ", n, " is not divisible by ", world, " ranks");
    x = gx.narrow(0, r * n / world, n / world).contiguous();
    y = gy.narrow(0, r * n / world, n / world).contiguous();
  }
  Tensor step() {
    opt->zero_grad();
    Tensor loss = cross_entropy((*ddp)(x), y);
    loss.backward();
    opt->step();
    return loss;
  }
};

// max |a - b| / max |b| over the compared tensors (loss, gradients, parameters).
double check_step(const io::SafetensorsFile& in, std::string& worst) {
  Trainer t(in);
  Tensor loss = t.step().detach().reshape({1}).contiguous().clone();
  dist::all_reduce(loss, dist::ReduceOp::Mean);  // equal shards: the mean of means
  double err = 0;
  auto cmp = [&](const std::string& name, const Tensor& a, const Tensor& b) {
    const double scale = std::max(1e-12, max_abs_diff(b, zeros_like(b)));
    const double e = max_abs_diff(a.detach().reshape(b.shape()), b) / scale;
    if (!(e <= err)) err = e, worst = name;  // NaN counts as worst
  };
  cmp("loss", loss, in.get("loss"));
  // the averaged gradients (a gradient summed instead of averaged over ranks, or a lost
  // shard, fails here) and the parameters after the step, as mlp_train checks them
  for (auto& [name, p] : t.model->named_parameters()) {
    cmp("grad.param." + name, p.grad(), in.get("grad.param." + name));
    cmp("param_after." + name, p, in.get("param_after." + name));
  }
  return err;
}

}  // namespace

int main(int argc, char** argv) {
  dist::Environment env(argc, argv);
  CLI::App app{"kern side of the distributed benchmark workloads (under mpirun)"};
  std::string workload, inputs_path;
  int warmup = 3, iters = 10, threads = 1;
  app.add_option("--workload", workload, "workload id")->required();
  app.add_option("--inputs", inputs_path, "safetensors file exported by bench/pytorch_peer.py")->required();
  app.add_option("--threads", threads, "threads per rank")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "warm-up iterations")->check(CLI::NonNegativeNumber);
  app.add_option("--iters", iters, "timed iterations")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  if (workload != "ddp_mlp_train") {
    if (dist::rank() == 0) std::cout << "unsupported\n";
    std::cerr << "kern_bench_dist: workload '" << workload << "' is not implemented\n";
    return 3;
  }
  return dist::run_or_abort([&] {
    set_num_threads(threads);
    const auto in = io::load_safetensors(inputs_path);
    std::string worst;
    const double err = check_step(in, worst);
    Trainer t(in);
    for (int i = 0; i < warmup; ++i) t.step();
    std::vector<double> times;
    for (int i = 0; i < iters; ++i) {
      dist::barrier();
      const auto t0 = std::chrono::steady_clock::now();
      t.step();
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    // peak RSS: the largest rank's
    Tensor rss = from_vector<double>({ru.ru_maxrss / 1024.0}, {1});
    auto all_rss = dist::all_gather(rss);
    double peak = 0;
    for (auto& r : all_rss) peak = std::max(peak, r.item<double>());
    if (dist::rank() != 0) return;
    std::sort(times.begin(), times.end());
    const size_t n = times.size();
    const double median = n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
    nlohmann::json out = {{"id", workload},           {"median_s", median},
                          {"min_s", times.front()},   {"max_s", times.back()},
                          {"peak_rss_mb", peak},      {"check", err <= 1e-4 ? "pass" : "fail"},
                          {"max_abs_err", err},       {"max_rel_err", err},
                          {"worst", worst},           {"ranks", dist::world_size()},
                          {"threads_per_rank", threads}, {"gflops", 2.448 / median}};
    std::cout << out.dump() << std::endl;
  });
}
