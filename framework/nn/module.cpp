// nn::Module: registration, traversal, modes, state dicts, hooks, dtype conversion.
#include <kern/nn/module.hpp>

#include <atomic>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace kern::nn {

namespace {

std::atomic<HookId> next_hook_id{1};

// Indents every line after the first by two spaces (PyTorch's _addindent).
std::string indent_tail(const std::string& s) {
  std::string out;
  for (char c : s) {
    out += c;
    if (c == '\n') out += "  ";
  }
  return out;
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

// Pre-order walk: fn(prefix, module) for this module and each descendant once.
template <class Fn>
void walk(const Module& m, const std::string& prefix, std::unordered_set<const Module*>& seen,
          Fn&& fn) {
  if (!seen.insert(&m).second) return;
  fn(prefix, m);
  for (auto& [name, child] : m.named_children())
    walk(*child, prefix.empty() ? name : prefix + "." + name, seen, fn);
}

std::string dotted(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

const std::string& entry_name(const std::unique_ptr<Slot>& s) { return s->name; }
template <class T>
const std::string& entry_name(const std::pair<std::string, T>& e) { return e.first; }

// (name, current tensor) of each slot.
std::vector<std::pair<std::string, Tensor>> named_current(
    const std::vector<std::unique_ptr<Slot>>& slots) {
  std::vector<std::pair<std::string, Tensor>> out;
  out.reserve(slots.size());
  for (auto& s : slots) out.emplace_back(s->name, s->current());
  return out;
}

}  // namespace

// ---- Param

Tensor Param::scaled() const { return slot_->current() * slot_->multiplier; }

const Tensor& Param::slot_current() const {
  KERN_CHECK(slot_ != nullptr, "nn::Param: use of an unregistered (undefined) parameter handle");
  return slot_->current();
}

// ---- calling

Tensor Module::operator()(const Tensor& x) {
  if (pre_hooks_.empty() && post_hooks_.empty()) return forward(x);
  // Iterate over copies: a hook may remove itself (or register another) while running.
  Tensor input = x;
  for (auto [id, hook] : std::vector(pre_hooks_)) {
    Tensor r = hook(*this, input);
    if (r.defined()) input = r;
  }
  Tensor output = forward(input);
  for (auto [id, hook] : std::vector(post_hooks_)) {
    Tensor r = hook(*this, input, output);
    if (r.defined()) output = r;
  }
  return output;
}

Tensor Module::forward(const Tensor& x) {
  KERN_CHECK(false, name(), ": forward() is not implemented (input ", x.shape(),
             "); containers such as ModuleList hold modules but do not chain them");
  return {};
}

// ---- printing

std::string Module::repr() const {
  std::vector<std::string> lines;
  const std::string extra = extra_repr();
  if (!extra.empty()) {
    size_t start = 0;
    while (start <= extra.size()) {
      size_t end = extra.find('\n', start);
      if (end == std::string::npos) end = extra.size();
      lines.push_back(extra.substr(start, end - start));
      start = end + 1;
    }
  }
  for (auto& [n, child] : children_) lines.push_back("(" + n + "): " + indent_tail(child->repr()));
  if (children_.empty()) return name() + "(" + extra + ")";
  std::string out = name() + "(";
  for (auto& l : lines) out += "\n  " + l;
  return out + "\n)";
}

// ---- registration

void Module::check_new_name(const std::string& name, const char* kind) const {
  KERN_CHECK(!name.empty(), this->name(), ": register_", kind, ": the name must not be empty");
  KERN_CHECK(name.find('.') == std::string::npos, this->name(), ": register_", kind, ": name '",
             name, "' must not contain '.' (dots separate module paths)");
  auto has = [&](const auto& v) {
    for (auto& e : v)
      if (entry_name(e) == name) return true;
    return false;
  };
  const std::string k = kind;
  KERN_CHECK(k == "parameter" || !has(params_), this->name(), ": register_", kind, ": '", name,
             "' is already a parameter");
  KERN_CHECK(k == "buffer" || !has(buffers_), this->name(), ": register_", kind, ": '", name,
             "' is already a buffer");
  KERN_CHECK(k == "module" || !has(children_), this->name(), ": register_", kind, ": '", name,
             "' is already a child module");
}

template <class V, class T>
static void insert_or_replace(V& v, const std::string& name, T value) {
  for (auto& e : v)
    if (e.first == name) {
      e.second = std::move(value);
      return;
    }
  v.emplace_back(name, std::move(value));
}

Slot* Module::register_slot(std::vector<std::unique_ptr<Slot>>& slots, const std::string& name,
                            Tensor t, bool is_buffer) {
  for (auto& s : slots)
    if (s->name == name) {
      s->value = std::move(t);  // same slot: existing handles see the new tensor
      s->record.reset();        // a record described the old tensor
      s->multiplier = 1.0;
      return s.get();
    }
  auto slot = std::make_unique<Slot>();
  slot->name = name;
  slot->is_buffer = is_buffer;
  slot->value = std::move(t);
  slots.push_back(std::move(slot));
  return slots.back().get();
}

Param Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  return register_parameter(name, std::move(t), ParamOptions{.requires_grad = requires_grad});
}

Param Module::register_parameter(const std::string& name, Tensor t, const ParamOptions& options) {
  check_new_name(name, "parameter");
  KERN_CHECK(t.defined(), this->name(), ": register_parameter: '", name, "' is undefined");
  KERN_CHECK(is_floating(t.dtype()), this->name(), ": register_parameter: '", name,
             "' must be floating point, got ", t.dtype(), " ", t.shape());
  if (options.layout) {
    const auto [o, i] = *options.layout;
    const int64_t nd = t.dim();
    KERN_CHECK(o >= -1 && o < nd && i >= -1 && i < nd && (o != i || o == -1), this->name(),
               ": register_parameter: '", name, "' ", t.shape(), ": layout {out_dim ", o,
               ", in_dim ", i, "} must name distinct dims of the parameter (or -1)");
  }
  if (!t.is_leaf()) t = t.detach();
  t.requires_grad_(options.requires_grad);
  Slot* slot = register_slot(params_, name, std::move(t), /*is_buffer=*/false);
  slot->layout = options.layout;
  return Param(slot);
}

Buffer Module::register_buffer(const std::string& name, Tensor t) {
  check_new_name(name, "buffer");
  KERN_CHECK(t.defined(), this->name(), ": register_buffer: '", name, "' is undefined");
  return Buffer(register_slot(buffers_, name, std::move(t), /*is_buffer=*/true));
}

void Module::register_module_impl(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name(name, "module");
  KERN_CHECK(module != nullptr, this->name(), ": register_module: '", name, "' is null");
  KERN_CHECK(module.get() != this, this->name(), ": register_module: '", name,
             "' is the module itself");
  insert_or_replace(children_, name, std::move(module));
}

// ---- traversal

std::vector<std::pair<std::string, Tensor>> Module::named_parameters(bool recurse) const {
  if (!recurse) return named_current(params_);
  std::vector<std::pair<std::string, Tensor>> out;
  std::unordered_set<const TensorImpl*> seen_tensors;
  std::unordered_set<const Module*> seen;
  walk(*this, "", seen, [&](const std::string& prefix, const Module& m) {
    for (auto& s : m.params_)
      if (seen_tensors.insert(s->current().impl_ptr().get()).second)
        out.emplace_back(dotted(prefix, s->name), s->current());
  });
  return out;
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters(recurse)) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers(bool recurse) const {
  if (!recurse) return named_current(buffers_);
  std::vector<std::pair<std::string, Tensor>> out;
  std::unordered_set<const TensorImpl*> seen_tensors;
  std::unordered_set<const Module*> seen;
  walk(*this, "", seen, [&](const std::string& prefix, const Module& m) {
    for (auto& s : m.buffers_)
      if (seen_tensors.insert(s->current().impl_ptr().get()).second)
        out.emplace_back(dotted(prefix, s->name), s->current());
  });
  return out;
}

std::vector<Tensor> Module::buffers(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_buffers(recurse)) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_children() const {
  return children_;
}

std::vector<std::shared_ptr<Module>> Module::children() const {
  std::vector<std::shared_ptr<Module>> out;
  for (auto& [n, c] : children_) out.push_back(c);
  return out;
}

std::shared_ptr<Module> Module::self_ptr() const {
  // Owned by a shared_ptr: share ownership. On the stack: a non-owning pointer (aliasing
  // constructor with an empty owner), valid as long as the module is.
  auto* self = const_cast<Module*>(this);
  if (auto p = self->weak_from_this().lock()) return p;
  return std::shared_ptr<Module>(std::shared_ptr<Module>(), self);
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() const {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  out.emplace_back("", self_ptr());
  std::unordered_set<const Module*> seen{this};
  // Pre-order, children recorded with the shared_ptr their parent holds.
  std::function<void(const Module&, const std::string&)> rec = [&](const Module& m,
                                                                    const std::string& prefix) {
    for (auto& [n, c] : m.children_) {
      if (!seen.insert(c.get()).second) continue;
      out.emplace_back(dotted(prefix, n), c);
      rec(*c, dotted(prefix, n));
    }
  };
  rec(*this, "");
  return out;
}

std::vector<std::shared_ptr<Module>> Module::modules() const {
  std::vector<std::shared_ptr<Module>> out;
  for (auto& [n, m] : named_modules()) out.push_back(m);
  return out;
}

std::shared_ptr<Module> Module::get_submodule(const std::string& path) const {
  std::shared_ptr<Module> cur = self_ptr();
  if (path.empty()) return cur;
  size_t start = 0;
  std::string walked;
  while (true) {
    const size_t end = path.find('.', start);
    const std::string part = path.substr(start, end == std::string::npos ? end : end - start);
    std::shared_ptr<Module> next;
    for (auto& [n, c] : cur->children_)
      if (n == part) next = c;
    if (!next) {
      std::vector<std::string> names;
      for (auto& [n, c] : cur->children_) names.push_back(n);
      KERN_CHECK(false, name(), ": get_submodule('", path, "'): ",
                 walked.empty() ? name() : "'" + walked + "' (" + cur->name() + ")",
                 " has no child '", part, "'; children: [", join(names, ", "), "]");
    }
    cur = next;
    walked = dotted(walked, part);
    if (end == std::string::npos) return cur;
    start = end + 1;
  }
}

namespace {
// Splits "a.b.c" into the module path "a.b" and the leaf name "c".
std::pair<std::string, std::string> split_leaf(const std::string& path) {
  const size_t dot = path.rfind('.');
  if (dot == std::string::npos) return {"", path};
  return {path.substr(0, dot), path.substr(dot + 1)};
}
}  // namespace

Tensor Module::get_parameter(const std::string& path) const {
  auto [mod, leaf] = split_leaf(path);
  auto m = get_submodule(mod);
  for (auto& s : m->params_)
    if (s->name == leaf) return s->current();
  KERN_CHECK(false, name(), ": get_parameter('", path, "'): ", m->name(), " has no parameter '",
             leaf, "'");
  return {};
}

Tensor Module::get_buffer(const std::string& path) const {
  auto [mod, leaf] = split_leaf(path);
  auto m = get_submodule(mod);
  for (auto& s : m->buffers_)
    if (s->name == leaf) return s->current();
  KERN_CHECK(false, name(), ": get_buffer('", path, "'): ", m->name(), " has no buffer '", leaf,
             "'");
  return {};
}

// ---- modes

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

// ---- state

StateDict Module::state_dict() const {
  StateDict out;
  std::unordered_set<const Module*> seen;
  walk(*this, "", seen, [&](const std::string& prefix, const Module& m) {
    for (auto& s : m.params_) out.emplace_back(dotted(prefix, s->name), s->current().detach());
    for (auto& s : m.buffers_) out.emplace_back(dotted(prefix, s->name), s->current().detach());
  });
  return out;
}

LoadStateDictResult Module::load_state_dict(const StateDict& state, bool strict) {
  // Targets: every parameter and buffer under its dotted name (tied tensors under each).
  StateDict targets;
  {
    std::unordered_set<const Module*> seen;
    walk(*this, "", seen, [&](const std::string& prefix, const Module& m) {
      for (auto& s : m.params_) targets.emplace_back(dotted(prefix, s->name), s->current());
      for (auto& s : m.buffers_) targets.emplace_back(dotted(prefix, s->name), s->current());
    });
  }
  std::unordered_map<std::string, size_t> given;  // key -> index in `state`
  std::vector<std::string> duplicates;
  for (size_t i = 0; i < state.size(); ++i) {
    if (!given.emplace(state[i].first, i).second) duplicates.push_back(state[i].first);
  }

  LoadStateDictResult result;
  std::vector<std::string> mismatches;
  std::unordered_set<std::string> expected;
  for (auto& [key, target] : targets) {
    expected.insert(key);
    auto it = given.find(key);
    if (it == given.end()) {
      result.missing_keys.push_back(key);
      continue;
    }
    const Tensor& src = state[it->second].second;
    if (!src.defined()) {
      mismatches.push_back(fmt::format("{}: expected shape {}, got an undefined tensor", key,
                                       target.shape()));
    } else if (src.shape() != target.shape()) {
      mismatches.push_back(
          fmt::format("{}: expected shape {}, got {}", key, target.shape(), src.shape()));
    }
  }
  for (auto& [key, t] : state)
    if (!expected.count(key)) result.unexpected_keys.push_back(key);

  const bool key_errors = strict && !result.ok();
  if (key_errors || !mismatches.empty() || !duplicates.empty()) {
    std::string msg = fmt::format("load_state_dict: cannot load into {} ({} key{} given, {} expected){}:",
                                  name(), state.size(), state.size() == 1 ? "" : "s",
                                  targets.size(), strict ? "" : " [non-strict]");
    if (strict && !result.missing_keys.empty())
      msg += fmt::format("\n  missing keys ({}): {}", result.missing_keys.size(),
                         join(result.missing_keys, ", "));
    if (strict && !result.unexpected_keys.empty())
      msg += fmt::format("\n  unexpected keys ({}): {}", result.unexpected_keys.size(),
                         join(result.unexpected_keys, ", "));
    if (!mismatches.empty())
      msg += fmt::format("\n  shape mismatches ({}):\n    {}", mismatches.size(),
                         join(mismatches, "\n    "));
    if (!duplicates.empty())
      msg += fmt::format("\n  duplicate keys ({}): {}", duplicates.size(), join(duplicates, ", "));
    throw Error(msg);
  }

  NoGradGuard no_grad;
  for (auto& [key, target] : targets) {
    auto it = given.find(key);
    if (it == given.end()) continue;
    Tensor dst = target;
    dst.copy_(state[it->second].second);
  }
  return result;
}

// ---- hooks

HookId Module::add_forward_pre_hook(ForwardPreHook hook) {
  KERN_CHECK(static_cast<bool>(hook), name(), ": register_forward_pre_hook: empty hook");
  const HookId id = next_hook_id++;
  pre_hooks_.emplace_back(id, std::move(hook));
  return id;
}

HookId Module::add_forward_hook(ForwardHook hook) {
  KERN_CHECK(static_cast<bool>(hook), name(), ": register_forward_hook: empty hook");
  const HookId id = next_hook_id++;
  post_hooks_.emplace_back(id, std::move(hook));
  return id;
}

bool Module::remove_hook(HookId id) {
  auto erase = [id](auto& v) {
    for (auto it = v.begin(); it != v.end(); ++it)
      if (it->first == id) {
        v.erase(it);
        return true;
      }
    return false;
  };
  return erase(pre_hooks_) || erase(post_hooks_);
}

// ---- bulk operations

void Module::apply(const std::function<void(Module&)>& fn) {
  // Post-order over the tree (each module once), as torch.nn.Module.apply.
  std::unordered_set<const Module*> seen;
  std::function<void(Module&)> rec = [&](Module& m) {
    if (!seen.insert(&m).second) return;
    for (auto& [n, c] : m.children_) rec(*c);
    fn(m);
  };
  rec(*this);
}

namespace {
// Swaps a tensor's storage for a converted copy, keeping the TensorImpl (and so every
// handle to it, its requires_grad and its leaf status).
void convert_in_place(const Tensor& t, DType dtype, std::unordered_set<const TensorImpl*>& done) {
  if (!done.insert(t.impl_ptr().get()).second) return;
  if (!is_floating(t.dtype()) || t.dtype() == dtype) return;
  NoGradGuard no_grad;
  Tensor c = t.detach().to(dtype).contiguous();
  TensorImpl& impl = t.impl();
  impl.storage = c.impl().storage;
  impl.shape = c.shape();
  impl.strides = c.strides();
  impl.offset = c.storage_offset();
  impl.dtype = dtype;
  if (impl.grad) impl.grad = Tensor(impl.grad).detach().to(dtype).contiguous().impl_ptr();
}
}  // namespace

void Module::to(DType dtype) {
  KERN_CHECK(is_floating(dtype), name(), ": to(", dtype,
             "): modules convert to floating dtypes only");
  std::unordered_set<const TensorImpl*> done;
  apply([&](Module& m) {
    for (auto& s : m.params_) convert_in_place(s->value, dtype, done);
    for (auto& s : m.buffers_) convert_in_place(s->value, dtype, done);
  });
}

void Module::zero_grad() {
  for (auto& p : parameters()) p.zero_grad();
}

// ---- slots and parameterization records

std::vector<Slot*> Module::slots() {
  std::vector<Slot*> out;
  for (auto& s : params_) out.push_back(s.get());
  for (auto& s : buffers_) out.push_back(s.get());
  return out;
}

std::vector<const Slot*> Module::slots() const {
  std::vector<const Slot*> out;
  for (auto& s : params_) out.push_back(s.get());
  for (auto& s : buffers_) out.push_back(s.get());
  return out;
}

Slot* Module::find_param_slot(std::string_view name) const {
  for (auto& s : params_)
    if (s->name == name) return s.get();
  return nullptr;
}

const param::ParamRecord* Module::param_record(std::string_view name) const {
  const Slot* s = find_param_slot(name);
  return s && s->record ? &*s->record : nullptr;
}

void Module::set_param_record(const std::string& name, const param::ParamRecord& record) {
  Slot* s = find_param_slot(name);
  KERN_CHECK(s != nullptr, this->name(), ": set_param_record: no parameter '", name, "'");
  s->record = record;
  s->multiplier = record.forward_multiplier();
}

void Module::clear_param_records() {
  for (auto& s : params_) {
    s->record.reset();
    s->multiplier = 1.0;
  }
}

double Module::param_multiplier(std::string_view name) const {
  const Slot* s = find_param_slot(name);
  return s ? s->multiplier : 1.0;
}

}  // namespace kern::nn
