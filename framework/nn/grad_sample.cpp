// The per-sample gradient rule registry (see kern/nn/grad_sample.hpp).
#include <kern/nn/grad_sample.hpp>
#include <kern/nn/module.hpp>

#include <mutex>
#include <unordered_map>

namespace kern::nn {
namespace {

struct Registry {
  std::mutex mutex;
  // Node-based map: pointers to rules stay valid while other types are registered.
  std::unordered_map<std::type_index, GradSampleRule> rules;
};

// A function-local static: registrars in other translation units may run first.
Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void register_grad_sample_rule(std::type_index type, GradSampleRule rule) {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  r.rules.insert_or_assign(type, std::move(rule));
}

const GradSampleRule* find_grad_sample_rule(const Module& module) {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  auto it = r.rules.find(std::type_index(typeid(module)));
  return it == r.rules.end() ? nullptr : &it->second;
}

}  // namespace kern::nn
