// Distributed instruments (issue 15) == the single-process ones on the full batch: the
// reference runs inside every rank on the whole batch with plain tools:: calls (no dist
// code). N = 7 examples split 4 / 3 over 2 ranks, so a missing n_r / N weighting (a sum of
// per-rank means) or a lost shard changes every result. float64, relative tolerance 1e-10.
#include "check.hpp"

#include <kern/tools/distributed.hpp>

using namespace kern;

namespace {

constexpr int64_t kN = 7, kIn = 5, kOut = 3;
constexpr double kTol = 1e-10;

std::shared_ptr<nn::Sequential> make_mlp() {
  manual_seed(7);  // the same parameters on every rank
  auto m = std::make_shared<nn::Sequential>();
  m->push_back(nn::Linear(kIn, 8));
  m->push_back(nn::Tanh());
  m->push_back(nn::Linear(8, kOut));
  m->to(DType::Float64);
  return m;
}

std::pair<Tensor, Tensor> batch(int64_t n = kN) {
  Generator gen(11);
  return {randn({n, kIn}, DType::Float64, &gen), randint(0, kOut, {n}, &gen)};
}

// This rank's rows of x and y.
std::pair<Tensor, Tensor> my_shard(const Tensor& x, const Tensor& y) {
  auto [b, e] = tools::shard_range(x.size(0), dist::rank(), dist::world_size());
  return {x.narrow(0, b, e - b), y.narrow(0, b, e - b)};
}

void check_close(double got, double want, const char* what) {
  const double err = std::abs(got - want) / std::max(1.0, std::abs(want));
  DCHECK(err <= kTol, what, ": distributed ", got, " vs single-process ", want, " (rel. error ", err, ")");
}
void check_close(const Tensor& got, const Tensor& want, const char* what) {
  DCHECK(got.shape() == want.shape(), what, ": shape ", got.shape(), " vs ", want.shape());
  double scale = 1.0;
  for (double v : want.to_vector<double>()) scale = std::max(scale, std::abs(v));
  const double err = maxdiff(got, want) / scale;
  DCHECK(err <= kTol, what, ": max rel. difference ", err);
}

// Every rank must hold the same result: compare with rank 0's.
void check_replicated(double v, const char* what) {
  auto all = dist::all_gather(from_vector<double>({v}, {1}));
  for (auto& a : all) DCHECK(a.item<double>() == v, what, ": ranks disagree: ", a.item<double>(), " vs ", v);
}


Register power("hessian_power", [] {
  auto model = make_mlp();
  auto [x, y] = batch();
  tools::Hessian full(*model, x, y, tools::mean_cross_entropy);
  auto [xs, ys] = my_shard(x, y);
  tools::DistributedHessian H(*model, xs, ys, tools::mean_cross_entropy);
  DCHECK(H.global_examples() == kN);
  check_close(H.loss().item<double>(), full.loss().item<double>(), "loss");
  check_close(H.gradient(), tools::flatten_vectors(full.gradient()), "gradient");
  // one product on a probe
  Generator gen(3);
  Tensor v = randn({full.size()}, DType::Float64, &gen);
  check_close(H.apply(v), full.apply(v), "H v");
  DCHECK(H.products() == 1);
  // sharpness: fixed iteration count (tol 0) so both runs do the same steps
  tools::EigenOptions o{.k = 2, .max_iters = 200, .tol = 0.0, .seed = 5};
  auto a = tools::power_iteration(H, o), b = tools::power_iteration(full, o);
  for (int i = 0; i < 2; ++i) {
    check_close(a.eigenvalues[i], b.eigenvalues[i], "power_iteration eigenvalue");
    check_close(a.eigenvectors[i], b.eigenvectors[i], "power_iteration eigenvector");
    check_replicated(a.eigenvalues[i], "power_iteration eigenvalue");
  }
  DCHECK(a.products == b.products && H.products() == 1 + a.products);
});

Register lanczos("hessian_lanczos", [] {
  auto model = make_mlp();
  auto [x, y] = batch();
  tools::Hessian full(*model, x, y, tools::mean_cross_entropy);
  auto [xs, ys] = my_shard(x, y);
  tools::DistributedHessian H(*model, xs, ys, tools::mean_cross_entropy);
  tools::EigenOptions o{.k = 3, .max_iters = 40, .tol = 0.0, .seed = 1};
  auto a = tools::lanczos(H, o), b = tools::lanczos(full, o);
  DCHECK(a.eigenvalues.size() == 3 && b.eigenvalues.size() == 3);
  for (int i = 0; i < 3; ++i) {
    check_close(a.eigenvalues[i], b.eigenvalues[i], "lanczos eigenvalue");
    check_replicated(a.eigenvalues[i], "lanczos eigenvalue");
  }
});

Register trace("hessian_trace", [] {
  auto model = make_mlp();
  auto [x, y] = batch();
  tools::Hessian full(*model, x, y, tools::mean_cross_entropy);
  auto [xs, ys] = my_shard(x, y);
  tools::DistributedHessian H(*model, xs, ys, tools::mean_cross_entropy);
  tools::TraceOptions o{.samples = 30, .min_samples = 30, .seed = 9};
  auto a = tools::hutchinson_trace(H, o), b = tools::hutchinson_trace(full, o);
  DCHECK(a.samples.size() == 30 && b.samples.size() == 30);
  for (size_t i = 0; i < a.samples.size(); ++i) check_close(a.samples[i], b.samples[i], "z^T H z");
  check_close(a.trace, b.trace, "hutchinson trace");
  check_replicated(a.trace, "hutchinson trace");
  DCHECK(H.products() == 30);  // one all-reduce per probe
  // and the exact trace, sum_i e_i^T H e_i, through the distributed operator
  double exact = 0;
  for (int64_t i = 0; i < H.size(); ++i) {
    Tensor e = zeros({H.size()}, DType::Float64);
    e.narrow(0, i, 1).fill_(1.0);
    exact += H.apply(e).narrow(0, i, 1).item<double>();
  }
  double exact_full = 0;
  for (int64_t i = 0; i < full.size(); ++i) {
    Tensor e = zeros({full.size()}, DType::Float64);
    e.narrow(0, i, 1).fill_(1.0);
    exact_full += full.apply(e).narrow(0, i, 1).item<double>();
  }
  check_close(exact, exact_full, "exact trace");
});

Register slq("hessian_slq", [] {
  auto model = make_mlp();
  auto [x, y] = batch();
  tools::Hessian full(*model, x, y, tools::mean_cross_entropy);
  auto [xs, ys] = my_shard(x, y);
  tools::DistributedHessian H(*model, xs, ys, tools::mean_cross_entropy);
  tools::DensityOptions o{.runs = 3, .steps = 20, .grid_points = 50, .seed = 2};
  auto a = tools::slq_density(H, o), b = tools::slq_density(full, o);
  DCHECK(a.nodes.size() == b.nodes.size());
  for (size_t i = 0; i < a.nodes.size(); ++i) {
    check_close(a.nodes[i], b.nodes[i], "slq node");
    check_close(a.weights[i], b.weights[i], "slq weight");
  }
  check_close(a.mean, b.mean, "slq mean");
});

Register errors("hessian_errors", [] {
  auto model = make_mlp();
  auto [x, y] = batch();
  // rank 1 (the last rank) without examples: the same error on every rank, no hang
  const bool last = dist::rank() == dist::world_size() - 1;
  Tensor xs = last ? x.narrow(0, 0, 0) : x, ys = last ? y.narrow(0, 0, 0) : y;
  DCHECK_THROWS(tools::DistributedHessian(*model, xs, ys, tools::mean_cross_entropy),
                "DistributedHessian", "examples");
  // fewer NTK rows than ranks
  DCHECK_THROWS(tools::distributed_ntk(*model, x.narrow(0, 0, 1), x), "distributed_ntk", "fewer rows");
  // x1 not replicated
  Tensor x1 = dist::rank() == 0 ? x : x.narrow(0, 0, kN - 1);
  DCHECK_THROWS(tools::distributed_ntk(*model, x1, x), "distributed_ntk", "differ across ranks");
});

Register ntk_full("ntk_full", [] {
  auto model = make_mlp();
  auto [x, y] = batch();
  Generator gen(4);
  Tensor x2 = randn({5, kIn}, DType::Float64, &gen);
  for (auto method : {tools::NtkMethod::Auto, tools::NtkMethod::Contraction, tools::NtkMethod::Vector}) {
    auto opt = tools::NtkOptions().method(method);
    Tensor K = tools::distributed_ntk(*model, x, x2, opt);
    DCHECK(K.shape() == Shape({kN * kOut, 5 * kOut}), "got ", K.shape());
    check_close(K, tools::ntk(*model, x, x2, opt), "ntk(x1, x2)");
  }
  // K(x, x) against the Jacobian-contraction reference
  Tensor K = tools::distributed_ntk(*model, x);
  check_close(K, tools::ntk(*model, x, tools::NtkOptions().method(tools::NtkMethod::Contraction)), "ntk(x)");
  check_replicated(K.sum().item<double>(), "ntk(x)");
});

Register ntk_traced("ntk_traced", [] {
  auto model = make_mlp();
  auto [x, y] = batch();
  Tensor K = tools::distributed_ntk_traced(*model, x);
  DCHECK(K.shape() == Shape({kN, kN}));
  check_close(K, tools::ntk_traced(*model, x, tools::NtkOptions().method(tools::NtkMethod::Contraction)), "ntk_traced(x)");
  auto sum = tools::NtkOptions().trace(tools::NtkTrace::Sum);
  check_close(tools::distributed_ntk_traced(*model, x, x.narrow(0, 0, 3), sum),
              tools::ntk_traced(*model, x, x.narrow(0, 0, 3), sum), "ntk_traced(x1, x2) sum");
});

}  // namespace
