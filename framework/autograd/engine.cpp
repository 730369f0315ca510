// The reverse-mode engine: records nodes, orders them, runs backward functions, reduces
// broadcast gradients to input shapes, accumulates, and (with create_graph) records the
// backward pass itself so it can be differentiated again.
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include "../ops/accumulate.hpp"
#include "forward_ad_internal.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>

namespace kern {

namespace {
thread_local bool g_grad_mode = true;
std::atomic<bool> g_anomaly{false};
std::atomic<uint64_t> g_next_seq{0};

// Post-accumulate-grad hooks by leaf (see autograd.hpp). The weak_ptr tells a live leaf from
// a freed one whose address was reused.
struct LeafHook {
  uint64_t id;
  std::weak_ptr<TensorImpl> leaf;
  PostAccumulateGradHook fn;
};
std::mutex g_hooks_mu;
std::unordered_map<const TensorImpl*, std::vector<LeafHook>> g_hooks;
std::atomic<uint64_t> g_next_hook{1};
std::atomic<size_t> g_num_hooks{0};
// Callbacks queued during the backward() calls running on this thread (innermost last).
thread_local std::vector<std::vector<std::function<void()>>*> g_callbacks;

// The live hooks of one leaf (a copy: a hook may register or remove hooks).
std::vector<LeafHook> hooks_of(const TensorImpl* impl) {
  std::lock_guard lock(g_hooks_mu);
  auto it = g_hooks.find(impl);
  if (it == g_hooks.end()) return {};
  std::vector<LeafHook> live;
  for (auto& h : it->second)
    if (auto p = h.leaf.lock(); p.get() == impl) live.push_back(h);
  return live;
}

bool has_non_finite(const Tensor& t) {
  if (!is_floating(t.dtype())) return false;
  NoGradGuard ng;
  for (double v : t.to_vector<double>())
    if (!std::isfinite(v)) return true;
  return false;
}

std::string describe_inputs(const std::vector<Tensor>& inputs) {
  std::string s;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (i) s += ", ";
    s += inputs[i].defined() ? fmt::format("{} {}", inputs[i].dtype(), inputs[i].shape()) : "undefined";
  }
  return s;
}

uint64_t version_of(const Tensor& t) { return t.defined() ? t.version() : 0; }
}  // namespace

SavedValues& SavedValues::input_for(size_t j, std::initializer_list<size_t> for_grads) {
  uint64_t mask = for_grads.size() == 0 ? ~uint64_t(0) : 0;
  for (size_t i : for_grads) {
    KERN_CHECK(i < 64, "SavedValues::input_for: gradient index ", i, " must be < 64");
    mask |= uint64_t(1) << i;
  }
  for (auto& [input, m] : reads_)
    if (input == j) {
      m = (m == ~uint64_t(0) || mask == ~uint64_t(0)) ? ~uint64_t(0) : (m | mask);
      return *this;
    }
  reads_.emplace_back(j, mask);
  return *this;
}

bool SavedValues::reads_input(size_t j, const std::vector<bool>& needs) const {
  if (all_) return true;
  for (auto& [input, mask] : reads_) {
    if (input != j) continue;
    if (mask == ~uint64_t(0)) return true;
    for (size_t i = 0; i < needs.size() && i < 64; ++i)
      if (needs[i] && (mask >> i & 1)) return true;
    return false;
  }
  return false;
}

namespace {
// Throws when a value the node's backward is about to read was written in place after the
// node recorded it (see "In-place writes and saved tensors" in autograd.hpp).
void check_saved_versions(const Node& n, const std::vector<Tensor>& inputs, const std::vector<uint64_t>& recorded,
                          const std::vector<bool>& needs, const Tensor& out, uint64_t out_recorded,
                          const SavedValues& saved) {
  auto fail = [&](const std::string& what, const Tensor& t, uint64_t was) {
    throw Error(fmt::format(
        "backward of op '{}': one of the variables needed for gradient computation has been modified by an "
        "inplace operation: {} ({} {}) is at version {}; the op recorded it at version {}. An in-place write "
        "(copy_, fill_, an init function, an optimizer step, ...) changed it after the forward pass: move the "
        "write after backward, or write into a clone()",
        n.name(), what, t.dtype(), t.shape(), t.version(), was));
  };
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].defined() && saved.reads_input(i, needs) && inputs[i].version() != recorded[i])
      fail(fmt::format("input {}", i), inputs[i], recorded[i]);
  if (saved.reads_output() && out.version() != out_recorded) fail("its output", out, out_recorded);
}
}  // namespace

uint64_t register_post_accumulate_grad_hook(const Tensor& leaf, PostAccumulateGradHook hook) {
  KERN_CHECK(leaf.defined() && leaf.is_leaf() && leaf.requires_grad(),
             "register_post_accumulate_grad_hook: expected a leaf that requires grad, got ",
             leaf.defined() ? fmt::format("{} {} (leaf: {}, requires_grad: {})", leaf.dtype(), leaf.shape(),
                                          leaf.is_leaf(), leaf.requires_grad())
                            : std::string("an undefined tensor"));
  KERN_CHECK(static_cast<bool>(hook), "register_post_accumulate_grad_hook: empty hook");
  std::lock_guard lock(g_hooks_mu);
  const TensorImpl* key = leaf.impl_ptr().get();
  auto& list = g_hooks[key];
  // drop hooks of a freed tensor that lived at this address
  std::erase_if(list, [&](const LeafHook& h) { return h.leaf.lock().get() != key; });
  uint64_t id = g_next_hook.fetch_add(1);
  list.push_back({id, leaf.impl_ptr(), std::move(hook)});
  g_num_hooks = 0;
  for (auto& [k, v] : g_hooks) g_num_hooks += v.size();
  return id;
}

bool remove_post_accumulate_grad_hook(uint64_t id) {
  std::lock_guard lock(g_hooks_mu);
  for (auto it = g_hooks.begin(); it != g_hooks.end(); ++it) {
    auto& list = it->second;
    auto before = list.size();
    std::erase_if(list, [&](const LeafHook& h) { return h.id == id; });
    if (list.size() == before) continue;
    if (list.empty()) g_hooks.erase(it);
    g_num_hooks = g_num_hooks - 1;
    return true;
  }
  return false;
}

void queue_backward_callback(std::function<void()> fn) {
  KERN_CHECK(!g_callbacks.empty(), "queue_backward_callback: no backward() is running on this thread");
  g_callbacks.back()->push_back(std::move(fn));
}

bool grad_mode_enabled() { return g_grad_mode; }
void set_grad_mode(bool enabled) { g_grad_mode = enabled; }
void set_anomaly_mode(bool enabled) { g_anomaly = enabled; }
bool anomaly_mode_enabled() { return g_anomaly; }

Tensor record_op(std::string_view name, Tensor output, std::vector<Tensor> inputs,
                 BackwardFn backward, SavedValues saved) {
  if (g_anomaly && has_non_finite(output))
    throw Error(fmt::format("anomaly: op '{}' produced NaN/Inf (inputs: {})", name,
                            describe_inputs(inputs)));
  if (!g_grad_mode) return output;
  // Under a forward level (forward_ad.hpp): record first, so a tangent computed with
  // create_graph is differentiable through the recorded output, then the tangent by the
  // local double-vjp fallback.
  if (detail::tangent_wanted(inputs)) {
    std::vector<Tensor> ins = inputs;
    BackwardFn bw = backward;
    Tensor out;
    {
      detail::SuspendForwardAD s;
      out = record_op(name, std::move(output), std::move(inputs), std::move(backward), std::move(saved));
    }
    return detail::attach_tangent(out, ins, detail::forward_tangent(name, ins, out, bw, nullptr));
  }
  bool any = false;
  for (auto& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return output;
  auto node = std::make_shared<Node>(std::string(name), std::move(inputs), std::move(backward),
                                     g_next_seq.fetch_add(1), std::move(saved));
  node->input_versions_.reserve(node->inputs_.size());
  for (auto& t : node->inputs_) node->input_versions_.push_back(version_of(t));
  node->output_version_ = output.version();
  node->output_ = output.impl_ptr();
  if (g_anomaly) node->context_ = describe_inputs(node->inputs_);
  // A view shares storage with its input but is a separate tensor in the graph.
  auto& impl = output.impl();
  if (impl.grad_fn || impl.requires_grad) {
    // `output` is an existing tensor (an op that returned its input unchanged): wrap it.
    auto fresh = std::make_shared<TensorImpl>(impl);
    fresh->grad.reset();
    output = Tensor(fresh);
  }
  output.impl().requires_grad = true;
  output.impl().grad_fn = std::move(node);
  return output;
}

Tensor record_op(std::string_view name, Tensor output, std::vector<Tensor> inputs, BackwardFn backward,
                 SavedValues saved, JvpRule jvp) {
  const bool want = g_grad_mode && detail::tangent_wanted(inputs);
  std::vector<Tensor> ins;
  BackwardFn bw;
  if (want) {
    ins = inputs;
    if (jvp.is_self_adjoint()) bw = backward;
  }
  Tensor out;
  {
    detail::SuspendForwardAD s;  // the rule gives the tangent below: no fallback
    out = record_op(name, std::move(output), std::move(inputs), std::move(backward), std::move(saved));
  }
  if (!want) return out;
  return detail::attach_tangent(out, ins, detail::forward_tangent(name, ins, out, bw, &jvp));
}

// One backward pass (like PyTorch's GraphTask): the reachable nodes in reverse topological
// order, which of them a wanted gradient passes through, and the gradients accumulated so
// far per node output and per leaf. run() drives the phases; each is a member below.
class Engine {
 public:
  // Runs the backward pass. If `targets` is empty, accumulates into every reached leaf's
  // .grad; otherwise returns the gradient of each target (undefined when unreached).
  static std::vector<Tensor> run(const std::vector<Tensor>& outputs,
                                 const std::vector<Tensor>& grad_outputs,
                                 const std::vector<Tensor>& targets, bool accumulate_leaves,
                                 bool retain_graph, bool create_graph);
  // Does n's backward read its output's values? (detail::node_reads_output)
  static bool reads_output(const Node& n) { return n.saved_.reads_output(); }

 private:
  Engine(const std::vector<Tensor>& targets, bool accumulate_leaves);
  void collect(const std::vector<Tensor>& outputs);
  void mark_useful();
  bool input_wanted(const Tensor& in);
  void seed(const std::vector<Tensor>& outputs, const std::vector<Tensor>& grad_outputs);
  void run_node(Node& n);
  void run_node_impl(Node& n);
  void count_leaf_edges();
  void leaf_edges_done(Node& n);
  void write_leaf_grad(const TensorImpl* impl, const Tensor& g);
  void release();
  std::vector<Tensor> deliver(const std::vector<Tensor>& targets, bool create_graph);

  // slot += g: in place when nothing else can see slot's buffer and no graph is recorded
  // (ops/accumulate.hpp), else out of place (with create_graph, the add is recorded).
  // Addition commutes bit for bit, so when only g's buffer is free, g += slot serves as well.
  // bf16 gradients (of autocast's bf16 operands, reached by more than one path in a double
  // backward) are added in float32 and rounded back, differentiably.
  void accumulate(Tensor& slot, Tensor g) const {
    if (!slot.defined()) {
      slot = std::move(g);
    } else if (g.dtype() == DType::BFloat16) {
      slot = (slot.to(DType::Float32) + g.to(DType::Float32)).to(DType::BFloat16);
    } else if (!create_graph_ && detail::can_accumulate_in_place(slot, g)) {
      detail::accumulate_in_place(slot, g);
    } else if (!create_graph_ && detail::can_accumulate_in_place(g, slot)) {
      detail::accumulate_in_place(g, slot);
      slot = std::move(g);
    } else {
      slot = slot + g;
    }
  }

  bool accumulate_leaves_;
  bool create_graph_ = false;
  std::vector<std::shared_ptr<Node>> nodes_;            // reverse topological order
  std::unordered_set<const TensorImpl*> target_leaves_;  // targets by impl (leaves) ...
  std::unordered_set<const Node*> target_nodes_;         // ... and by node (non-leaves)
  std::unordered_map<const Node*, bool> useful_;         // a wanted gradient passes through
  std::unordered_map<const Node*, Tensor> node_grads_;   // d/d output of each node
  std::unordered_map<const TensorImpl*, Tensor> leaf_grads_;
  // Post-accumulate hooks (backward() only, when any hook exists): the node edges still to
  // run into each leaf; at zero the leaf's .grad is final and its hooks fire.
  std::unordered_map<const TensorImpl*, int> leaf_pending_;
};

Engine::Engine(const std::vector<Tensor>& targets, bool accumulate_leaves) : accumulate_leaves_(accumulate_leaves) {
  for (auto& t : targets) {
    if (t.is_leaf()) target_leaves_.insert(t.impl_ptr().get());
    else target_nodes_.insert(t.grad_fn().get());
  }
}

// 1. Every node reachable from the outputs. Shared pointers keep them alive while released
//    nodes drop their inputs. Producers have smaller sequence numbers than consumers:
//    descending order is a valid reverse topological order.
void Engine::collect(const std::vector<Tensor>& outputs) {
  std::unordered_set<Node*> seen;
  std::vector<std::shared_ptr<Node>> stack;
  for (auto& o : outputs)
    if (o.grad_fn() && seen.insert(o.grad_fn().get()).second) stack.push_back(o.grad_fn());
  while (!stack.empty()) {
    std::shared_ptr<Node> n = stack.back();
    stack.pop_back();
    KERN_CHECK(!n->released(), "backward: trying to backward through the graph a second time (op '",
               n->name(), "'); pass retain_graph = true the first time");
    for (auto& in : n->inputs_)
      if (in.defined() && in.grad_fn() && seen.insert(in.grad_fn().get()).second) stack.push_back(in.grad_fn());
    nodes_.push_back(std::move(n));
  }
  std::sort(nodes_.begin(), nodes_.end(),
            [](const auto& a, const auto& b) { return a->sequence_nr() > b->sequence_nr(); });
}

// Does a gradient for this node input have to be computed?
bool Engine::input_wanted(const Tensor& in) {
  if (!in.defined() || !in.requires_grad()) return false;
  if (in.grad_fn()) return useful_[in.grad_fn().get()];
  return accumulate_leaves_ || target_leaves_.count(in.impl_ptr().get()) > 0;
}

// 2. A node is useful if a gradient must pass through it: ascending order sees inputs first.
void Engine::mark_useful() {
  for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) {
    Node* n = it->get();
    bool u = target_nodes_.count(n) > 0;
    for (auto& in : n->inputs_) u = u || input_wanted(in);
    useful_[n] = u;
  }
}

// 3. The output gradients (ones for a scalar output without one).
void Engine::seed(const std::vector<Tensor>& outputs, const std::vector<Tensor>& grad_outputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& o = outputs[i];
    KERN_CHECK(o.requires_grad(), "grad: output ", i, " (", o.dtype(), " ", o.shape(),
               ") does not require grad and has no grad_fn");
    Tensor g = i < grad_outputs.size() ? grad_outputs[i] : Tensor();
    if (!g.defined()) {
      KERN_CHECK(o.numel() == 1, "grad: output ", i, " has shape ", o.shape(),
                 "; a grad_output is required for non-scalar outputs");
      g = ones_like(o);
    }
    KERN_CHECK(g.shape() == o.shape(), "grad: grad_output ", i, " has shape ", g.shape(),
               " but the output has shape ", o.shape());
    if (o.grad_fn()) accumulate(node_grads_[o.grad_fn().get()], g);
    else accumulate(leaf_grads_[o.impl_ptr().get()], g);
  }
}

// 3b. With hooks: how many edges of useful nodes feed each leaf.
void Engine::count_leaf_edges() {
  for (auto& node : nodes_) {
    if (!useful_[node.get()]) continue;
    for (auto& in : node->inputs_)
      if (in.defined() && !in.grad_fn() && input_wanted(in)) ++leaf_pending_[in.impl_ptr().get()];
  }
}

// Writes (accumulates) one leaf's .grad; backward() leaves get it here, early when a hook
// waits for it, or in deliver().
void Engine::write_leaf_grad(const TensorImpl* impl, const Tensor& g) {
  auto* mut = const_cast<TensorImpl*>(impl);
  Tensor stored = create_graph_ ? g : g.detach();
  if (mut->grad) {
    Tensor prev(mut->grad);
    NoGradGuard ng;
    stored = create_graph_ ? prev + g : (prev + g).detach();
  }
  mut->grad = stored.impl_ptr();
}

// After node n: the leaves it fed that no other pending node feeds get their .grad now,
// then their hooks run.
void Engine::leaf_edges_done(Node& n) {
  for (auto& in : n.inputs_) {
    if (!in.defined() || in.grad_fn() || !input_wanted(in)) continue;
    const TensorImpl* impl = in.impl_ptr().get();
    auto pit = leaf_pending_.find(impl);
    if (pit == leaf_pending_.end() || --pit->second > 0) continue;
    leaf_pending_.erase(pit);
    auto git = leaf_grads_.find(impl);
    if (git == leaf_grads_.end()) continue;  // no gradient reached it in this pass
    auto hooks = hooks_of(impl);
    if (hooks.empty()) continue;
    write_leaf_grad(impl, git->second);
    leaf_grads_.erase(git);
    for (auto& h : hooks) h.fn(in);
  }
}

void Engine::run_node(Node& n) {
  if (!useful_[&n]) return;
  run_node_impl(n);
  if (!leaf_pending_.empty()) leaf_edges_done(n);
}

// 4. One node: its backward function (after the in-place check), then each input gradient
//    reduced to the input's shape and accumulated into its producer or leaf.
void Engine::run_node_impl(Node& n) {
  auto git = node_grads_.find(&n);
  if (git == node_grads_.end() || !git->second.defined()) return;
  Tensor g = git->second;
  std::vector<bool> needs(n.inputs_.size());
  bool any = false;
  for (size_t i = 0; i < needs.size(); ++i) any |= (needs[i] = input_wanted(n.inputs_[i]));
  Tensor out(n.output_.lock());
  if (!out.defined()) {
    // The output tensor is gone: nothing downstream holds it (a released root, or a bf16
    // autocast conversion, which records a storage-less alias of its float32 input; see
    // framework/autograd/autocast.cpp). A backward that reads the output's values cannot
    // run; one that reads none gets a storage-less stand-in with the output's shape and
    // dtype (those of its gradient).
    if (n.saved_.reads_output())
      throw Error(fmt::format("backward: the output of op '{}' was freed before backward", n.name()));
    auto stand_in = std::make_shared<TensorImpl>();
    stand_in->shape = g.shape();
    stand_in->strides = contiguous_strides(g.shape());
    stand_in->dtype = g.dtype();
    out = Tensor(std::move(stand_in));
  }
  std::vector<Tensor> in_grads;
  if (any) {
    check_saved_versions(n, n.inputs_, n.input_versions_, needs, out, n.output_version_, n.saved_);
    BackwardContext ctx{g, n.inputs_, out, needs};
    try {
      in_grads = n.fn_(ctx);
    } catch (const Error& e) {
      throw Error(fmt::format("in backward of op '{}': {}", n.name(), e.what()));
    }
    KERN_CHECK(in_grads.size() == n.inputs_.size(), "backward of '", n.name(), "' returned ",
               in_grads.size(), " gradients for ", n.inputs_.size(), " inputs");
  }
  for (size_t i = 0; i < in_grads.size(); ++i) {
    if (!needs[i] || !in_grads[i].defined()) continue;
    const Tensor& in = n.inputs_[i];
    Tensor gi = std::move(in_grads[i]);  // the slot may then own (and add into) its buffer
    if (gi.shape() != in.shape()) gi = sum_to(gi, in.shape());
    KERN_CHECK(gi.dtype() == in.dtype(), "backward of '", n.name(), "': gradient dtype ", gi.dtype(),
               " for input ", i, " of dtype ", in.dtype());
    if (g_anomaly && has_non_finite(gi))
      throw Error(fmt::format("anomaly: backward of op '{}' produced NaN/Inf for input {} (inputs: {})",
                              n.name(), i, n.context_.empty() ? describe_inputs(n.inputs_) : n.context_));
    if (in.grad_fn()) accumulate(node_grads_[in.grad_fn().get()], std::move(gi));
    else accumulate(leaf_grads_[in.impl_ptr().get()], std::move(gi));
  }
  if (!target_nodes_.count(&n)) node_grads_.erase(&n);
}

// Releases the graph (without retain_graph), only after every node ran: a node's saved
// inputs are other nodes' outputs.
void Engine::release() {
  for (auto& node : nodes_) {
    node->fn_ = nullptr;
    node->inputs_.clear();
  }
}

// 5. Leaves' .grad (backward()) or the targets' gradients (grad()).
std::vector<Tensor> Engine::deliver(const std::vector<Tensor>& targets, bool create_graph) {
  std::vector<Tensor> result;
  if (accumulate_leaves_) {
    // Leaves whose hooks already ran were written (and erased) in leaf_edges_done.
    for (auto& [impl, g] : leaf_grads_) write_leaf_grad(impl, g);
    if (g_num_hooks > 0)
      for (auto& [impl, g] : leaf_grads_)
        for (auto& h : hooks_of(impl))
          if (auto p = h.leaf.lock()) h.fn(Tensor(p));
    return result;
  }
  for (auto& t : targets) {
    if (t.is_leaf()) {
      auto it = leaf_grads_.find(t.impl_ptr().get());
      result.push_back(it == leaf_grads_.end() ? Tensor() : it->second);
    } else {
      auto it = node_grads_.find(t.grad_fn().get());
      result.push_back(it == node_grads_.end() ? Tensor() : it->second);
    }
  }
  return result;
}

std::vector<Tensor> Engine::run(const std::vector<Tensor>& outputs,
                                const std::vector<Tensor>& grad_outputs,
                                const std::vector<Tensor>& targets, bool accumulate_leaves,
                                bool retain_graph, bool create_graph) {
  Engine e(targets, accumulate_leaves);
  e.create_graph_ = create_graph;
  e.collect(outputs);
  e.mark_useful();
  e.seed(outputs, grad_outputs);
  if (accumulate_leaves && g_num_hooks > 0) e.count_leaf_edges();
  {
    // The backward functions record a graph of their own only with create_graph.
    std::optional<NoGradGuard> no_grad;
    std::optional<EnableGradGuard> with_grad;
    if (create_graph) with_grad.emplace(); else no_grad.emplace();
    for (auto& node : e.nodes_) e.run_node(*node);
    if (!retain_graph) e.release();
  }
  return e.deliver(targets, create_graph);
}

namespace {
// backward()'s queued callbacks (queue_backward_callback): pushed for the pass, run after
// every .grad was written, dropped if the pass throws.
class CallbackScope {
 public:
  CallbackScope() { g_callbacks.push_back(&queued_); }
  ~CallbackScope() {
    if (!g_callbacks.empty() && g_callbacks.back() == &queued_) g_callbacks.pop_back();
  }
  void run() {
    // a callback may queue more: they run too, in order
    for (size_t i = 0; i < queued_.size(); ++i) {
      auto fn = std::move(queued_[i]);
      fn();
    }
    queued_.clear();
  }

 private:
  std::vector<std::function<void()>> queued_;
};
}  // namespace

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, GradOptions options) {
  KERN_CHECK(!outputs.empty(), "grad: no outputs given");
  KERN_CHECK(grad_outputs.empty() || grad_outputs.size() == outputs.size(), "grad: ",
             grad_outputs.size(), " grad_outputs for ", outputs.size(), " outputs");
  for (size_t i = 0; i < inputs.size(); ++i)
    KERN_CHECK(inputs[i].defined() && inputs[i].requires_grad(), "grad: input ", i,
               " does not require grad");
  auto res = Engine::run(outputs, grad_outputs, inputs, false,
                         options.retain_graph || options.create_graph, options.create_graph);
  for (size_t i = 0; i < res.size(); ++i) {
    if (res[i].defined()) continue;
    KERN_CHECK(options.allow_unused, "grad: input ", i, " (", inputs[i].dtype(), " ",
               inputs[i].shape(), ") is not used by the outputs; pass allow_unused = true");
    res[i] = zeros_like(inputs[i]);
  }
  return res;
}

void Tensor::backward(const Tensor& grad_output, bool retain_graph, bool create_graph) const {
  CallbackScope callbacks;
  Engine::run({*this}, {grad_output}, {}, true, retain_graph || create_graph, create_graph);
  callbacks.run();
}

namespace detail {
bool node_reads_output(const Node& n) { return Engine::reads_output(n); }
}  // namespace detail

}  // namespace kern
