// Zoo-scale instrument workloads on a ConvNeXt-atto-like net (kern::models::ConvNeXt with
// dims 40/80/160/320, depths 2/2/6/2, kernel 7, in_chans 1, 10 classes, gamma = 1; input
// 1x32x32: spatial 8, 8, 4, 2, 1 through the stem and stages; 3.38 M parameters), loaded
// with the parameters PyTorch exported (timm names, strict):
//   zoo_ntk_convnext:        the full NTK [160, 160] of x [16,1,32,32] by tools::ntk with
//                            default options (Auto = structured per layer, contraction for
//                            the rest). Extras: NtkInfo's phases (seconds) and the
//                            parameters that fell back to contraction, the Jacobian's size
//                            (what functorch materializes) and the NTK's own memory peaks
//                            (memory.hpp).
//   zoo_sharpness_convnext:  tools::Hessian of mean cross-entropy on x [64,1,32,32] (one
//                            gradient with create_graph), then 20 power iterations from
//                            PyTorch's v0 (largest magnitude, tolerance off: PyHessian's
//                            eigenvalue() loop).
#include <kern/models/convnext.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/ntk.hpp>

#include "harness.hpp"
#include "memory.hpp"

namespace kern::bench {
namespace {

/// The net both workloads use, with the exported "param.<timm name>" tensors loaded.
std::shared_ptr<models::ConvNeXt> zoo_convnext(const io::SafetensorsFile& in) {
  auto model = std::make_shared<models::ConvNeXt>(models::ConvNeXtOptions{.depths = {2, 2, 6, 2},
                                                                         .dims = {40, 80, 160, 320},
                                                                         .num_classes = 10,
                                                                         .in_chans = 1,
                                                                         .kernel_size = 7,
                                                                         .ls_init_value = 1.0});
  nn::StateDict sd;
  for (auto& [k, t] : in.tensors)
    if (k.rfind("param.", 0) == 0) sd.emplace_back(k.substr(6), t);
  model->load_state_dict(sd);  // strict: every name and shape must match timm's
  model->eval();
  return model;
}

int64_t num_params(nn::Module& m) {
  int64_t P = 0;
  for (auto& p : m.parameters()) P += p.numel();
  return P;
}

Workload zoo_ntk(const io::SafetensorsFile& in, const Args&) {
  auto model = zoo_convnext(in);
  Tensor x = in.get("x"), expected = in.get("kernel"), out = in.get("out");
  KERN_CHECK(x.shape() == Shape({16, 1, 32, 32}), "zoo_ntk_convnext: expected x [16, 1, 32, 32], got ", x.shape());
  const int64_t P = num_params(*model);
  const double jacobian_mb = static_cast<double>(expected.size(0)) * P * 4 / (1024.0 * 1024.0);
  auto info = std::make_shared<tools::NtkInfo>();
  auto memory = std::make_shared<MemoryPeak>();

  Workload w;
  w.step = [model, x] { (void)tools::ntk(*model, x); };
  w.check = [model, x, expected, out, info, memory] {
    Comparator c(1e-4);
    {
      NoGradGuard ng;
      c.compare("out", (*model)(x), out);
    }
    (void)tools::ntk(*model, x);  // warm-up: oneDNN primitives, allocator
    Tensor K;
    *memory = memory_peak([&] { K = tools::ntk(*model, x, {}, info.get()); });
    c.compare("kernel", K, expected);
    return c.result();
  };
  w.extras = [info, memory, jacobian_mb, P](double) {
    nlohmann::json phases = nlohmann::json::object();
    for (auto& [name, s] : info->phases) phases[name] = s;
    return nlohmann::json{{"method", "auto"},
                          {"params", P},
                          {"structured_params", info->structured.size()},
                          {"fallback_params", info->fallback.size()},
                          {"fallback_names", info->fallback},
                          {"ntk_notes", info->notes},
                          {"ntk_phases_s", phases},
                          {"jacobian_mb", jacobian_mb},
                          {"ntk_live_peak_mb", memory->live_mb},
                          {"ntk_peak_rss_growth_mb", memory->rss_growth_mb}};
  };
  return w;
}

Workload zoo_sharpness(const io::SafetensorsFile& in, const Args&) {
  auto model = zoo_convnext(in);
  Tensor x = in.get("x"), labels = in.get("labels");
  KERN_CHECK(x.shape() == Shape({64, 1, 32, 32}), "zoo_sharpness_convnext: expected x [64, 1, 32, 32], got ",
             x.shape());
  // v0 in kern's parameter order (the Hessian's flat layout), looked up by timm name.
  std::vector<std::string> names;
  std::vector<Tensor> v0;
  for (auto& [name, p] : model->named_parameters()) {
    names.push_back(name);
    v0.push_back(in.get("v0." + name));
  }
  const tools::EigenOptions power{
      .k = 1, .which = tools::Which::LargestMagnitude, .max_iters = 20, .tol = 0.0, .v0 = tools::flatten_vectors(v0)};

  const double torch_eig = in.get("eigenvalue").to(DType::Float64).item<double>();
  auto kern_eig = std::make_shared<double>(0.0);

  Workload w;
  w.step = [=] {
    tools::Hessian H(*model, x, labels, tools::mean_cross_entropy);
    (void)tools::power_iteration(H, power);
  };
  w.check = [=, &in] {
    tools::Hessian H(*model, x, labels, tools::mean_cross_entropy);
    auto r = tools::power_iteration(H, power);
    *kern_eig = r.eigenvalues.at(0);
    Comparator c(2e-3);
    c.compare("loss", H.loss(), in.get("loss"));
    auto g = H.gradient();
    auto hv0 = H.apply_blocks(v0);
    for (size_t i = 0; i < names.size(); ++i) {
      c.compare("grad.param." + names[i], g[i], in.get("grad.param." + names[i]));
      c.compare("hv0." + names[i], hv0[i], in.get("hv0." + names[i]));
    }
    c.compare("eigenvalues", from_vector<double>(r.history.at(0), {20}), in.get("eigenvalues"));
    c.compare("eigenvalue", scalar_tensor(r.eigenvalues.at(0), DType::Float64), in.get("eigenvalue"));
    return c.result();
  };
  w.extras = [=](double) {
    return nlohmann::json{{"params", num_params(*model)},
                          {"eigenvalue", *kern_eig},
                          {"torch_eigenvalue", torch_eig},
                          {"eigenvalue_rel_err", std::abs(*kern_eig - torch_eig) / std::abs(torch_eig)}};
  };
  return w;
}

Register zoo_ntk_convnext("zoo_ntk_convnext", zoo_ntk);
Register zoo_sharpness_convnext("zoo_sharpness_convnext", zoo_sharpness);

}  // namespace
}  // namespace kern::bench
