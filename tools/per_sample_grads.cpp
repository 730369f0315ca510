// Per-sample gradients (kern/tools/per_sample_grads.hpp): one forward with hooks, one
// backward to the parameter-owning modules' outputs, then per module its grad-sample rule or
// the per-layer vjp fallback.
#include <kern/nn/grad_sample.hpp>
#include <kern/tools/per_sample_grads.hpp>

#include <algorithm>
#include <unordered_map>

#include "ntk_internal.hpp"

namespace kern::tools {
namespace {

constexpr const char* kWho = "per_sample_grads";

// theta: the chosen parameters, in named_parameters() order.
struct Theta {
  std::vector<Tensor> tensors;
  std::vector<std::string> names;
  std::unordered_map<const TensorImpl*, size_t> index;
};

Theta resolve(nn::Module& model, const std::vector<Tensor>& requested) {
  Theta th;
  std::unordered_map<const TensorImpl*, size_t> wanted;
  for (size_t i = 0; i < requested.size(); ++i) {
    KERN_CHECK(requested[i].defined(), kWho, ": params[", i, "] is an undefined tensor");
    KERN_CHECK(wanted.emplace(requested[i].impl_ptr().get(), i).second, kWho, ": params[", i, "] is listed twice");
  }
  for (auto& [name, p] : model.named_parameters()) {
    const bool chosen = requested.empty() ? p.requires_grad() : wanted.erase(p.impl_ptr().get()) > 0;
    if (!chosen) continue;
    KERN_CHECK(p.requires_grad(), kWho, ": parameter '", name, "' does not require grad");
    th.index.emplace(p.impl_ptr().get(), th.tensors.size());
    th.tensors.push_back(p);
    th.names.push_back(name);
  }
  for (auto& [impl, i] : wanted)
    KERN_CHECK(false, kWho, ": params[", i, "] ", requested[i].shape(), " is not a parameter of the module ",
               model.name());
  KERN_CHECK(!th.tensors.empty(), kWho, ": the module ", model.name(), " has no parameters that require grad");
  return th;
}

struct Call {
  Tensor in, out;
};

// Every module of the model, with the parameters of theta it owns (its own, not its
// children's; possibly none).
struct Owner {
  std::string path;
  nn::Module* module = nullptr;
  int64_t parent = -1;           // index of the parent module (-1 for the root)
  const nn::GradSampleRule* rule = nullptr;
  std::vector<std::string> own;  // its parameter names (in the module) that are in theta
  std::vector<size_t> at;        // their indices in theta
  // This chunk: its calls; whether they all have the batch first (a rule or a vjp can use
  // them); the parameters of descendants whose own calls cannot be used (not called through
  // operator(), e.g. a kernel generator's kernel(L), or not batch-first) that this module
  // computes by the vjp fallback instead.
  std::vector<Call> calls;
  bool batch_ok = false;
  std::vector<size_t> adopted;
};

std::vector<Owner> find_owners(nn::Module& model, const Theta& th) {
  std::vector<Owner> owners;
  std::unordered_map<std::string, int64_t> by_path;
  std::vector<std::string> owned_by(th.tensors.size());
  for (auto& [path, m] : model.named_modules()) {
    Owner o;
    o.path = path.empty() ? "<root>" : path;
    o.module = m.get();
    if (!path.empty()) {
      const size_t dot = path.rfind('.');
      auto it = by_path.find(dot == std::string::npos ? std::string() : path.substr(0, dot));
      o.parent = it == by_path.end() ? -1 : it->second;
    }
    by_path.emplace(path, static_cast<int64_t>(owners.size()));
    // A parameter-only child covered by its parent's rule (SGConv's kernel_list): its
    // parameters are the parent's, named "child.name" as the rule reports them.
    Owner* holder = &o;
    std::string prefix;
    if (o.parent >= 0) {
      const std::string local = path.substr(path.rfind('.') + 1);
      const std::vector<std::string> covered = nn::grad_sample_covered_children(*owners[o.parent].module);
      if (std::find(covered.begin(), covered.end(), local) != covered.end()) {
        holder = &owners[o.parent];
        prefix = local + ".";
      }
    }
    for (nn::Slot* s : m->slots()) {
      if (s->is_buffer || !s->value.defined()) continue;
      auto it = th.index.find(s->value.impl_ptr().get());
      if (it == th.index.end()) continue;
      KERN_CHECK(owned_by[it->second].empty(), kWho, ": parameter '", th.names[it->second],
                 "' is registered in two modules ('", owned_by[it->second], "' and '", o.path,
                 "'): tied weights are not supported (a rule sees one module's use only)");
      owned_by[it->second] = o.path;
      holder->own.push_back(prefix + s->name);
      holder->at.push_back(it->second);
    }
    o.rule = nn::find_grad_sample_rule(*m);
    owners.push_back(std::move(o));
  }
  return owners;
}

// The cotangent of the loss that makes the backward give sum_n d L_n / d (.).
Tensor loss_cotangent(const Tensor& loss, int64_t N, LossReduction reduction) {
  KERN_CHECK(loss.defined(), kWho, ": loss_fn returned an undefined tensor");
  if (loss.dim() == 1 && loss.size(0) == N) return ones_like(loss);  // per-sample losses
  KERN_CHECK(loss.numel() == 1, kWho, ": loss_fn must return per-sample losses [", N, "] or a scalar, got ",
             loss.shape());
  return full(loss.shape(), reduction == LossReduction::Mean ? static_cast<double>(N) : 1.0, loss.dtype());
}

// Adds `grad` [N, ...] of parameter theta[i] into the chunk's part[i]: the first call's
// tensor is taken as it is (no copy: per-sample gradients are the largest tensors here),
// further calls are added out of place (a rule may return a view of its arguments).
void add_part(std::vector<Tensor>& part, size_t i, int64_t N, const Tensor& grad, const Theta& th, const Owner& o,
              const std::string& name) {
  Shape want{N};
  want.insert(want.end(), th.tensors[i].shape().begin(), th.tensors[i].shape().end());
  KERN_CHECK(grad.shape() == want, kWho, ": the grad-sample rule of module '", o.path, "' (", o.module->name(),
             ") returned ", grad.shape(), " for its parameter '", name, "', expected ", want);
  Tensor g = grad.dtype() == th.tensors[i].dtype() ? grad : grad.to(th.tensors[i].dtype());
  part[i] = part[i].defined() ? part[i] + g : g;
}

// Fallback for a module without a rule: sample by sample, a vjp through the module alone on
// its captured input, for its own parameters.
void vjp_fallback(const Owner& o, const std::vector<size_t>& at, const Call& c, const Tensor& g, const Theta& th,
                  std::vector<Tensor>& part) {
  detail::SerialScope serial;  // one-sample passes: many tiny ops
  std::vector<Tensor> params, rows;
  const int64_t N = c.in.size(0);
  for (size_t i : at) {
    params.push_back(th.tensors[i]);
    Shape s{N};
    s.insert(s.end(), th.tensors[i].shape().begin(), th.tensors[i].shape().end());
    rows.push_back(zeros(s, th.tensors[i].dtype()));
  }
  for (int64_t n = 0; n < N; ++n) {
    std::vector<Tensor> gs;
    {
      EnableGradGuard eg;
      Tensor y = o.module->forward(c.in.narrow(0, n, 1).detach());
      KERN_CHECK(y.shape() == g.narrow(0, n, 1).shape(), kWho, ": module '", o.path, "' (", o.module->name(),
                 ") gives ", y.shape(), " on one sample but ", c.out.shape(),
                 " on the batch: its samples are not independent");
      gs = grad({y}, params, {g.narrow(0, n, 1)}, {.allow_unused = true});
    }
    NoGradGuard ng;
    for (size_t k = 0; k < params.size(); ++k)
      if (gs[k].defined()) rows[k].select(0, n).copy_(gs[k]);
  }
  for (size_t k = 0; k < params.size(); ++k) add_part(part, at[k], N, rows[k], th, o, th.names[at[k]]);
}

// Sum over the chunk's samples vs autograd's gradient of the same backward. Rounding is
// relative to the terms summed, which can cancel (near a minimum the batch gradient is ~0
// while per-sample gradients are not): N * max|grads[0]| stands for max_j sum_n |grads[n, j]|
// (one sample's row: cheap next to the whole [N, P]).
void check_sums(const std::vector<Tensor>& part, const std::vector<Tensor>& expected, const Theta& th, int64_t N) {
  for (size_t i = 0; i < th.tensors.size(); ++i) {
    if (!part[i].defined() && !expected[i].defined()) continue;
    Tensor got = part[i].defined() ? sum(part[i], {0}) : zeros_like(expected[i]);
    Tensor want = expected[i].defined() ? expected[i] : zeros_like(got);
    const double terms = part[i].defined() ? N * max(abs(part[i].select(0, 0))).item() : 0.0;
    const double scale = terms + max(abs(got)).item() + max(abs(want)).item();
    const double tol = got.dtype() == DType::Float64 ? 1e-9 : 2e-4;
    KERN_CHECK(max(abs(got - want)).item() <= tol * scale + 1e-30, kWho, ": the per-sample gradients of '",
               th.names[i], "' do not sum to autograd's batch gradient (max difference ",
               max(abs(got - want)).item(), "): the parameter is read outside its module's forward (e.g. tied "
               "weights), its module is not called through operator(), or a grad-sample rule is wrong");
  }
}

// After the forward: which module computes which parameters. A module whose calls are
// usable computes its own; the parameters of one whose calls are not go to the nearest
// ancestor whose calls are (the root's always are), by the vjp fallback through it.
void assign(std::vector<Owner>& owners, int64_t N, const Theta& th) {
  for (Owner& o : owners) {
    o.adopted.clear();
    o.batch_ok = !o.calls.empty();
    for (const Call& c : o.calls)
      o.batch_ok = o.batch_ok && c.in.dim() >= 1 && c.in.size(0) == N && c.out.dim() >= 1 && c.out.size(0) == N;
  }
  for (Owner& o : owners) {
    if (o.own.empty() || o.batch_ok) continue;
    int64_t p = o.parent;
    while (p >= 0 && !owners[p].batch_ok) p = owners[p].parent;
    KERN_CHECK(p >= 0, kWho, ": module '", o.path, "' (", o.module->name(), ") owning '", th.names[o.at[0]],
               "' has no ancestor called through operator() with the batch (", N, ") as dim 0 of its input and "
               "output");
    owners[p].adopted.insert(owners[p].adopted.end(), o.at.begin(), o.at.end());
  }
}

// One chunk of samples: part[i] = its per-sample gradients of theta[i] [N_chunk, ...], or
// undefined where no call contributed (zeros).
void run_chunk(nn::Module& model, const PerSampleLossFn& loss_fn, const Tensor& x, const Tensor& y,
               const Theta& th, std::vector<Owner>& owners, const PerSampleGradsOptions& options,
               std::vector<Tensor>& part) {
  const int64_t N = x.size(0);
  for (Owner& o : owners) o.calls.clear();
  Tensor loss;
  {
    detail::HookScope hooks;
    for (Owner& o : owners)
      hooks.add(o.module, o.module->register_forward_hook([&o](nn::Module&, const Tensor& in, const Tensor& out) {
        o.calls.push_back({in, out});
      }));
    EnableGradGuard eg;
    loss = loss_fn(model(x), y);
  }
  Tensor cot = loss_cotangent(loss, N, options.reduction());
  assign(owners, N, th);
  auto works = [](const Owner& o) { return (o.batch_ok && !o.own.empty()) || !o.adopted.empty(); };
  // One backward: the output gradient of every call that is used, and (for the check)
  // autograd's gradient of every parameter.
  std::vector<Tensor> inputs;
  for (Owner& o : owners)
    if (works(o))
      for (Call& c : o.calls)
        if (c.out.requires_grad()) inputs.push_back(c.out);
  const size_t n_calls = inputs.size();
  if (options.check()) inputs.insert(inputs.end(), th.tensors.begin(), th.tensors.end());
  std::vector<Tensor> gs = grad({loss}, inputs, {cot}, {.allow_unused = true});

  NoGradGuard ng;
  size_t k = 0;
  for (Owner& o : owners) {
    if (!works(o)) continue;
    for (Call& c : o.calls) {
      Tensor g = c.out.requires_grad() ? gs[k++] : Tensor();
      if (!g.defined()) g = zeros_like(c.out);
      if (!o.adopted.empty()) vjp_fallback(o, o.adopted, c, g, th, part);
      if (o.own.empty() || !o.batch_ok) continue;
      if (o.rule == nullptr) {
        vjp_fallback(o, o.at, c, g, th, part);
        continue;
      }
      for (nn::GradSample& s : (*o.rule)(*o.module, c.in.detach(), c.out.detach(), g)) {
        auto it = std::find(o.own.begin(), o.own.end(), s.name);
        if (it == o.own.end()) continue;  // a parameter outside theta
        add_part(part, o.at[it - o.own.begin()], N, s.grad, th, o, s.name);
      }
    }
  }
  if (options.check())
    check_sums(part, std::vector<Tensor>(gs.begin() + static_cast<int64_t>(n_calls), gs.end()), th, N);
}

}  // namespace

const Tensor& PerSampleGrads::at(const std::string& name) const {
  for (auto& [n, t] : grads)
    if (n == name) return t;
  KERN_CHECK(false, "PerSampleGrads: no parameter '", name, "' (", grads.size(), " parameters)");
  return grads.front().second;  // unreachable
}

PerSampleGrads per_sample_grads(nn::Module& model, const PerSampleLossFn& loss_fn, const Tensor& x,
                                const Tensor& y, const PerSampleGradsOptions& options) {
  KERN_CHECK(loss_fn, kWho, ": loss_fn is empty");
  KERN_CHECK(x.defined() && x.dim() >= 1 && x.size(0) > 0, kWho, ": x must be a non-empty batch [N, ...], got ",
             x.defined() ? fmt::format("{}", x.shape()) : std::string("undefined"));
  KERN_CHECK(!y.defined() || (y.dim() >= 1 && y.size(0) == x.size(0)), kWho, ": y ", y.shape(),
             " must have the batch size ", x.size(0), " as dim 0");
  KERN_CHECK(options.batch_chunk() >= 0, kWho, ": batch_chunk must be >= 0, got ", options.batch_chunk());
  detail::check_batch_independent(model, kWho);
  const Theta th = resolve(model, options.params());
  std::vector<Owner> owners = find_owners(model, th);

  const int64_t N = x.size(0);
  auto full_shape = [N](const Tensor& p) {
    Shape s{N};
    s.insert(s.end(), p.shape().begin(), p.shape().end());
    return s;
  };
  std::vector<Tensor> result(th.tensors.size());
  std::vector<std::string> how(th.tensors.size());  // the report's rule per parameter
  std::vector<int64_t> calls(th.tensors.size(), 0);
  const int64_t chunk = options.batch_chunk() > 0 ? options.batch_chunk() : N;
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t nc = std::min(chunk, N - n0);
    std::vector<Tensor> part(th.tensors.size());
    run_chunk(model, loss_fn, x.narrow(0, n0, nc), y.defined() ? y.narrow(0, n0, nc) : y, th, owners, options, part);
    for (const Owner& o : owners) {
      for (size_t i : o.adopted) how[i] = "vjp:" + o.path, calls[i] = static_cast<int64_t>(o.calls.size());
      if (!o.batch_ok) continue;
      for (size_t i : o.at) {
        how[i] = o.rule != nullptr ? "grad_sample:" + o.module->name() : "vjp";
        calls[i] = static_cast<int64_t>(o.calls.size());
      }
    }
    NoGradGuard ng;
    for (size_t i = 0; i < th.tensors.size(); ++i) {
      if (nc == N) {  // one chunk: the parts are the result
        result[i] = part[i].defined() ? part[i].contiguous() : zeros(full_shape(th.tensors[i]), th.tensors[i].dtype());
        continue;
      }
      if (!result[i].defined()) result[i] = zeros(full_shape(th.tensors[i]), th.tensors[i].dtype());
      if (part[i].defined()) result[i].narrow(0, n0, nc).copy_(part[i]);
    }
  }

  PerSampleGrads out;
  out.report.resize(th.tensors.size());
  for (const Owner& o : owners)
    for (size_t i : o.at) {
      PerSampleParamInfo& r = out.report[i];
      r.module = o.path;
      r.calls = calls[i];
      r.rule = how[i];
    }
  for (size_t i = 0; i < th.tensors.size(); ++i) {
    out.report[i].name = th.names[i];
    out.grads.emplace_back(th.names[i], std::move(result[i]));
  }
  return out;
}

}  // namespace kern::tools
