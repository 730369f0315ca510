// ModuleList, Sequential, Functional.
#include <kern/nn/container.hpp>

#include <string>

namespace kern::nn {

ModuleList::ModuleList(std::vector<std::shared_ptr<Module>> modules) {
  for (auto& m : modules) append(std::move(m));
}

void ModuleList::append(std::shared_ptr<Module> module) {
  KERN_CHECK(module != nullptr, name(), "::push_back: module ", modules_.size(), " is null");
  register_module(std::to_string(modules_.size()), module);
  modules_.push_back(std::move(module));
}

void ModuleList::set(size_t i, std::shared_ptr<Module> module) {
  KERN_CHECK(i < modules_.size(), name(), "::set(", i, "): index out of range (size ", modules_.size(), ")");
  KERN_CHECK(module != nullptr, name(), "::set(", i, "): module is null");
  register_module(std::to_string(i), module);
  modules_[i] = std::move(module);
}

std::shared_ptr<Module> ModuleList::operator[](size_t i) const {
  KERN_CHECK(i < modules_.size(), name(), "[", i, "]: index out of range (size ", modules_.size(),
             ")");
  return modules_[i];
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (auto& m : modules_) h = (*m)(h);
  return h;
}

Functional::Functional(std::function<Tensor(const Tensor&)> fn, std::string label)
    : fn_(std::move(fn)), label_(std::move(label)) {
  KERN_CHECK(static_cast<bool>(fn_), "Functional: empty function");
}

}  // namespace kern::nn
