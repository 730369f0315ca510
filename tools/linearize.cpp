// tools::linearize: f_lin(x; theta) = f(x; theta0) + J(x; theta0)(theta - theta0) as an
// nn::Module. Forward is a jvp at theta0, backward a vjp at theta0, recorded as one op
// ("linearize") whose inputs are theta:
//   d f_lin / d theta_i = J_i            (f_lin is affine in theta)
//   backward: g -> (J_i^T g)_i           (vjp at theta0; with create_graph the vjp is
//                                         recorded, so it is differentiable in g)
#include <kern/tools/linearize.hpp>

#include <kern/autograd.hpp>
#include <kern/functional.hpp>
#include <kern/nn/functional_call.hpp>
#include <kern/ops.hpp>

#include <unordered_map>
#include <unordered_set>

namespace kern::tools {

namespace {

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string describe(const Tensor& t) { return fmt::format("{} {}", t.dtype(), t.shape()); }

// Checks params0 against the model's parameters; returns params0 in the model's order.
// Throws one Error listing every problem.
nn::StateDict match_params0(const nn::Module& model, const nn::StateDict& params0) {
  const auto own = model.named_parameters();
  std::unordered_map<std::string, Tensor> expected(own.begin(), own.end());
  std::unordered_map<std::string, Tensor> given;
  std::vector<std::string> unknown, duplicates, mismatches, missing;
  for (auto& [name, t] : params0) {
    auto it = expected.find(name);
    if (it == expected.end()) {
      unknown.push_back(name);
    } else if (!given.emplace(name, t).second) {
      duplicates.push_back(name);
    } else if (!t.defined()) {
      mismatches.push_back(fmt::format("{}: expected {}, got an undefined tensor", name, describe(it->second)));
    } else if (t.shape() != it->second.shape() || t.dtype() != it->second.dtype()) {
      mismatches.push_back(fmt::format("{}: expected {}, got {}", name, describe(it->second), describe(t)));
    }
  }
  for (auto& [name, t] : own)
    if (!given.count(name)) missing.push_back(name);
  if (!unknown.empty() || !duplicates.empty() || !mismatches.empty() || !missing.empty()) {
    std::string msg = fmt::format("linearize: params0 does not match the parameters of {} ({} given, {} expected):",
                                  model.name(), params0.size(), own.size());
    if (!unknown.empty()) msg += fmt::format("\n  unknown names ({}): {}", unknown.size(), join(unknown, ", "));
    if (!missing.empty()) msg += fmt::format("\n  missing names ({}): {}", missing.size(), join(missing, ", "));
    if (!mismatches.empty())
      msg += fmt::format("\n  shape/dtype mismatches ({}):\n    {}", mismatches.size(), join(mismatches, "\n    "));
    if (!duplicates.empty())
      msg += fmt::format("\n  duplicate names ({}): {}", duplicates.size(), join(duplicates, ", "));
    throw Error(msg);
  }
  nn::StateDict out;
  for (auto& [name, t] : own) {
    NoGradGuard ng;
    out.emplace_back(name, given.at(name).detach().clone());
  }
  return out;
}

// A parameter holder: mirrors one module of the linearized model's tree, so that the
// Linearized module's parameters carry the model's dotted names.
class Params : public nn::Module {
 public:
  std::string name() const override { return "Params"; }
};

// The holder at dotted path `path` under `root`, created as needed.
nn::Module& holder_at(nn::Module& root, const std::vector<std::string>& path) {
  nn::Module* m = &root;
  for (auto& part : path) {
    nn::Module* next = nullptr;
    for (auto& [n, c] : m->named_children())
      if (n == part) next = c.get();
    if (next == nullptr) next = m->register_module(part, std::make_shared<Params>()).get();
    m = next;
  }
  return *m;
}

std::vector<std::string> split(const std::string& name) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t dot; (dot = name.find('.', start)) != std::string::npos; start = dot + 1)
    parts.push_back(name.substr(start, dot - start));
  parts.push_back(name.substr(start));
  return parts;
}

// f(x; ps) with ps in params0's order.
TensorFn model_fn(const std::shared_ptr<nn::Module>& model, const std::vector<std::string>& names, const Tensor& x) {
  return [model, names, x](const std::vector<Tensor>& ps) {
    nn::StateDict sub;
    sub.reserve(ps.size());
    for (size_t i = 0; i < ps.size(); ++i) sub.emplace_back(names[i], ps[i]);
    return nn::functional_call(*model, sub, x);
  };
}

}  // namespace

Linearized::Linearized(std::shared_ptr<nn::Module> model, const nn::StateDict& params0) : model_(std::move(model)) {
  KERN_CHECK(model_ != nullptr, "linearize: null model");
  params0_ = match_params0(*model_, params0);
  for (auto& [name, t0] : params0_) {
    auto parts = split(name);
    const std::string leaf = parts.back();
    parts.pop_back();
    std::string prefix = join(parts, ".");
    const bool requires_grad = model_->get_parameter(name).requires_grad();
    nn::Module& h = holder_at(*this, parts);
    h.register_parameter(leaf, t0.clone(), requires_grad);
    if (const param::ParamRecord* rec = model_->get_submodule(prefix)->param_record(leaf))
      h.set_param_record(leaf, *rec);
  }
}

Tensor Linearized::forward0(const Tensor& x) {
  NoGradGuard ng;
  std::vector<std::string> names;
  std::vector<Tensor> p0;
  for (auto& [n, t] : params0_) names.push_back(n), p0.push_back(t);
  return model_fn(model_, names, x)(p0).detach();
}

Tensor Linearized::forward(const Tensor& x) {
  KERN_CHECK(!x.requires_grad(), "Linearized: the input ", x.shape(),
             " requires grad; gradients with respect to the input are not supported (only theta)");
  std::vector<std::string> names;
  std::vector<Tensor> p0, theta, delta;
  // theta as the module computes with it now (functional_call's substitutes on this module)
  std::unordered_map<std::string, Tensor> current;
  for (auto& [n, t] : named_parameters()) current.emplace(n, t);
  {
    NoGradGuard ng;
    for (auto& [n, t0] : params0_) {
      // Module::to converts theta (this module's parameters) but not theta0 or the model
      KERN_CHECK(current.at(n).dtype() == t0.dtype(), "Linearized: parameter '", n, "' is ",
                 current.at(n).dtype(), " but theta0 and the model are ", t0.dtype(),
                 ": to(dtype) does not reach them; convert the model before linearize(model)");
      names.push_back(n);
      p0.push_back(t0);
      theta.push_back(current.at(n));
      delta.push_back(current.at(n).detach() - t0);
    }
  }
  const TensorFn f = model_fn(model_, names, x);
  JvpResult r = kern::jvp(f, p0, delta, /*create_graph=*/false);
  Tensor out;
  {
    NoGradGuard ng;
    out = r.output.detach() + r.tangent_out.detach();
  }
  return record_op("linearize", out, theta, [f, p0](const BackwardContext& c) {
    // J^T g at theta0; recorded when the backward itself is (create_graph)
    VjpResult v = kern::vjp(f, p0, c.grad, /*create_graph=*/grad_mode_enabled());
    std::vector<Tensor> g(p0.size());
    for (size_t i = 0; i < p0.size(); ++i)
      if (c.needs_input_grad(i)) g[i] = v.grads[i];
    return g;
  });
}

std::string Linearized::extra_repr() const {
  return fmt::format("model={}, parameters={}", model_->name(), params0_.size());
}

void Linearized::train(bool on) {
  nn::Module::train(on);
  model_->train(on);
}

std::shared_ptr<Linearized> linearize(std::shared_ptr<nn::Module> model, const nn::StateDict& params0) {
  return std::make_shared<Linearized>(std::move(model), params0);
}

std::shared_ptr<Linearized> linearize(std::shared_ptr<nn::Module> model) {
  KERN_CHECK(model != nullptr, "linearize: null model");
  auto own = model->named_parameters();
  return linearize(std::move(model), nn::StateDict(own.begin(), own.end()));
}

}  // namespace kern::tools
