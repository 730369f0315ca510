// Parameter groups from parameterization records.
#include <kern/optim/param_groups.hpp>

#include <unordered_set>

namespace kern::optim {

std::vector<ParamGroup> param_groups(const nn::Module& model, const ParamGroupsOptions& o) {
  ParamGroup group;
  group.family = o.family;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& [path, m] : model.named_modules()) {
    for (const nn::Slot* slot : m->slots()) {
      if (slot->is_buffer) continue;
      const Tensor& t = slot->current();
      if (!seen.insert(t.impl_ptr().get()).second) continue;  // tied parameters: once
      const param::ParamRecord* r = slot->record ? &*slot->record : nullptr;
      double lr_mult = 1.0, wd_mult = 1.0;
      if (r) {
        lr_mult = o.family == Family::Adam ? r->lr_mult_adam : r->lr_mult_sgd;
        wd_mult = o.family == Family::Adam ? r->wd_mult_adam : r->wd_mult_sgd;
      }
      group.params.push_back(t);
      group.lr_mult.push_back(lr_mult);
      group.wd_mult.push_back(o.decoupled_wd ? 1.0 : wd_mult);
    }
  }
  KERN_CHECK(!group.params.empty(), "optim::param_groups: ", model.name(), " has no parameters");
  return {std::move(group)};
}

}  // namespace kern::optim
