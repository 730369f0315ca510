#pragma once
// Sequential (chains its children), ModuleList (holds them) and Functional (wraps a function).
// Children are named "0", "1", ... in order, as in PyTorch.
#include <kern/nn/module.hpp>

#include <concepts>
#include <functional>
#include <initializer_list>
#include <memory>
#include <type_traits>
#include <vector>

namespace kern::nn {

namespace detail {
template <class T>
struct is_module_ptr : std::false_type {};
template <class M>
struct is_module_ptr<std::shared_ptr<M>> : std::bool_constant<std::derived_from<M, Module>> {};

/// A module argument: a std::shared_ptr to a Module, or a Module (sub)class rvalue that is
/// moved into a new shared_ptr.
template <class T>
concept ModuleArg = is_module_ptr<std::remove_cvref_t<T>>::value ||
                    (std::derived_from<std::remove_cvref_t<T>, Module> &&
                     !std::is_lvalue_reference_v<T>);

template <class T>
std::shared_ptr<Module> to_module_ptr(T&& m) {
  if constexpr (is_module_ptr<std::remove_cvref_t<T>>::value) {
    return std::forward<T>(m);
  } else {
    return std::make_shared<std::remove_cvref_t<T>>(std::move(m));
  }
}
}  // namespace detail

/// Holds modules in order; no forward.
///   auto blocks = std::make_shared<nn::ModuleList>();
///   blocks->push_back(std::make_shared<Block>());   // registered as "0"
///   for (auto& b : *blocks) x = (*b)(x);
class ModuleList : public Module {
 public:
  ModuleList() = default;
  explicit ModuleList(std::vector<std::shared_ptr<Module>> modules);
  ModuleList(std::initializer_list<std::shared_ptr<Module>> modules)
      : ModuleList(std::vector<std::shared_ptr<Module>>(modules)) {}
  template <detail::ModuleArg... Ms>
    requires(sizeof...(Ms) > 0)
  explicit ModuleList(Ms&&... modules) {
    (push_back(detail::to_module_ptr(std::forward<Ms>(modules))), ...);
  }

  /// Appends (named by its index) and returns the module.
  template <class M>
    requires std::derived_from<M, Module>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    append(module);
    return module;
  }
  template <class M>
    requires(std::derived_from<std::remove_cvref_t<M>, Module> && !std::is_lvalue_reference_v<M>)
  std::shared_ptr<std::remove_cvref_t<M>> push_back(M&& module) {
    return push_back(std::make_shared<std::remove_cvref_t<M>>(std::move(module)));
  }

  /// Replaces the i-th module (same name "i"; throws when out of range). Used by module
  /// conversions such as nn::convert_sync_batchnorm.
  void set(size_t i, std::shared_ptr<Module> module);
  /// The i-th module (throws when out of range).
  std::shared_ptr<Module> operator[](size_t i) const;
  /// The i-th module as M (throws when out of range or of another type).
  template <class M>
  std::shared_ptr<M> at(size_t i) const {
    auto m = std::dynamic_pointer_cast<M>((*this)[i]);
    KERN_CHECK(m != nullptr, name(), "::at(", i, "): module is a ", (*this)[i]->name(),
               ", not the requested type");
    return m;
  }
  size_t size() const { return modules_.size(); }
  bool empty() const { return modules_.empty(); }
  auto begin() const { return modules_.begin(); }
  auto end() const { return modules_.end(); }

  std::string name() const override { return "ModuleList"; }

 protected:
  void append(std::shared_ptr<Module> module);
  std::vector<std::shared_ptr<Module>> modules_;
};

/// Runs its children in order: forward(x) = ...(*m1)((*m0)(x)) (through operator(), so the
/// children's hooks fire).
///   auto mlp = std::make_shared<nn::Sequential>(nn::Flatten(), nn::Linear(784, 128),
///                                               nn::ReLU(), nn::Linear(128, 10));
///   nn::Sequential({std::make_shared<nn::Linear>(4, 8), std::make_shared<nn::Tanh>()});
/// Note: a single Sequential rvalue argument is moved (the move constructor), not nested;
/// nest it with std::make_shared<nn::Sequential>(...) instead.
class Sequential : public ModuleList {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<std::shared_ptr<Module>> modules)
      : ModuleList(std::move(modules)) {}
  Sequential(std::initializer_list<std::shared_ptr<Module>> modules)
      : ModuleList(std::vector<std::shared_ptr<Module>>(modules)) {}
  template <detail::ModuleArg... Ms>
    requires(sizeof...(Ms) > 0)
  explicit Sequential(Ms&&... modules) {
    (push_back(detail::to_module_ptr(std::forward<Ms>(modules))), ...);
  }
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Sequential"; }
};

/// A module computing a function of its input (no parameters), e.g. for Sequential:
///   nn::Functional([](const Tensor& x) { return x.permute({0, 2, 3, 1}); }, "ToNHWC")
class Functional : public Module {
 public:
  explicit Functional(std::function<Tensor(const Tensor&)> fn, std::string label = "Functional");
  Tensor forward(const Tensor& x) override { return fn_(x); }
  std::string name() const override { return label_; }

 private:
  std::function<Tensor(const Tensor&)> fn_;
  std::string label_;
};

}  // namespace kern::nn
