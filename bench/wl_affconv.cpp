// affconv_train: forward + backward of the zoo's affconv_gl2 (models/lie) at batch 32 on 40x40
// inputs with one fixed sample set of 10 GL+(2) elements (PyTorch's draw, exported). One timed
// iteration: clear grads, logits, mean cross-entropy, backward (every parameter's grad); the
// filters are generated from the Siren kernels inside each iteration, as in training.
#include "harness.hpp"

#include <kern/models/affine_conv.hpp>

namespace kern::bench {
namespace {

namespace lie = models::lie;

Workload affconv_workload(const io::SafetensorsFile& in) {
  auto model = lie::affconv_gl2({.num_classes = 10, .in_chans = 1});
  nn::StateDict params;
  for (auto& [name, t] : in.tensors)
    if (name.rfind("param.", 0) == 0) params.emplace_back(name.substr(6), t);
  model->load_state_dict(params, true);
  model->train();
  lie::Samples s;
  s.group = lie::Group::GL2;
  s.g = in.get("samples.g");
  s.g_inv = in.get("samples.g_inv");
  s.weight = in.get("samples.weight");
  const Tensor x = in.get("x"), y = in.get("y");
  auto run = [model, s, x, y]() mutable {
    model->zero_grad();
    Tensor out = model->forward(x, s);
    Tensor loss = cross_entropy(out, y);
    loss.backward();
    return std::make_pair(out, loss);
  };
  Workload w;
  w.step = [run]() mutable { (void)run(); };
  w.check = [run, model, inputs = in]() mutable {
    auto [out, loss] = run();
    Comparator c(2e-4);
    c.compare("out", out, inputs.get("out"));
    c.compare("loss", loss, inputs.get("loss"));
    for (auto& [name, p] : model->named_parameters()) c.compare("grad.param." + name, p.grad(), inputs.get("grad.param." + name));
    return c.result();
  };
  return w;
}

Register affconv("affconv_train", [](const io::SafetensorsFile& in, const Args&) { return affconv_workload(in); });

}  // namespace
}  // namespace kern::bench
