// nn::SyncBatchNorm (batch statistics over all ranks, exact gradient through
// dist::functional::all_reduce) and convert_sync_batchnorm. See kern/dist/sync_batch_norm.hpp.
#include <kern/dist/dist.hpp>
#include <kern/dist/sync_batch_norm.hpp>
#include <kern/nn/container.hpp>
#include <kern/ops/elementwise.hpp>
#include <kern/ops/reduce.hpp>
#include <kern/ops/shape_ops.hpp>

namespace kern::nn {

Tensor SyncBatchNorm::forward(const Tensor& x) {
  const auto& o = options();
  const int64_t C = o.num_features();
  const bool use_batch_stats = is_training() || !o.track_running_stats();
  if (!use_batch_stats || !dist::is_initialized()) return BatchNorm2d::forward(x);
  KERN_CHECK(x.dim() == 4 && x.size(1) == C, "SyncBatchNorm(", C, "): expected input [N, ", C, ", H, W], got ",
             x.shape());
  // num_batches_tracked and the momentum, as BatchNorm2d::forward (torch's _BatchNorm).
  double factor = o.momentum().value_or(0.0);
  const bool update = is_training() && o.track_running_stats();
  if (update) {
    Tensor count = num_batches_tracked();
    const double seen = count.item() + 1;
    NoGradGuard ng;
    count.fill_(seen);
    if (!o.momentum()) factor = 1.0 / seen;
  }
  // M: values per channel over all ranks.
  Tensor m_all = scalar_tensor(static_cast<double>(x.size(0) * x.size(2) * x.size(3)), DType::Int64);
  dist::all_reduce(m_all);
  const double M = m_all.item();
  KERN_CHECK(M > 1, "SyncBatchNorm(", C, "): expected more than 1 value per channel over all ranks when "
             "training, got ", M, " (this rank's input ", x.shape(), ")");
  const Shape per_channel{1, C, 1, 1};
  Tensor mean = dist::functional::all_reduce(sum(x, {0, 2, 3})) / M;  // [C]
  Tensor xc = x - reshape(mean, per_channel);
  Tensor var = dist::functional::all_reduce(sum(xc * xc, {0, 2, 3})) / M;  // [C], biased
  Tensor y = xc * reshape(rsqrt(var + o.eps()), per_channel);
  if (weight) y = y * reshape(weight(), per_channel);
  if (bias) y = y + reshape(bias(), per_channel);
  if (update) {
    NoGradGuard ng;
    Tensor rm = running_mean(), rv = running_var();
    rm.copy_(rm * (1.0 - factor) + mean.detach() * factor);
    rv.copy_(rv * (1.0 - factor) + var.detach() * (factor * M / (M - 1.0)));  // unbiased, as PyTorch
  }
  return y;
}

namespace {
bool is_plain_batchnorm(const std::shared_ptr<Module>& m) {
  return std::dynamic_pointer_cast<BatchNorm2d>(m) != nullptr && std::dynamic_pointer_cast<SyncBatchNorm>(m) == nullptr;
}

std::shared_ptr<Module> to_sync(const std::shared_ptr<Module>& m) {
  auto bn = std::dynamic_pointer_cast<BatchNorm2d>(m);
  auto s = std::make_shared<SyncBatchNorm>(bn->options());
  DType dtype = bn->weight ? bn->weight.tensor().dtype()
                           : (bn->running_mean ? bn->running_mean.tensor().dtype() : DType::Float32);
  s->to(dtype);
  s->load_state_dict(bn->state_dict());
  s->train(bn->is_training());
  for (auto& [n, p] : bn->named_parameters(false))
    if (!p.requires_grad()) s->get_parameter(n).requires_grad_(false);
  return s;
}
}  // namespace

std::shared_ptr<Module> convert_sync_batchnorm(std::shared_ptr<Module> module) {
  KERN_CHECK(module != nullptr, "convert_sync_batchnorm: the module is null");
  if (is_plain_batchnorm(module)) return to_sync(module);
  for (auto& [path, m] : module->named_modules()) {
    for (auto& [name, child] : m->named_children()) {
      if (!is_plain_batchnorm(child)) continue;
      auto* list = dynamic_cast<ModuleList*>(m.get());
      KERN_CHECK(list != nullptr, "convert_sync_batchnorm: the BatchNorm2d at '", path.empty() ? "" : path + ".",
                 name, "' is a child of ", m->name(), ", which is not a Sequential or ModuleList and may hold it "
                 "in a typed member; construct that module with nn::SyncBatchNorm instead");
      list->set(std::stoul(name), to_sync(child));
    }
  }
  return module;
}

}  // namespace kern::nn
