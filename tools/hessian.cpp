// Curvature operators: the Hessian by double backward and the generalized Gauss-Newton
// matrix, both on flat parameter vectors [P]; flat-vector helpers; criteria; ModeGuard.
// The eigen-solvers, trace and density live in hessian_solvers.cpp.
#include <kern/nn/functional_call.hpp>
#include <kern/ops.hpp>
#include <kern/tools/hessian.hpp>

namespace kern::tools {

// ---- flat vectors ------------------------------------------------------------------------

int64_t numel(const std::vector<Tensor>& params) {
  int64_t n = 0;
  for (auto& p : params) n += p.numel();
  return n;
}

Tensor flatten_vectors(const std::vector<Tensor>& ts) {
  KERN_CHECK(!ts.empty(), "flatten_vectors: no tensors given");
  NoGradGuard ng;
  std::vector<Tensor> flat;
  flat.reserve(ts.size());
  for (auto& t : ts) flat.push_back(t.detach().reshape({-1}));
  return flat.size() == 1 ? flat[0].contiguous() : cat(flat, 0);
}

std::vector<Tensor> unflatten_vector(const Tensor& flat, const std::vector<Tensor>& like) {
  const int64_t n = numel(like);
  KERN_CHECK(flat.dim() == 1 && flat.size(0) == n, "unflatten_vector: expected a vector [", n,
             "] for parameters of ", n, " elements, got ", flat.dtype(), " ", flat.shape());
  Tensor c = flat.contiguous();
  std::vector<Tensor> out;
  out.reserve(like.size());
  int64_t at = 0;
  for (auto& t : like) {
    out.push_back(c.narrow(0, at, t.numel()).view(t.shape()));
    at += t.numel();
  }
  return out;
}

// ---- criteria ----------------------------------------------------------------------------

Tensor mean_cross_entropy(const Tensor& output, const Tensor& target) {
  return cross_entropy(output, target);
}

Tensor half_mean_squared_error(const Tensor& output, const Tensor& target) {
  KERN_CHECK(output.dim() == 2, "half_mean_squared_error: output must be [N, O], got ", output.shape());
  Tensor y = target.dtype() == DType::Int64 ? one_hot(target, output.size(1), output.dtype()) : target;
  KERN_CHECK(y.shape() == output.shape() && y.dtype() == output.dtype(),
             "half_mean_squared_error: output ", output.dtype(), " ", output.shape(), " and target ",
             target.dtype(), " ", target.shape(), " do not match (targets: [N, O] float or [N] int64 labels)");
  Tensor d = output - y;
  return sum(d * d) * (0.5 / static_cast<double>(output.size(0)));
}

// ---- ModeGuard ---------------------------------------------------------------------------

ModeGuard::ModeGuard(nn::Module& model, Mode mode) : root_(&model), root_training_(model.is_training()) {
  for (auto& [name, m] : model.named_modules())
    if (m.get() != &model) modes_.emplace_back(m, m->is_training());
  {
    NoGradGuard ng;
    for (auto& b : model.buffers()) buffers_.push_back({b, b.clone(), b.version()});
  }
  model.train(mode == Mode::Train);
}

ModeGuard::~ModeGuard() {
  // Pre-order: a parent's recursive train() is undone for its children right after.
  root_->train(root_training_);
  for (auto& [m, training] : modes_) m->train(training);
  NoGradGuard ng;
  for (auto& b : buffers_)
    if (b.live.version() != b.version) b.live.copy_(b.saved);
}

// ---- MatrixOperator ----------------------------------------------------------------------

MatrixOperator::MatrixOperator(Tensor matrix) : m_(std::move(matrix)) {
  KERN_CHECK(m_.dim() == 2 && m_.size(0) == m_.size(1) && is_floating(m_.dtype()),
             "MatrixOperator: expected a square floating matrix, got ", m_.dtype(), " ", m_.shape());
  m_ = m_.detach();
}

Tensor MatrixOperator::apply(const Tensor& v) {
  KERN_CHECK(v.dim() == 1 && v.size(0) == size(), "MatrixOperator::apply: expected [", size(), "], got ",
             v.shape());
  NoGradGuard ng;
  ++products_;
  return matmul(m_, v);
}

// ---- ScaledOperator ----------------------------------------------------------------------

ScaledOperator::ScaledOperator(SymmetricOperator& base, const Tensor& d) : base_(base) {
  KERN_CHECK(d.defined() && d.dim() == 1 && d.size(0) == base.size(), "ScaledOperator: expected a diagonal [",
             base.size(), "], got ", d.defined() ? fmt::format("{} {}", d.dtype(), d.shape()) : std::string("undefined"));
  NoGradGuard ng;
  Tensor dd = d.detach().to(base.dtype());
  KERN_CHECK(min(dd).item() > 0.0, "ScaledOperator: the diagonal must be positive (min ", min(dd).item(), ")");
  sqrt_d_ = sqrt(dd);
}

Tensor ScaledOperator::apply(const Tensor& v) {
  KERN_CHECK(v.dim() == 1 && v.size(0) == size(), "ScaledOperator::apply: expected [", size(), "], got ", v.shape());
  NoGradGuard ng;
  ++products_;
  return base_.apply(v * sqrt_d_) * sqrt_d_;
}

// ---- Hessian -----------------------------------------------------------------------------

namespace {

// Checks the parameter list and returns its common dtype.
DType check_params(const std::vector<Tensor>& params, const char* who) {
  KERN_CHECK(!params.empty(), who, ": no parameters given");
  const DType dt = params[0].dtype();
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    KERN_CHECK(p.defined() && is_floating(p.dtype()), who, ": parameter ", i, " must be a defined floating tensor");
    KERN_CHECK(p.requires_grad(), who, ": parameter ", i, " (", p.dtype(), " ", p.shape(), ") does not require grad");
    KERN_CHECK(p.dtype() == dt, who, ": parameters must share one dtype; parameter 0 is ", dt, ", parameter ", i,
               " is ", p.dtype());
  }
  return dt;
}

std::vector<Tensor> trainable(const nn::Module& model) {
  std::vector<Tensor> ps;
  for (auto& p : model.parameters())
    if (p.requires_grad()) ps.push_back(p);
  return ps;
}

Tensor check_flat(const Tensor& v, int64_t n, DType dt, const char* who) {
  KERN_CHECK(v.defined() && v.dim() == 1 && v.size(0) == n, who, ": expected a flat vector [", n, "], got ",
             v.defined() ? fmt::format("{} {}", v.dtype(), v.shape()) : std::string("undefined"));
  KERN_CHECK(v.dtype() == dt, who, ": vector is ", v.dtype(), ", the parameters are ", dt);
  return v.detach();
}

// model(x) in `mode`, recording a graph. The module's buffers are replaced by copies for the
// call, so a train-mode forward updates BatchNorm statistics in the copies: the live buffers
// are never written, and graphs recorded earlier that read them (an eval-mode Hessian of the
// same model) stay valid for backward (their version counters do not move).
Tensor forward_in_mode(nn::Module& model, const Tensor& x, Mode mode) {
  ModeGuard guard(model, mode);
  EnableGradGuard eg;
  nn::StateDict copies;
  {
    NoGradGuard ng;
    for (auto& [name, b] : model.named_buffers()) copies.emplace_back(name, b.detach().clone());
  }
  return copies.empty() ? model(x) : nn::functional_call(model, copies, x);
}

}  // namespace

Hessian::Hessian(const Tensor& loss, std::vector<Tensor> params) : params_(std::move(params)) { build(loss); }

Hessian::Hessian(nn::Module& model, const Tensor& x, const Tensor& y, const Criterion& criterion,
                 HessianOptions options)
    : params_(trainable(model)) {
  Tensor loss;
  {
    EnableGradGuard eg;
    loss = criterion(forward_in_mode(model, x, options.mode), y);
  }
  build(loss);
}

void Hessian::build(const Tensor& loss) {
  dtype_ = check_params(params_, "Hessian");
  KERN_CHECK(loss.defined() && loss.numel() == 1, "Hessian: the loss must be a scalar, got shape ",
             loss.defined() ? loss.shape() : Shape{});
  KERN_CHECK(loss.requires_grad(), "Hessian: the loss has no graph to the parameters (computed under NoGradGuard?)");
  size_ = numel(params_);
  EnableGradGuard eg;
  grads_ = grad({loss}, params_, {}, {.retain_graph = true, .create_graph = true, .allow_unused = true});
  loss_ = loss.detach();
}

std::vector<Tensor> Hessian::gradient() const {
  std::vector<Tensor> g;
  for (auto& t : grads_) g.push_back(t.detach());
  return g;
}

std::vector<Tensor> Hessian::apply_blocks(const std::vector<Tensor>& v) {
  KERN_CHECK(v.size() == params_.size(), "Hessian::apply_blocks: ", v.size(), " blocks for ", params_.size(),
             " parameters");
  std::vector<Tensor> outs, gouts;
  for (size_t i = 0; i < v.size(); ++i) {
    KERN_CHECK(v[i].shape() == params_[i].shape() && v[i].dtype() == dtype_, "Hessian::apply_blocks: block ", i,
               " is ", v[i].dtype(), " ", v[i].shape(), ", parameter is ", dtype_, " ", params_[i].shape());
    // A gradient without graph is constant in theta: its rows of H are zero.
    if (grads_[i].requires_grad()) {
      outs.push_back(grads_[i]);
      gouts.push_back(v[i].detach());
    }
  }
  ++products_;
  NoGradGuard ng;
  if (outs.empty()) {
    std::vector<Tensor> z;
    for (auto& p : params_) z.push_back(zeros_like(p));
    return z;
  }
  // d/dtheta sum_i <g_i(theta), v_i>: one reverse pass through the retained gradient graph.
  return grad(outs, params_, gouts, {.retain_graph = true, .allow_unused = true});
}

Tensor Hessian::apply(const Tensor& v) {
  Tensor flat = check_flat(v, size_, dtype_, "Hessian::apply");
  return flatten_vectors(apply_blocks(unflatten_vector(flat, params_)));
}

// ---- GaussNewton -------------------------------------------------------------------------

GaussNewton::GaussNewton(const Tensor& output, std::vector<Tensor> params,
                         const std::function<Tensor(const Tensor&)>& loss_of_output)
    : params_(std::move(params)) {
  build(output, loss_of_output);
}

GaussNewton::GaussNewton(nn::Module& model, const Tensor& x, const Tensor& y, const Criterion& criterion,
                         HessianOptions options)
    : params_(trainable(model)) {
  Tensor out = forward_in_mode(model, x, options.mode);
  build(out, [&](const Tensor& f) { return criterion(f, y); });
}

void GaussNewton::build(const Tensor& output, const std::function<Tensor(const Tensor&)>& loss_of_output) {
  dtype_ = check_params(params_, "GaussNewton");
  KERN_CHECK(output.defined() && output.requires_grad(),
             "GaussNewton: the output has no graph to the parameters (computed under NoGradGuard?)");
  size_ = numel(params_);
  EnableGradGuard eg;
  output_ = output;
  // J^T u for a dummy cotangent u, recorded: differentiating <J^T u, v> in u gives J v.
  dummy_ = zeros_like(output);
  dummy_.requires_grad_(true);
  jt_u_ = grad({output_}, params_, {dummy_}, {.retain_graph = true, .create_graph = true, .allow_unused = true});
  // The loss as a function of a detached copy of f: its Hessian there is H_L.
  out_leaf_ = output.detach();
  out_leaf_.requires_grad_(true);
  Tensor loss = loss_of_output(out_leaf_);
  KERN_CHECK(loss.defined() && loss.numel() == 1, "GaussNewton: the loss must be a scalar, got shape ",
             loss.defined() ? loss.shape() : Shape{});
  loss_ = loss.detach();
  loss_grad_ = loss.requires_grad()
                   ? grad({loss}, {out_leaf_}, {}, {.retain_graph = true, .create_graph = true, .allow_unused = true})[0]
                   : zeros_like(out_leaf_);
}

Tensor GaussNewton::apply(const Tensor& v) {
  Tensor flat = check_flat(v, size_, dtype_, "GaussNewton::apply");
  auto blocks = unflatten_vector(flat, params_);
  ++products_;
  NoGradGuard ng;
  std::vector<Tensor> gs, ts;
  for (size_t i = 0; i < blocks.size(); ++i)
    if (jt_u_[i].requires_grad()) {
      gs.push_back(jt_u_[i]);
      ts.push_back(blocks[i]);
    }
  if (gs.empty() || !loss_grad_.requires_grad()) return zeros({size_}, dtype_);
  Tensor jv = grad(gs, {dummy_}, ts, {.retain_graph = true, .allow_unused = true})[0];               // [N, O]
  Tensor hjv = grad({loss_grad_}, {out_leaf_}, {jv}, {.retain_graph = true, .allow_unused = true})[0];  // [N, O]
  return flatten_vectors(grad({output_}, params_, {hjv}, {.retain_graph = true, .allow_unused = true}));
}

}  // namespace kern::tools
