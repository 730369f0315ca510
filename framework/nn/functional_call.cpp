// nn::functional_call: validate the substitutes, put them into the module's slots for the
// call (RAII), restore the slots afterwards.
#include <kern/nn/functional_call.hpp>

#include <unordered_map>
#include <unordered_set>

namespace kern::nn {

namespace {

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string describe(const Tensor& t) { return fmt::format("{} {}", t.dtype(), t.shape()); }

// Every slot under every dotted name, in state_dict() order (tied tensors under each of their
// names; a module reachable twice is walked once, as state_dict does).
struct Target {
  std::string name;
  Slot* slot;
};
std::vector<Target> targets_of(Module& module) {
  std::vector<Target> out;
  for (auto& [prefix, m] : module.named_modules())
    for (Slot* s : m->slots()) out.push_back({prefix.empty() ? s->name : prefix + "." + s->name, s});
  return out;
}

// The identity of a slot's tensor: slots holding the same TensorImpl are tied.
const TensorImpl* key_of(const Slot* s) { return s->current().impl_ptr().get(); }

// Checks the substitutes against the module; returns tied-tensor key -> substitute. Throws one
// Error listing every problem.
std::unordered_map<const TensorImpl*, Tensor> plan(const Module& module,
                                                   const std::vector<Target>& targets,
                                                   const StateDict& given, bool strict) {
  std::unordered_map<std::string, const Target*> by_name;
  for (auto& t : targets) by_name.emplace(t.name, &t);

  std::vector<std::string> unknown, duplicates, mismatches, conflicts, missing;
  std::unordered_set<std::string> seen_names;
  std::unordered_map<const TensorImpl*, Tensor> subs;
  std::unordered_map<const TensorImpl*, std::string> sub_name;  // first name given per tensor
  for (auto& [name, t] : given) {
    if (!seen_names.insert(name).second) {
      duplicates.push_back(name);
      continue;
    }
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      unknown.push_back(name);
      continue;
    }
    const Tensor& own = it->second->slot->current();
    if (!t.defined()) {
      mismatches.push_back(fmt::format("{}: expected {}, got an undefined tensor", name, describe(own)));
      continue;
    }
    if (t.shape() != own.shape() || t.dtype() != own.dtype()) {
      mismatches.push_back(fmt::format("{}: expected {}, got {}", name, describe(own), describe(t)));
      continue;
    }
    const TensorImpl* key = key_of(it->second->slot);
    auto [pos, inserted] = subs.emplace(key, t);
    if (inserted) {
      sub_name.emplace(key, name);
    } else if (pos->second.impl_ptr() != t.impl_ptr()) {
      conflicts.push_back(fmt::format("{} and {} name one tied tensor ({}) but were given different tensors",
                                      sub_name[key], name, describe(own)));
    }
  }
  if (strict) {
    for (auto& t : targets)
      if (!subs.count(key_of(t.slot))) missing.push_back(t.name);
  }
  if (!unknown.empty() || !duplicates.empty() || !mismatches.empty() || !conflicts.empty() ||
      !missing.empty()) {
    std::string msg = fmt::format("functional_call: cannot call {} with the given tensors ({} given, {} "
                                  "parameters and buffers in the module{}):",
                                  module.name(), given.size(), targets.size(), strict ? ", strict" : "");
    if (!unknown.empty())
      msg += fmt::format("\n  unknown names ({}): {}", unknown.size(), join(unknown, ", "));
    if (!missing.empty())
      msg += fmt::format("\n  missing names ({}; strict = true needs every parameter and buffer): {}",
                         missing.size(), join(missing, ", "));
    if (!mismatches.empty())
      msg += fmt::format("\n  shape/dtype mismatches ({}):\n    {}", mismatches.size(), join(mismatches, "\n    "));
    if (!conflicts.empty())
      msg += fmt::format("\n  tied tensors given twice ({}):\n    {}", conflicts.size(), join(conflicts, "\n    "));
    if (!duplicates.empty())
      msg += fmt::format("\n  duplicate names ({}): {}", duplicates.size(), join(duplicates, ", "));
    throw Error(msg);
  }
  return subs;
}

// Puts each substitute into every slot holding the replaced tensor, and restores the slots'
// previous substitutes on destruction (normal return or exception), so calls nest.
class Substitution {
 public:
  Substitution(const std::unordered_map<const TensorImpl*, Tensor>& subs,
               const std::vector<Target>& targets) {
    // Decide every slot's substitute before setting any: a substitute may be another slot's
    // current tensor (give 'b.weight' as 'a.weight'), and the keys must be read unreplaced.
    std::unordered_set<Slot*> done;
    std::vector<std::pair<Slot*, Tensor>> plan;
    for (auto& t : targets) {
      auto it = subs.find(key_of(t.slot));
      if (it != subs.end() && done.insert(t.slot).second) plan.emplace_back(t.slot, it->second);
    }
    saved_.reserve(plan.size());
    for (auto& [slot, sub] : plan) {
      saved_.emplace_back(slot, slot->substitute);
      slot->substitute = sub;
    }
  }
  ~Substitution() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) it->first->substitute = it->second;
  }
  Substitution(const Substitution&) = delete;
  Substitution& operator=(const Substitution&) = delete;

 private:
  std::vector<std::pair<Slot*, Tensor>> saved_;  // slot, its previous substitute
};

}  // namespace

Tensor functional_call(Module& module, const StateDict& tensors, const std::function<Tensor(Module&)>& fn,
                       FunctionalCallOptions options) {
  KERN_CHECK(static_cast<bool>(fn), "functional_call: empty function for ", module.name());
  const std::vector<Target> targets = targets_of(module);
  const auto subs = plan(module, targets, tensors, options.strict);
  Substitution swap(subs, targets);  // restored when this returns or fn throws
  return fn(module);
}

Tensor functional_call(Module& module, const StateDict& tensors, const Tensor& input,
                       FunctionalCallOptions options) {
  return functional_call(
      module, tensors, [&input](Module& m) { return m(input); }, options);
}

}  // namespace kern::nn
