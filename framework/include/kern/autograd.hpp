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
#include <kern/tensor.hpp>

#include <functional>
#include <string>
#include <vector>

namespace kern {

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
  Node(std::string op, std::vector<Tensor> inputs, BackwardFn fn, uint64_t seq)
      : op_(std::move(op)), inputs_(std::move(inputs)), fn_(std::move(fn)), seq_(seq) {}
  const std::string& name() const { return op_; }
  const std::vector<Tensor>& inputs() const { return inputs_; }
  uint64_t sequence_nr() const { return seq_; }
  bool released() const { return !fn_; }

 private:
  friend class Engine;
  friend Tensor record_op(std::string_view, Tensor, std::vector<Tensor>, BackwardFn);
  std::string op_;
  std::vector<Tensor> inputs_;
  BackwardFn fn_;
  uint64_t seq_;
  std::weak_ptr<TensorImpl> output_;
  std::string context_;  // input shapes/dtypes, for error and anomaly messages
};

/// Records `output` as produced by op `name` from `inputs` when grad mode is on and any
/// input requires grad; returns `output` (now carrying its grad_fn). Ops call this after
/// computing their forward result. This is also the public way to add a custom op.
Tensor record_op(std::string_view name, Tensor output, std::vector<Tensor> inputs,
                 BackwardFn backward);

struct GradOptions {
  bool retain_graph = false;  // keep the graph for another backward (implied by create_graph)
  bool create_graph = false;  // record the backward pass, for higher-order derivatives
  bool allow_unused = false;  // an input the outputs do not depend on gets zeros, not an error
};

/// d(sum_i <outputs[i], grad_outputs[i]>) / d inputs, like torch.autograd.grad. A scalar
/// output may omit its grad_output (ones). Inputs may be leaves or intermediate tensors.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs = {}, GradOptions options = {});

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
