#pragma once
// tools::linearize: the first-order Taylor expansion of a module in its parameters around
// theta0 (neural-tangents' nt.linearize; Lee et al. 2019, "Wide neural networks of any depth
// evolve as linear models under gradient descent"):
//
//   f_lin(x; theta) = f(x; theta0) + J(x; theta0) (theta - theta0),   J = d f / d theta at theta0
//
//   auto lin = kern::tools::linearize(model);              // theta0 = the model's parameters now
//   optim::SGD opt(optim::param_groups(*lin, {.family = optim::Family::SGD}), {.lr = 0.1});
//   auto loss = kern::mse_loss((*lin)(x), y);  opt.zero_grad();  loss.backward();  opt.step();
//
// The result is an nn::Module whose parameters are theta: copies of params0 under the
// model's own dotted names (lin->named_parameters() lists what model->named_parameters()
// lists), with the model's parameterization records copied, so optim::param_groups gives the
// same learning-rate multipliers as for the model, and any kern optimizer trains theta. The
// model itself is only evaluated (through nn::functional_call, at theta0); it is neither
// modified nor trained, so the model and its linearization can be trained side by side.
//
// forward(x) [N, ...] -> [N, ...] (the model's output shape): one kern::jvp of
// theta -> f(x; theta) at theta0 with tangent theta - theta0 (f(x; theta0) comes with it).
// Its backward is exact: the gradient with respect to theta is J^T g, one kern::vjp at theta0
// with the incoming gradient g (recorded with create_graph, so f_lin differentiates to any
// order: e.g. its Hessian is the Gauss-Newton matrix of f at theta0). Cost per training step:
// a forward-mode jvp and a vjp of f (2.15x a step of the network itself for the width-2048
// MLP of examples/linearized_training).
//
// Limits: x gets no gradient (an input that requires grad is an error rather than a silent
// zero); buffers (BatchNorm statistics) are the model's own at call time; call
// lin->train()/eval() to set the model's mode too; lin->to(dtype) reaches theta only, so
// forward then throws naming the parameter: convert the model before linearizing it.
//
// Errors (kern::Error, before anything is copied): params0 names that the model does not
// have, model parameters missing from params0, duplicates, and shape/dtype mismatches are
// all listed together, each with the parameter's name and its expected and given shape.
#include <kern/nn/module.hpp>
#include <kern/tensor.hpp>

#include <memory>
#include <string>
#include <vector>

namespace kern::tools {

class Linearized : public nn::Module {
 public:
  /// params0: one tensor per parameter of `model` (its named_parameters() names; tied tensors
  /// under their first name), copied (detached) as theta0 and as the initial theta.
  Linearized(std::shared_ptr<nn::Module> model, const nn::StateDict& params0);

  /// f(x; theta0) + J(x; theta0) (theta - theta0).
  Tensor forward(const Tensor& x) override;
  /// f(x; theta0) alone (no graph).
  Tensor forward0(const Tensor& x);

  std::string name() const override { return "Linearized"; }
  std::string extra_repr() const override;
  /// Sets this module's and the linearized model's training mode.
  void train(bool on = true) override;

  /// The expansion point theta0, in the model's named_parameters() order.
  const nn::StateDict& params0() const { return params0_; }
  const std::shared_ptr<nn::Module>& model() const { return model_; }

 private:
  std::shared_ptr<nn::Module> model_;
  nn::StateDict params0_;  // (name, detached theta0), in the model's order
};

/// Linearizes `model` around params0 (see above).
std::shared_ptr<Linearized> linearize(std::shared_ptr<nn::Module> model, const nn::StateDict& params0);
/// Linearizes `model` around its current parameters.
std::shared_ptr<Linearized> linearize(std::shared_ptr<nn::Module> model);

}  // namespace kern::tools
