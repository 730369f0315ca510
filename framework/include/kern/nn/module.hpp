#pragma once
// nn::Module: the base of every layer and model.
//
// A module owns named parameters (leaf tensors that require grad), named buffers (state
// that is saved but not trained, e.g. BatchNorm's running statistics) and named child
// modules held by std::shared_ptr. Everything is registered by name, in order, so that
// named_parameters() / state_dict() give PyTorch's dotted names
// ("stages.0.blocks.0.conv_dw.weight") and a PyTorch checkpoint saved as safetensors loads
// unchanged.
//
// Calling a module:
//   - `module(x)` (operator(), non-virtual) runs the forward pre-hooks, then the virtual
//     `forward(x)`, then the forward hooks. Containers call their children this way.
//   - `module.forward(x)` runs forward only; hooks do NOT fire.
//
// Writing a module: parameters and buffers live in slots owned by the module;
// register_parameter / register_buffer return a handle (nn::Param / nn::Buffer) and forward
// reads the tensor through it, `scale()`:
//   struct Block : nn::Module {
//     Block() {
//       fc = register_module("fc", std::make_shared<nn::Linear>(8, 8));
//       scale = register_parameter("scale", ones({8}));
//     }
//     Tensor forward(const Tensor& x) override { return (*fc)(x) * scale(); }
//     std::string name() const override { return "Block"; }
//     std::shared_ptr<nn::Linear> fc;
//     nn::Param scale;
//   };
// Reading through the slot is what makes every parameterization (kern/param) and
// functional_call work for every module, including user-written ones, with no per-layer code:
// `scale()` is the slot's current tensor (functional_call's substitute during a call, else
// the module's own) times the parameterization's forward multiplier (no op without one).
// `scale.tensor()` is the current tensor itself, without the multiplier (for init code,
// inspection and re-parameterization).
//
// Modules are neither copyable nor meant to be shared by value: create them with
// std::make_shared (a module on the stack works too; named_modules() then returns
// non-owning pointers to it). Moving a module that nothing else refers to yet is allowed,
// which is what lets `nn::Sequential(nn::Linear(4, 8), nn::ReLU())` take modules by value.
#include <kern/autograd.hpp>
#include <kern/param/record.hpp>
#include <kern/tensor.hpp>

#include <concepts>
#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace kern::nn {

class Module;

/// A state dict: parameters then buffers of each module in registration order (pre-order
/// over the module tree), under dotted names. An ordered vector rather than a map: order is
/// meaningful (it is the order PyTorch writes) and it is exactly what
/// io::save_safetensors takes and io::load_safetensors(...).tensors returns.
/// The tensors are detached handles sharing storage with the module: clone() them to keep
/// a snapshot that later training will not change.
using StateDict = std::vector<std::pair<std::string, Tensor>>;

/// What a non-strict load_state_dict skipped (strict loads throw instead).
struct LoadStateDictResult {
  std::vector<std::string> missing_keys;     // in the module, absent from the state dict
  std::vector<std::string> unexpected_keys;  // in the state dict, absent from the module
  bool ok() const { return missing_keys.empty() && unexpected_keys.empty(); }
};

/// Identifies a registered hook (unique in the process).
using HookId = uint64_t;
/// Called before forward with the input; return a defined tensor to replace the input,
/// or an undefined Tensor() to keep it.
using ForwardPreHook = std::function<Tensor(Module& module, const Tensor& input)>;
/// Called after forward with the input and output; return a defined tensor to replace the
/// output, or an undefined Tensor() to keep it.
using ForwardHook =
    std::function<Tensor(Module& module, const Tensor& input, const Tensor& output)>;

/// One registered parameter or buffer. Owned by its module (a stable address for the
/// module's lifetime, also across a move of the module); handles (Param) point at it.
struct Slot {
  std::string name;          // the name inside the owning module ("weight")
  bool is_buffer = false;
  Tensor value;              // the module's own tensor
  Tensor substitute;         // functional_call's tensor during a call; undefined otherwise
  std::optional<param::ParamRecord> record;  // parameters only; set by param::apply
  double multiplier = 1.0;   // record->forward_multiplier(), cached; 1 without a record
  /// Which dims hold the output / input channels, when the module declared it
  /// (ParamOptions::layout); kern::param reads roles from it.
  std::optional<param::Layout> layout;

  /// The tensor the module computes with now (the substitute during functional_call).
  const Tensor& current() const { return substitute.defined() ? substitute : value; }
};

/// A handle to a parameter or buffer slot: what register_parameter / register_buffer return
/// and what layers keep as members (like libtorch's registered `Tensor&`, but indirect).
/// A default-constructed handle (an optional parameter that was not registered, e.g. a bias
/// with bias(false)) is undefined: `p()` and `p.tensor()` give an undefined Tensor.
class Param {
 public:
  Param() = default;
  /// The tensor forward uses: the slot's current tensor times its forward multiplier. With
  /// no parameterization record the multiplier is 1 and this is the tensor itself (a handle
  /// copy, no op recorded).
  Tensor operator()() const {
    if (slot_ == nullptr) return {};
    if (slot_->multiplier == 1.0) return slot_->current();
    return scaled();
  }
  /// The slot's current tensor, without the multiplier (a handle: in-place writes such as
  /// copy_ reach the parameter).
  Tensor tensor() const { return slot_ ? slot_->current() : Tensor(); }
  bool defined() const { return slot_ != nullptr && slot_->current().defined(); }
  explicit operator bool() const { return defined(); }
  /// The forward multiplier (1 without a parameterization record).
  double multiplier() const { return slot_ ? slot_->multiplier : 1.0; }
  /// The parameterization record, or nullptr.
  const param::ParamRecord* record() const {
    return slot_ && slot_->record ? &*slot_->record : nullptr;
  }
  /// Shortcuts for tensor().shape() / dtype().
  const Shape& shape() const { return slot_current().shape(); }
  DType dtype() const { return slot_current().dtype(); }

 private:
  friend class Module;
  explicit Param(Slot* slot) : slot_(slot) {}
  Tensor scaled() const;
  const Tensor& slot_current() const;  // throws on an undefined handle
  Slot* slot_ = nullptr;
};

/// Buffers are read the same way (`running_mean()`; never multiplied).
using Buffer = Param;

/// Options of Module::register_parameter.
struct ParamOptions {
  bool requires_grad = true;
  /// Which dims hold the output and input channels (kern/param/record.hpp). Declare it when
  /// the parameter is not laid out as PyTorch's [out, in, k...]: e.g. an embedding table
  /// [num, dim] is {1, 0}, a per-channel filter [1, H, L] is {1, 0}. Parameterizations read
  /// roles from it; without it, a parameter whose width dims do not fit [out, in, k...] is
  /// reported as undecidable.
  std::optional<param::Layout> layout;
};

class Module : public std::enable_shared_from_this<Module> {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  Module(Module&&) = default;
  Module& operator=(Module&&) = default;

  // ---- calling
  /// Pre-hooks (in registration order, each seeing the previous one's input), forward,
  /// then forward hooks (in order, each seeing the previous one's output).
  Tensor operator()(const Tensor& x);
  /// The computation. The base class throws (containers like ModuleList have none).
  virtual Tensor forward(const Tensor& x);

  // ---- printing
  /// The type name shown by repr() ("Linear", "Conv2d", ...).
  virtual std::string name() const { return "Module"; }
  /// The text inside the parentheses of repr(), e.g. "in_features=4, out_features=8, bias=True".
  virtual std::string extra_repr() const { return {}; }
  /// The module tree, printed like PyTorch:
  ///   Sequential(
  ///     (0): Linear(in_features=4, out_features=8, bias=True)
  ///     (1): ReLU()
  ///   )
  std::string repr() const;

  // ---- registration (names: non-empty, no '.'; a name is unique across parameters,
  // buffers and children; registering an existing name of the same kind replaces the slot's
  // tensor in place, so handles to it stay valid, and drops its parameterization record)
  /// Registers a parameter: a floating leaf (a non-leaf is detached first) with
  /// requires_grad set to `requires_grad`. Returns the handle forward reads it through.
  Param register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  Param register_parameter(const std::string& name, Tensor t, const ParamOptions& options);
  /// Registers a buffer (any dtype; not trained, but saved in state_dict and converted by to()).
  Buffer register_buffer(const std::string& name, Tensor t);
  /// Registers a child module and returns it (typed as given).
  template <class M>
    requires std::derived_from<M, Module>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    register_module_impl(name, module);
    return module;
  }

  // ---- traversal (registration order; recursion is pre-order: own entries first, then
  // each child's under "<child>."). Parameters and buffers are the slots' current tensors:
  // inside functional_call, the substitutes.
  /// Parameters under dotted names. A tensor registered under several names (tied weights)
  /// appears once, under its first name.
  std::vector<std::pair<std::string, Tensor>> named_parameters(bool recurse = true) const;
  std::vector<Tensor> parameters(bool recurse = true) const;
  std::vector<std::pair<std::string, Tensor>> named_buffers(bool recurse = true) const;
  std::vector<Tensor> buffers(bool recurse = true) const;
  /// Direct children.
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const;
  std::vector<std::shared_ptr<Module>> children() const;
  /// This module (name "") and all descendants, pre-order, each module once.
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules() const;
  std::vector<std::shared_ptr<Module>> modules() const;
  /// The descendant at a dotted path ("stages.0.blocks"); "" is this module. Throws if absent.
  std::shared_ptr<Module> get_submodule(const std::string& path) const;
  /// The parameter at a dotted path ("stages.0.blocks.0.gamma"). Throws if absent.
  Tensor get_parameter(const std::string& path) const;
  /// The buffer at a dotted path ("bn.running_mean"). Throws if absent.
  Tensor get_buffer(const std::string& path) const;

  // ---- modes
  /// Sets training mode on this module and all descendants (virtual: a module may react,
  /// but an override must call Module::train).
  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // ---- state
  /// Parameters and buffers (see StateDict). Unlike named_parameters, tied tensors appear
  /// under every name, as in PyTorch.
  StateDict state_dict() const;
  /// Copies the values of `state` into the parameters and buffers in place (under
  /// NoGradGuard, converting dtype if needed); handles held elsewhere (optimizers) stay valid.
  /// Everything is validated before anything is copied.
  /// strict: missing keys, unexpected keys, shape mismatches (and duplicate keys) are all
  ///   reported together in ONE kern::Error.
  /// non-strict: missing and unexpected keys are returned; shape mismatches and duplicate
  ///   keys still throw.
  LoadStateDictResult load_state_dict(const StateDict& state, bool strict = true);
  /// Same, from any range of (name, Tensor) pairs (std::map, std::unordered_map, ...).
  template <class Range>
    requires(!std::same_as<std::remove_cvref_t<Range>, StateDict>) && requires(const Range& r) {
      StateDict(r.begin(), r.end());
    }
  LoadStateDictResult load_state_dict(const Range& state, bool strict = true) {
    return load_state_dict(StateDict(state.begin(), state.end()), strict);
  }

  // ---- hooks (fire only through operator())
  /// Accepts a ForwardPreHook or a callable (Module&, const Tensor&) returning void.
  template <class F>
  HookId register_forward_pre_hook(F&& hook) {
    if constexpr (std::is_void_v<std::invoke_result_t<F&, Module&, const Tensor&>>) {
      return add_forward_pre_hook(
          [h = std::forward<F>(hook)](Module& m, const Tensor& x) mutable {
            h(m, x);
            return Tensor();
          });
    } else {
      return add_forward_pre_hook(ForwardPreHook(std::forward<F>(hook)));
    }
  }
  /// Accepts a ForwardHook or a callable (Module&, const Tensor& in, const Tensor& out)
  /// returning void.
  template <class F>
  HookId register_forward_hook(F&& hook) {
    if constexpr (std::is_void_v<
                      std::invoke_result_t<F&, Module&, const Tensor&, const Tensor&>>) {
      return add_forward_hook(
          [h = std::forward<F>(hook)](Module& m, const Tensor& x, const Tensor& y) mutable {
            h(m, x, y);
            return Tensor();
          });
    } else {
      return add_forward_hook(ForwardHook(std::forward<F>(hook)));
    }
  }
  /// Removes a hook of this module (not of its children); false if it was not found.
  bool remove_hook(HookId id);

  // ---- bulk operations
  /// Calls fn on every descendant, children before parents, then on this module (PyTorch's
  /// order). Typical use: custom initialization.
  void apply(const std::function<void(Module&)>& fn);
  /// Converts every floating parameter and buffer (and existing .grad) to `dtype` in place:
  /// the tensors keep their identity and requires_grad, so handles held elsewhere see the
  /// new dtype. Integer buffers (num_batches_tracked) are left alone, as in PyTorch.
  void to(DType dtype);
  /// Clears every parameter's .grad (set to none, like PyTorch's default).
  void zero_grad();

  // ---- slots and parameterization records (set by kern::param::apply; see
  // kern/param/record.hpp)
  /// This module's own slots: parameters in registration order, then buffers. The low-level
  /// access functional_call and param::apply use.
  std::vector<Slot*> slots();
  std::vector<const Slot*> slots() const;
  /// The record of this module's own parameter `name`, or nullptr when none was set.
  const param::ParamRecord* param_record(std::string_view name) const;
  /// Sets the record of own parameter `name` (throws if there is no such parameter); the
  /// slot's forward multiplier follows it.
  void set_param_record(const std::string& name, const param::ParamRecord& record);
  /// Removes this module's records (not its children's).
  void clear_param_records();
  /// The forward multiplier of own parameter `name`: 1 without a record.
  double param_multiplier(std::string_view name) const;

 protected:
  // Per-module registries, in registration order. Slots are heap-allocated so that handles
  // stay valid when the vectors grow or the module is moved.
  std::vector<std::unique_ptr<Slot>> params_;
  std::vector<std::unique_ptr<Slot>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;

 private:
  void register_module_impl(const std::string& name, std::shared_ptr<Module> module);
  void check_new_name(const std::string& name, const char* kind) const;
  Slot* register_slot(std::vector<std::unique_ptr<Slot>>& slots, const std::string& name,
                      Tensor t, bool is_buffer);
  Slot* find_param_slot(std::string_view name) const;
  HookId add_forward_pre_hook(ForwardPreHook hook);
  HookId add_forward_hook(ForwardHook hook);
  std::shared_ptr<Module> self_ptr() const;

  bool training_ = true;
  std::vector<std::pair<HookId, ForwardPreHook>> pre_hooks_;
  std::vector<std::pair<HookId, ForwardHook>> post_hooks_;
};

}  // namespace kern::nn

/// fmt::format("{}", module) prints module.repr(), for any Module subclass.
template <class T>
struct fmt::formatter<T, char, std::enable_if_t<std::is_base_of_v<kern::nn::Module, T>>>
    : fmt::formatter<std::string_view> {
  auto format(const T& m, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(m.repr(), ctx);
  }
};
