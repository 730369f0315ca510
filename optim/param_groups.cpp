// Parameter groups from parameterization records.
#include <kern/optim/param_groups.hpp>

#include <unordered_set>

namespace kern::optim {

std::vector<ParamGroup> param_groups(const nn::Module& model, const ParamGroupsOptions& o) {
  KERN_CHECK(o.lr >= 0.0 && o.weight_decay >= 0.0, "optim::param_groups: lr (", o.lr,
             ") and weight_decay (", o.weight_decay, ") must be >= 0");
  std::vector<ParamGroup> groups;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& [path, m] : model.named_modules()) {
    for (auto& [leaf, t] : m->named_parameters(false)) {
      if (!seen.insert(t.impl_ptr().get()).second) continue;  // tied parameters: once
      const param::ParamRecord* r = m->param_record(leaf);
      double lr_mult = 1.0, wd_mult = 1.0;
      if (r) {
        lr_mult = o.family == Family::Adam ? r->lr_mult_adam : r->lr_mult_sgd;
        wd_mult = o.family == Family::Adam ? r->wd_mult_adam : r->wd_mult_sgd;
      }
      const double wd = o.decoupled_wd ? o.weight_decay : o.weight_decay * wd_mult;
      ParamGroup* g = nullptr;
      for (auto& cand : groups)
        if (*cand.weight_decay == wd) g = &cand;
      if (!g) {
        groups.push_back(ParamGroup{{}, o.lr, wd, {}});
        g = &groups.back();
      }
      g->params.push_back(t);
      g->lr_mult.push_back(lr_mult);
    }
  }
  KERN_CHECK(!groups.empty(), "optim::param_groups: ", model.name(), " has no parameters");
  return groups;
}

}  // namespace kern::optim
