// nn::functional_call: validate the substitutes, swap them into the module's TensorImpls for
// the call (RAII), redirect the graph recorded during the call to the substitutes, restore.
#include <kern/nn/functional_call.hpp>
#include <kern/ops.hpp>

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

// Every parameter and buffer under every dotted name, in state_dict() order (tied tensors
// under each of their names; a module reachable twice is walked once, as state_dict does).
struct Target {
  std::string name;
  Tensor tensor;  // the module's own handle (shares the TensorImpl the layer reads)
};
std::vector<Target> targets_of(const Module& module) {
  std::vector<Target> out;
  for (auto& [prefix, m] : module.named_modules()) {
    auto dotted = [&](const std::string& n) { return prefix.empty() ? n : prefix + "." + n; };
    for (auto& [n, t] : m->named_parameters(false)) out.push_back({dotted(n), t});
    for (auto& [n, t] : m->named_buffers(false)) out.push_back({dotted(n), t});
  }
  return out;
}

// Checks the substitutes against the module; returns module TensorImpl -> substitute (one
// entry per distinct module tensor, so tied names share one substitute). Throws one Error
// listing every problem.
std::unordered_map<const TensorImpl*, Tensor> plan(const Module& module, const StateDict& given,
                                                   bool strict) {
  const std::vector<Target> targets = targets_of(module);
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
    const Tensor& own = it->second->tensor;
    if (!t.defined()) {
      mismatches.push_back(fmt::format("{}: expected {}, got an undefined tensor", name, describe(own)));
      continue;
    }
    if (t.shape() != own.shape() || t.dtype() != own.dtype()) {
      mismatches.push_back(fmt::format("{}: expected {}, got {}", name, describe(own), describe(t)));
      continue;
    }
    const TensorImpl* key = own.impl_ptr().get();
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
      if (!subs.count(t.tensor.impl_ptr().get())) missing.push_back(t.name);
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
  // A module tensor given as itself needs no swap.
  for (auto it = subs.begin(); it != subs.end();) {
    if (it->second.impl_ptr().get() == it->first) it = subs.erase(it);
    else ++it;
  }
  return subs;
}

// Puts each substitute's fields into the module's TensorImpl and restores the saved fields
// on destruction (normal return or exception), in reverse order.
class Substitution {
 public:
  explicit Substitution(const std::unordered_map<const TensorImpl*, Tensor>& subs,
                        const std::vector<Target>& targets) {
    // Copy every substitute's fields first: a substitute may itself be another module tensor
    // that is being replaced (give 'b.weight' as 'a.weight'), and must be read unreplaced.
    std::vector<TensorImpl> values;
    std::vector<std::shared_ptr<TensorImpl>> impls;
    std::unordered_set<const TensorImpl*> done;
    for (auto& t : targets) {
      const std::shared_ptr<TensorImpl>& impl = t.tensor.impl_ptr();
      auto it = subs.find(impl.get());
      if (it == subs.end() || !done.insert(impl.get()).second) continue;
      impls.push_back(impl);
      values.push_back(it->second.impl());
    }
    slots_.reserve(impls.size());
    for (size_t i = 0; i < impls.size(); ++i) {
      slots_.push_back({impls[i], *impls[i]});  // saved before it is overwritten: always restorable
      *impls[i] = std::move(values[i]);
    }
  }
  ~Substitution() {
    for (auto it = slots_.rbegin(); it != slots_.rend(); ++it) *it->impl = std::move(it->saved);
  }
  Substitution(const Substitution&) = delete;
  Substitution& operator=(const Substitution&) = delete;

 private:
  struct Slot {
    std::shared_ptr<TensorImpl> impl;
    TensorImpl saved;
  };
  std::vector<Slot> slots_;
};

// The sequence number of a node recorded now: nodes recorded later have larger ones, so this
// marks where the call's graph begins.
uint64_t current_sequence_nr() {
  EnableGradGuard eg;
  Tensor leaf = zeros({});
  leaf.requires_grad_(true);
  Tensor mark = record_op("functional_call", zeros({}), {leaf},
                          [](const BackwardContext&) { return std::vector<Tensor>{Tensor()}; });
  return mark.grad_fn()->sequence_nr();
}

// Redirects every input of every node recorded after `start` (and reachable from `out`) that
// is a replaced module TensorImpl to its substitute. The substitutes' own graphs are older
// than the call and are not walked (they may legitimately use the module's own tensors).
void redirect(Tensor& out, const std::unordered_map<const TensorImpl*, Tensor>& subs, uint64_t start) {
  if (auto it = subs.find(out.impl_ptr().get()); it != subs.end()) {
    out = it->second;  // forward returned a replaced tensor itself
    return;
  }
  std::vector<Node*> stack;
  std::unordered_set<const Node*> seen;
  auto push = [&](const std::shared_ptr<Node>& n) {
    if (n && n->sequence_nr() > start && seen.insert(n.get()).second) stack.push_back(n.get());
  };
  push(out.grad_fn());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    // Node exposes its inputs read-only; the node itself is a mutable heap object (made by
    // record_op), so writing through the reference is well defined. Rebinding an input to the
    // substitute changes neither its value nor its metadata: during the call the module's
    // TensorImpl was a field-for-field copy of the substitute's.
    auto& inputs = const_cast<std::vector<Tensor>&>(n->inputs());
    for (Tensor& in : inputs) {
      if (!in.defined()) continue;
      if (auto it = subs.find(in.impl_ptr().get()); it != subs.end()) {
        in = it->second;
        continue;
      }
      push(in.grad_fn());
    }
  }
}

}  // namespace

Tensor functional_call(Module& module, const StateDict& tensors, const std::function<Tensor(Module&)>& fn,
                       FunctionalCallOptions options) {
  KERN_CHECK(static_cast<bool>(fn), "functional_call: empty function for ", module.name());
  const auto subs = plan(module, tensors, options.strict);
  if (subs.empty()) return fn(module);
  const uint64_t start = current_sequence_nr();
  Tensor out;
  {
    Substitution swap(subs, targets_of(module));
    out = fn(module);
    if (out.defined()) redirect(out, subs, start);
  }  // restored here, and on an exception from fn
  return out;
}

Tensor functional_call(Module& module, const StateDict& tensors, const Tensor& input,
                       FunctionalCallOptions options) {
  return functional_call(
      module, tensors, [&input](Module& m) { return m(input); }, options);
}

}  // namespace kern::nn
