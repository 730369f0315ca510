#pragma once
// Define-by-run reverse-mode autograd.
//
// Each differentiable op records a Node holding its inputs and a backward function. The
// engine hands the backward function (grad_output, inputs, output); the output is held
// weakly by the node (holding it strongly would make a shared_ptr cycle). Backward
// functions are written with kern's own differentiable ops, so running them with
// create_graph = true records a graph of the backward pass itself: derivatives of any order
// are exact. Gradients returned for broadcast inputs are reduced to the input's shape once,
// in the engine (sum_to), never inside an op.
//
// In-place writes and saved tensors (PyTorch's version counters). Every tensor's storage
// carries a version that each in-place write bumps: copy_, fill_, the nn::init functions,
// optimizer steps (also under NoGradGuard), BatchNorm's running-stat update, and anything
// that calls Tensor::bump_version(). Views and detach() share it (they share the storage).
// record_op notes the version of each input and of the output; before a node's backward
// runs, the engine compares the current versions of the tensors that backward *reads* with
// the noted ones and throws a kern::Error naming the op, the input (index, dtype, shape) or
// the output, and both versions, instead of computing a gradient from overwritten values.
// What a backward reads is declared per op with SavedValues (default: every input and the
// output, always safe); ops whose backward only uses shapes (add, sub, views, sum, cat, ...)
// declare none(), so writing into their inputs afterwards is fine, as in PyTorch. An input
// can be read only for another input's gradient (mul, mm, conv2d: x is read only for the
// weight's gradient); it is then checked only when that gradient is computed. Consequences:
//   - opt.step() after backward() is fine; between forward and backward it throws if an op
//     whose backward reads the parameter (matmul by another tensor that needs a gradient,
//     conv2d's input gradient, mul, ...) recorded it;
//   - BatchNorm's running statistics are not read by the training-mode backward;
//   - in eval mode the backward reads running_mean (the weight's gradient depends on it),
//     so updating the statistics between that forward and its backward throws.
#include <kern/tensor.hpp>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace kern {

/// Which recorded values a backward function reads (beyond shapes and dtypes): only these
/// are checked for in-place modification before it runs (see the file comment).
class SavedValues {
 public:
  /// Every input and the output (record_op's default: right for any backward).
  static SavedValues all() { return SavedValues(true); }
  /// Nothing: the backward uses only the incoming gradient and shapes (add, views, sum, ...).
  static SavedValues none() { return SavedValues(false); }
  /// inputs[j]'s values are read whenever the backward runs.
  SavedValues& input(size_t j) { return input_for(j, {}); }
  /// inputs[j]'s values are read only to compute the gradients of `for_grads` (input
  /// indices < 64); empty means always. mul(a, b): input_for(0, {1}).input_for(1, {0}).
  SavedValues& input_for(size_t j, std::initializer_list<size_t> for_grads);
  /// The output's values are read (exp, tanh, sigmoid, softmax, ...).
  SavedValues& output() {
    output_ = true;
    return *this;
  }
  /// Does a backward that computes the gradients flagged in `needs` read inputs[j]?
  bool reads_input(size_t j, const std::vector<bool>& needs) const;
  bool reads_output() const { return all_ || output_; }

 private:
  explicit SavedValues(bool all) : all_(all) {}
  bool all_;
  bool output_ = false;
  std::vector<std::pair<size_t, uint64_t>> reads_;  // (input, mask of gradients; ~0 = always)
};
/// What a backward function receives.
struct BackwardContext {
  const Tensor& grad;                 // d loss / d output, shaped like the output
  const std::vector<Tensor>& inputs;  // the op's tensor inputs, as recorded
  const Tensor& output;               // the op's output
  const std::vector<bool>& needs;     // needs[i]: is a gradient for inputs[i] wanted?
  bool needs_input_grad(size_t i) const { return needs[i]; }
};

/// Returns one gradient per input (an undefined Tensor where none is needed or it is zero).
using BackwardFn = std::function<std::vector<Tensor>(const BackwardContext&)>;

class Node {
 public:
  Node(std::string op, std::vector<Tensor> inputs, BackwardFn fn, uint64_t seq, SavedValues saved)
      : op_(std::move(op)), inputs_(std::move(inputs)), fn_(std::move(fn)), seq_(seq), saved_(std::move(saved)) {}
  const std::string& name() const { return op_; }
  const std::vector<Tensor>& inputs() const { return inputs_; }
  uint64_t sequence_nr() const { return seq_; }
  bool released() const { return !fn_; }

 private:
  friend class Engine;
  friend Tensor record_op(std::string_view, Tensor, std::vector<Tensor>, BackwardFn, SavedValues);
  std::string op_;
  std::vector<Tensor> inputs_;
  BackwardFn fn_;
  uint64_t seq_;
  SavedValues saved_;
  std::vector<uint64_t> input_versions_;  // inputs_[i]'s version when recorded
  uint64_t output_version_ = 0;
  std::weak_ptr<TensorImpl> output_;
  std::string context_;  // input shapes/dtypes, for error and anomaly messages
};

/// Records `output` as produced by op `name` from `inputs` when grad mode is on and any
/// input requires grad; returns `output` (now carrying its grad_fn). Ops call this after
/// computing their forward result. This is also the public way to add a custom op. `saved`
/// declares which values the backward reads, for the in-place check (see the file comment);
/// the default, all(), is always correct and at worst rejects a harmless in-place write.
Tensor record_op(std::string_view name, Tensor output, std::vector<Tensor> inputs,
                 BackwardFn backward, SavedValues saved = SavedValues::all());

struct GradOptions {
  bool retain_graph = false;  // keep the graph for another backward (implied by create_graph)
  bool create_graph = false;  // record the backward pass, for higher-order derivatives
  bool allow_unused = false;  // an input the outputs do not depend on gets zeros, not an error
};

/// d(sum_i <outputs[i], grad_outputs[i]>) / d inputs, like torch.autograd.grad. A scalar
/// output may omit its grad_output (ones). Inputs may be leaves or intermediate tensors.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs = {}, GradOptions options = {});

/// Leaf gradient hooks (PyTorch's Tensor.register_post_accumulate_grad_hook). During
/// backward() (not grad()), a leaf's hook runs as soon as every node that feeds the leaf has
/// run and its .grad holds the accumulated result for this pass: while the rest of the graph
/// is still being differentiated. DistributedDataParallel starts its gradient all-reduces
/// from here. The hook is keyed by the leaf's TensorImpl (views or copies of the handle share
/// it); a hook whose tensor has been freed is dropped. Hooks run on the thread that called
/// backward(), in the engine's order; they must not start another backward.
using PostAccumulateGradHook = std::function<void(const Tensor& leaf)>;
uint64_t register_post_accumulate_grad_hook(const Tensor& leaf, PostAccumulateGradHook hook);
/// Removes a hook; false when the id is unknown.
bool remove_post_accumulate_grad_hook(uint64_t id);
/// Queues `fn` to run when the innermost backward() running on this thread finishes, after
/// every .grad was written (PyTorch's Variable._execution_engine.queue_callback). Called
/// outside a backward, it throws. If the backward throws, queued callbacks are dropped.
void queue_backward_callback(std::function<void()> fn);

/// Is the graph being recorded? (thread-local, like PyTorch's grad mode)
bool grad_mode_enabled();
void set_grad_mode(bool enabled);

/// Disables recording in a scope (torch.no_grad).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(grad_mode_enabled()) { set_grad_mode(false); }
  ~NoGradGuard() { set_grad_mode(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

/// Enables recording in a scope (torch.enable_grad).
class EnableGradGuard {
 public:
  EnableGradGuard() : prev_(grad_mode_enabled()) { set_grad_mode(true); }
  ~EnableGradGuard() { set_grad_mode(prev_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

/// Anomaly mode: every recorded op's output and every backward result is checked for
/// NaN/Inf; the first one found throws an Error naming the op and its input shapes.
void set_anomaly_mode(bool enabled);
bool anomaly_mode_enabled();

class AnomalyGuard {
 public:
  AnomalyGuard() : prev_(anomaly_mode_enabled()) { set_anomaly_mode(true); }
  ~AnomalyGuard() { set_anomaly_mode(prev_); }

 private:
  bool prev_;
};

}  // namespace kern
