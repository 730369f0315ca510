// Empirical NTK: entry points, parameter resolution, checks, and the helpers the three
// methods share (per-sample Jacobian rows, contraction, trace/diagonal reductions).
#include <unordered_map>

#include "ntk_internal.hpp"

namespace kern::tools {
namespace detail {

int64_t ParamSet::numel() const {
  int64_t n = 0;
  for (auto& t : tensors) n += t.numel();
  return n;
}

int64_t ParamSet::find(const Tensor& t) const {
  if (!t.defined()) return -1;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].impl_ptr() == t.impl_ptr()) return static_cast<int64_t>(i);
  return -1;
}

ParamSet resolve_params(nn::Module& model, const std::vector<Tensor>& requested) {
  ParamSet ps;
  const auto named = model.named_parameters();
  if (requested.empty()) {
    for (auto& [name, p] : named)
      if (p.requires_grad()) {
        ps.tensors.push_back(p);
        ps.names.push_back(name);
      }
  } else {
    std::unordered_map<const TensorImpl*, std::string> by_impl;
    for (auto& [name, p] : named) by_impl.emplace(p.impl_ptr().get(), name);
    for (size_t i = 0; i < requested.size(); ++i) {
      const Tensor& p = requested[i];
      KERN_CHECK(p.defined(), "ntk: params[", i, "] is an undefined tensor");
      auto it = by_impl.find(p.impl_ptr().get());
      KERN_CHECK(it != by_impl.end(), "ntk: params[", i, "] ", p.shape(), " ", p.dtype(),
                 " is not a parameter of the module ", model.name());
      KERN_CHECK(p.requires_grad(), "ntk: parameter '", it->second, "' does not require grad");
      KERN_CHECK(ps.find(p) < 0, "ntk: parameter '", it->second, "' is listed twice");
      ps.tensors.push_back(p);
      ps.names.push_back(it->second);
    }
  }
  KERN_CHECK(!ps.tensors.empty(), "ntk: the module ", model.name(),
             " has no parameters that require grad");
  const DType dt = ps.tensors[0].dtype();
  for (size_t i = 0; i < ps.tensors.size(); ++i)
    KERN_CHECK(ps.tensors[i].dtype() == dt, "ntk: parameters have mixed dtypes (", ps.names[0],
               " is ", dt, ", ", ps.names[i], " is ", ps.tensors[i].dtype(), ")");
  return ps;
}

void check_batch_independent(nn::Module& model, const char* who) {
  for (auto& [name, m] : model.named_modules()) {
    const std::string label = name.empty() ? std::string("<root>") : name;
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(m.get())) {
      const bool batch_stats = bn->is_training() || !bn->options().track_running_stats();
      KERN_CHECK(!batch_stats, who, ": module '", label, "' (BatchNorm2d) normalizes with batch statistics (",
                 bn->is_training() ? "training mode" : "track_running_stats=false",
                 "), so one sample's output depends on the others and per-sample quantities (NTK, "
                 "gradients) are not defined. Call model.eval() first (running statistics), as functorch and "
                 "neural-tangents require.");
    }
    if (auto* d = dynamic_cast<nn::Dropout*>(m.get()))
      KERN_CHECK(!(d->is_training() && d->options().p() > 0), who, ": module '", label,
                 "' (Dropout, p=", d->options().p(),
                 ") is in training mode, so f is random and so is its NTK. Call model.eval() first.");
    if (auto* d = dynamic_cast<nn::DropPath*>(m.get()))
      KERN_CHECK(!(d->is_training() && d->options().drop_prob() > 0), who, ": module '", label,
                 "' (DropPath, drop_prob=", d->options().drop_prob(),
                 ") is in training mode, so f is random and so is its NTK. Call model.eval() first.");
  }
}

Tensor flatten_output(const Tensor& out, int64_t n, const char* who) {
  KERN_CHECK(out.dim() >= 1 && out.size(0) == n, who, ": the model output ", out.shape(),
             " must have the batch size ", n, " as its first dim");
  KERN_CHECK(out.numel() > 0, who, ": the model output ", out.shape(), " is empty");
  return out.reshape({n, out.numel() / n});
}

Tensor jacobian_rows(nn::Module& model, const Tensor& x, const std::vector<Tensor>& params,
                     int64_t& num_outputs) {
  EnableGradGuard eg;
  const int64_t N = x.size(0);
  int64_t P = 0;
  for (auto& p : params) P += p.numel();
  Tensor J;
  int64_t O = 0;
  for (int64_t n = 0; n < N; ++n) {
    Tensor out = flatten_output(model(x.narrow(0, n, 1)), 1, "ntk");
    if (n == 0) {
      O = out.size(1);
      J = zeros({N * O, P}, params[0].dtype());
    }
    KERN_CHECK(out.size(1) == O, "ntk: the model gives ", out.size(1), " outputs for sample ", n,
               " but ", O, " for sample 0");
    for (int64_t o = 0; o < O; ++o) {
      Tensor cot = zeros({1, O}, out.dtype());
      cot.narrow(1, o, 1).fill_(1.0);
      auto gs = grad({out}, params, {cot}, {.retain_graph = o + 1 < O, .allow_unused = true});
      Tensor row = J.select(0, n * O + o);
      int64_t at = 0;
      for (size_t i = 0; i < params.size(); ++i) {
        const int64_t k = params[i].numel();
        if (gs[i].defined()) row.narrow(0, at, k).copy_(gs[i].reshape({k}));
        at += k;
      }
    }
  }
  num_outputs = O;
  return J;
}

Tensor contract_jacobians(const Tensor& J1, const Tensor& J2, int64_t O, Kind kind) {
  NoGradGuard ng;
  const int64_t N1 = J1.size(0) / O, N2 = J2.size(0) / O, P = J1.size(1);
  switch (kind) {
    case Kind::Full:
      return mm(J1, J2.t());
    case Kind::TracedSum: {
      // [O, N1, P] @ [O, P, N2] -> [O, N1, N2], summed over o.
      Tensor a = J1.view({N1, O, P}).permute({1, 0, 2});
      Tensor b = J2.view({N2, O, P}).permute({1, 2, 0});
      return sum(bmm(a, b), {0});
    }
    case Kind::Diagonal:
      return sum(J1 * J1, {1}).view({N1, O});
  }
  return {};
}

Tensor trace_outputs(const Tensor& K, int64_t O) {
  NoGradGuard ng;
  const int64_t N1 = K.size(0) / O, N2 = K.size(1) / O;
  Tensor k4 = K.view({N1, O, N2, O});
  Tensor acc = k4.select(3, 0).select(1, 0).contiguous();
  for (int64_t o = 1; o < O; ++o) acc = acc + k4.select(3, o).select(1, o);
  return acc;
}

Tensor diagonal_outputs(const Tensor& K, int64_t O) {
  NoGradGuard ng;
  const int64_t M = K.size(0);
  // The diagonal of a row-major [M, M] matrix is the flat view with stride M + 1.
  Tensor flat = K.contiguous().reshape({M * M});
  std::vector<Tensor> d;
  d.reserve(M);
  for (int64_t i = 0; i < M; ++i) d.push_back(flat.narrow(0, i * (M + 1), 1));
  return cat(d, 0).view({M / O, O});
}

Tensor contraction_ntk(nn::Module& model, const Tensor& x1, const Tensor& x2, const ParamSet& ps,
                       Kind kind, NtkInfo& info) {
  info.method = NtkMethod::Contraction;
  int64_t O = 0;
  Tensor J1 = jacobian_rows(model, x1, ps.tensors, O);
  Tensor J2 = J1;
  if (x2.defined()) {
    int64_t O2 = 0;
    J2 = jacobian_rows(model, x2, ps.tensors, O2);
  }
  info.num_outputs = O;
  info.fallback = ps.names;
  return contract_jacobians(J1, J2, O, kind);
}

namespace {

Tensor compute(nn::Module& model, const Tensor& x1, const Tensor& x2, const NtkOptions& opt,
               Kind kind, NtkInfo* info_out) {
  const char* who = kind == Kind::Full ? "ntk" : kind == Kind::TracedSum ? "ntk_traced" : "ntk_diagonal";
  KERN_CHECK(x1.defined() && x1.dim() >= 1 && x1.size(0) > 0, who, ": x must be a non-empty batch [N, ...], got ",
             x1.defined() ? fmt::format("{}", x1.shape()) : std::string("an undefined tensor"));
  if (x2.defined()) {
    KERN_CHECK(x2.dim() == x1.dim() && x2.size(0) > 0, who, ": x1 ", x1.shape(), " and x2 ", x2.shape(),
               " must be batches of the same kind of input");
    for (int64_t d = 1; d < x1.dim(); ++d)
      KERN_CHECK(x1.size(d) == x2.size(d), who, ": x1 ", x1.shape(), " and x2 ", x2.shape(),
                 " differ beyond the batch dim");
    KERN_CHECK(x1.dtype() == x2.dtype(), who, ": x1 is ", x1.dtype(), " but x2 is ", x2.dtype());
  }
  check_batch_independent(model, who);
  ParamSet ps = resolve_params(model, opt.params());
  // Float inputs must match the parameters; int64 inputs are token ids (an embedding reads
  // them; the kernel is over the parameters only, so nothing differentiates x).
  KERN_CHECK(ps.tensors[0].dtype() == x1.dtype() || x1.dtype() == DType::Int64, who, ": x is ", x1.dtype(),
             " but the parameters are ", ps.tensors[0].dtype(), " (int64 inputs are taken as token ids)");
  NtkInfo info;
  info.num_params = ps.numel();
  Tensor K;
  switch (opt.method()) {
    case NtkMethod::Contraction:
      K = contraction_ntk(model, x1, x2, ps, kind, info);
      break;
    case NtkMethod::Vector:
      K = vector_ntk(model, x1, x2, ps, kind, info);
      break;
    case NtkMethod::Auto:
    case NtkMethod::Structured:
      K = structured_ntk(model, x1, x2, ps, kind, opt, info);
      break;
  }
  if (kind == Kind::TracedSum && opt.trace() == NtkTrace::Mean) {
    NoGradGuard ng;
    K = K * (1.0 / static_cast<double>(info.num_outputs));
  }
  if (info_out) *info_out = std::move(info);
  return K;
}

}  // namespace
}  // namespace detail

Tensor ntk(nn::Module& model, const Tensor& x, const NtkOptions& options, NtkInfo* info) {
  return detail::compute(model, x, Tensor(), options, detail::Kind::Full, info);
}

Tensor ntk(nn::Module& model, const Tensor& x1, const Tensor& x2, const NtkOptions& options, NtkInfo* info) {
  KERN_CHECK(x2.defined(), "ntk: x2 is an undefined tensor");
  return detail::compute(model, x1, x2, options, detail::Kind::Full, info);
}

Tensor ntk_traced(nn::Module& model, const Tensor& x, const NtkOptions& options, NtkInfo* info) {
  return detail::compute(model, x, Tensor(), options, detail::Kind::TracedSum, info);
}

Tensor ntk_traced(nn::Module& model, const Tensor& x1, const Tensor& x2, const NtkOptions& options,
                  NtkInfo* info) {
  KERN_CHECK(x2.defined(), "ntk_traced: x2 is an undefined tensor");
  return detail::compute(model, x1, x2, options, detail::Kind::TracedSum, info);
}

Tensor ntk_diagonal(nn::Module& model, const Tensor& x, const NtkOptions& options, NtkInfo* info) {
  return detail::compute(model, x, Tensor(), options, detail::Kind::Diagonal, info);
}

}  // namespace kern::tools
