// sharpness_mlp: the top Hessian eigenvalue of a mean cross-entropy loss by 20 power
// iterations of exact Hessian-vector products (double backward), through kern::tools.
//   MLP Linear(784,256) Tanh Linear(256,256) Tanh Linear(256,10), x [512, 784], labels [512].
// One timed iteration = forward, gradient with create_graph (tools::Hessian), then 20 x
// (H v, Rayleigh quotient, v <- Hv / |Hv|) from PyTorch's v0 (tools::power_iteration, tol 0).
#include <kern/tools/hessian.hpp>

#include "harness.hpp"

namespace kern::bench {
namespace {

const std::vector<std::string> kParams = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"};

Tensor mlp_loss(const std::vector<Tensor>& p, const Tensor& x, const Tensor& labels) {
  Tensor h = tanh(linear(x, p[0], p[1]));  // [512, 256]
  h = tanh(linear(h, p[2], p[3]));         // [512, 256]
  return cross_entropy(linear(h, p[4], p[5]), labels);
}

Workload sharpness_workload(const io::SafetensorsFile& in, const Args&) {
  std::vector<Tensor> params, v0;
  for (auto& n : kParams) {
    Tensor p = in.get("param." + n).clone();
    p.requires_grad_(true);
    params.push_back(p);
    v0.push_back(in.get("v0." + n));
  }
  Tensor x = in.get("x"), labels = in.get("labels");
  KERN_CHECK(x.shape() == Shape({512, 784}), "sharpness_mlp: expected x [512, 784], got ", x.shape());
  Tensor v0_flat = tools::flatten_vectors(v0);
  const tools::EigenOptions power{.k = 1, .max_iters = 20, .tol = 0.0, .v0 = v0_flat};

  Workload w;
  w.step = [=] {
    tools::Hessian H(mlp_loss(params, x, labels), params);
    (void)tools::power_iteration(H, power);
  };
  w.check = [=, &in] {
    tools::Hessian H(mlp_loss(params, x, labels), params);
    auto r = tools::power_iteration(H, power);
    Comparator c(2e-3);
    c.compare("loss", H.loss(), in.get("loss"));
    auto g = H.gradient();
    auto hv0 = H.apply_blocks(v0);
    for (size_t i = 0; i < kParams.size(); ++i) {
      c.compare("grad.param." + kParams[i], g[i], in.get("grad.param." + kParams[i]));
      c.compare("hv0." + kParams[i], hv0[i], in.get("hv0." + kParams[i]));
    }
    c.compare("eigenvalues", from_vector<double>(r.history.at(0), {20}), in.get("eigenvalues"));
    c.compare("eigenvalue", scalar_tensor(r.eigenvalues.at(0), DType::Float64), in.get("eigenvalue"));
    return c.result();
  };
  return w;
}

Register sharpness_mlp("sharpness_mlp", sharpness_workload);

}  // namespace
}  // namespace kern::bench
