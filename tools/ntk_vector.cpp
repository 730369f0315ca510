// Matrix-free NTK-vector products K(x1, x2) v = J1 (J2^T v).
//
// J2^T v is one vjp of f(x2) with cotangent v. J1 t is a jvp, done by the double-vjp
// identity: g(u) = J1^T u is recorded once with create_graph (u a dummy cotangent [N1, O]),
// and d<g(u), t>/du = J1 t. Both graphs are kept (retain_graph), so each product costs two
// backward passes and nothing of size [N*O]^2 or N*O*P is ever stored.
#include "ntk_internal.hpp"

namespace kern::tools {

struct NtkOperator::State {
  std::vector<Tensor> params;
  Tensor out1, out2;          // [N1, O], [N2, O], with their graphs
  Tensor u;                   // [N1, O] leaf, the dummy cotangent
  std::vector<Tensor> g;      // J1^T u, per parameter (only those that depend on u)
  std::vector<size_t> g_idx;  // which parameter each g entry belongs to
  int64_t N1 = 0, N2 = 0, O = 0;
};

namespace {

std::shared_ptr<NtkOperator::State> build(nn::Module& model, const Tensor& x1, const Tensor& x2,
                                          std::vector<Tensor> params) {
  detail::check_batch_independent(model, "NtkOperator");
  KERN_CHECK(x1.defined() && x1.dim() >= 1 && x1.size(0) > 0, "NtkOperator: x must be a non-empty batch");
  auto s = std::make_shared<NtkOperator::State>();
  s->params = detail::resolve_params(model, params).tensors;
  EnableGradGuard eg;
  s->N1 = x1.size(0);
  s->out1 = detail::flatten_output(model(x1), s->N1, "NtkOperator");
  s->O = s->out1.size(1);
  if (x2.defined()) {
    s->N2 = x2.size(0);
    s->out2 = detail::flatten_output(model(x2), s->N2, "NtkOperator");
    KERN_CHECK(s->out2.size(1) == s->O, "NtkOperator: the model gives ", s->O, " outputs on x1 but ",
               s->out2.size(1), " on x2");
  } else {
    s->N2 = s->N1;
    s->out2 = s->out1;
  }
  s->u = zeros({s->N1, s->O}, s->out1.dtype()).requires_grad_(true);
  auto g = grad({s->out1}, s->params, {s->u}, {.create_graph = true, .allow_unused = true});
  for (size_t i = 0; i < g.size(); ++i)
    if (g[i].defined() && g[i].requires_grad()) {
      s->g.push_back(g[i]);
      s->g_idx.push_back(i);
    }
  return s;
}

}  // namespace

NtkOperator::NtkOperator(nn::Module& model, const Tensor& x, std::vector<Tensor> params)
    : s_(build(model, x, Tensor(), std::move(params))) {}

NtkOperator::NtkOperator(nn::Module& model, const Tensor& x1, const Tensor& x2, std::vector<Tensor> params)
    : s_(build(model, x1, x2, std::move(params))) {
  KERN_CHECK(x2.defined(), "NtkOperator: x2 is an undefined tensor");
}

int64_t NtkOperator::rows() const { return s_->N1 * s_->O; }
int64_t NtkOperator::cols() const { return s_->N2 * s_->O; }
int64_t NtkOperator::num_outputs() const { return s_->O; }
Tensor NtkOperator::output() const { return s_->out1.detach(); }

Tensor NtkOperator::matvec(const Tensor& v) const {
  const State& s = *s_;
  KERN_CHECK(v.defined() && v.numel() == s.N2 * s.O && (v.dim() == 1 || (v.dim() == 2 && v.size(0) == s.N2)),
             "NtkOperator::matvec: v must be [", s.N2 * s.O, "] or [", s.N2, ", ", s.O, "], got ",
             v.defined() ? fmt::format("{}", v.shape()) : std::string("an undefined tensor"));
  KERN_CHECK(v.dtype() == s.out1.dtype(), "NtkOperator::matvec: v is ", v.dtype(), ", the kernel is ",
             s.out1.dtype());
  EnableGradGuard eg;
  Tensor kv;
  if (s.g.empty()) {
    kv = zeros({s.N1, s.O}, s.out1.dtype());
  } else {
    // J2^T v, per parameter.
    auto jt = grad({s.out2}, s.params, {v.detach().reshape({s.N2, s.O})},
                   {.retain_graph = true, .allow_unused = true});
    std::vector<Tensor> t;
    for (size_t i : s.g_idx) t.push_back(jt[i].defined() ? jt[i] : zeros_like(s.params[i]));
    // J1 (J2^T v) = d<J1^T u, J2^T v>/du.
    kv = grad(s.g, {s.u}, t, {.retain_graph = true, .allow_unused = true})[0];
    if (!kv.defined()) kv = zeros({s.N1, s.O}, s.out1.dtype());
  }
  return v.dim() == 1 ? kv.reshape({s.N1 * s.O}) : kv;
}

Tensor NtkOperator::dense() const {
  const int64_t M = cols();
  Tensor K = empty({rows(), M}, s_->out1.dtype());
  Tensor e = zeros({M}, s_->out1.dtype());
  for (int64_t j = 0; j < M; ++j) {
    e.fill_(0.0);
    e.narrow(0, j, 1).fill_(1.0);
    K.narrow(1, j, 1).copy_(matvec(e).reshape({rows(), 1}));
  }
  return K;
}

namespace detail {

Tensor vector_ntk(nn::Module& model, const Tensor& x1, const Tensor& x2, const ParamSet& ps, Kind kind,
                  NtkInfo& info) {
  info.method = NtkMethod::Vector;
  info.fallback = ps.names;
  NtkOperator op = x2.defined() ? NtkOperator(model, x1, x2, ps.tensors) : NtkOperator(model, x1, ps.tensors);
  info.num_outputs = op.num_outputs();
  Tensor K = op.dense();
  if (kind == Kind::TracedSum) return trace_outputs(K, info.num_outputs);
  if (kind == Kind::Diagonal) return diagonal_outputs(K, info.num_outputs);
  return K;
}

}  // namespace detail
}  // namespace kern::tools
