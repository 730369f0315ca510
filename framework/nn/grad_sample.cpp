// The per-sample gradient rule registry (see kern/nn/grad_sample.hpp).
#include <kern/nn/grad_sample.hpp>
#include <kern/nn/module.hpp>

#include <mutex>
#include <unordered_map>

namespace kern::nn {
namespace detail {
// kern_core's own rules (framework/nn/grad_sample_rules.cpp).
std::vector<std::pair<std::type_index, GradSampleRule>> core_grad_sample_rules();
}  // namespace detail

namespace {

struct Registry {
  // The core layers' rules are part of the registry from its first use: a load-time
  // registrar in kern_core could be dropped by a static link or run after a user's lookup.
  Registry() {
    for (auto& [type, rule] : detail::core_grad_sample_rules()) rules.insert_or_assign(type, std::move(rule));
  }
  std::mutex mutex;
  // Node-based map: pointers to rules stay valid while other types are registered.
  std::unordered_map<std::type_index, GradSampleRule> rules;
  std::unordered_map<std::type_index, std::vector<std::string>> covers;
};

// A function-local static: registrars in other translation units may run first.
Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void register_grad_sample_rule(std::type_index type, GradSampleRule rule, std::vector<std::string> covers) {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  r.rules.insert_or_assign(type, std::move(rule));
  r.covers.insert_or_assign(type, std::move(covers));
}

const GradSampleRule* find_grad_sample_rule(const Module& module) {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  auto it = r.rules.find(std::type_index(typeid(module)));
  return it == r.rules.end() ? nullptr : &it->second;
}

std::vector<std::string> grad_sample_covered_children(const Module& module) {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  auto it = r.covers.find(std::type_index(typeid(module)));
  return it == r.covers.end() ? std::vector<std::string>{} : it->second;
}

}  // namespace kern::nn
