// Per-sample gradient rules of the long-convolution family (kern/models/longconv.hpp).
//
// LongConvKernel, SGConvKernel: calling a SequenceKernel convolves, c = fft_conv(u, k) with
// k = K(theta) [H, L] produced from the parameters theta by a sample-independent map K. With
// g = dL/dc, the per-sample gradient with respect to the produced kernel is the causal
// cross-correlation of the output gradient with the input,
//     dk_n[h, j] = sum_{t >= j} g[n, h, t] u[n, h, t - j]           [N, H, L]
// computed by FFT (zero padding to a power of two >= 2L: no wrap-around), and the per-sample
// gradient of theta is one vector-Jacobian product of K per sample: J_K(theta)^T dk_n. The
// vjp is linear in its cotangent, so all N go through ONE backward of K applied to theta
// broadcast to [N, ...] (kernel_from accepts leading dims; slice n of the result depends on
// slice n of the input only). Kernel dropout in training mode draws a mask the rule cannot
// know: error.
//
// SGConvKernel owns no parameter itself: its sub-kernels live in the parameter-only child
// `kernel_list` (a ParameterList, which is never called, so no hook can see it). The rule is
// registered as covering that child and reports them under dotted names relative to the
// kernel module ("kernel_list.0", ...), the full names being "<kernel module>.kernel_list.<i>".
//
// LongConv's own parameter is the skip D [1, H] in z = c + D u, followed by the activation,
// dropout and output_linear. dL_n/dD[h] = m sum_t dL/dz[n, h, t] u[n, h, t], with dL/dz one
// (batched: samples are independent) vjp of the part after z, recomputed from the input
// without firing any hook (children's forward() directly).
//
// longconv::Embedding: y[n, ...] = weight[ids[n, ...]], so dL_n/dweight is the scatter-add of
// sample n's output-gradient rows into the rows its ids select: [N, num_embeddings, dim].
#include "rule_util.hpp"

#include <kern/autograd.hpp>
#include <kern/models/longconv.hpp>
#include <kern/ops.hpp>

#include <string>
#include <vector>

namespace kern::models {
namespace {

using namespace grad_sample_detail;

// dk[n, h, j] = sum_{t >= j} g[n, h, t] u[n, h, t - j]:  g, u: [N, H, L] -> [N, H, L].
// In the frequency domain the correlation is G * conj(U).
Tensor causal_correlation(const Tensor& g, const Tensor& u) {
  const int64_t L = u.size(-1);
  int64_t n = 1;
  while (n < 2 * L) n *= 2;  // as fft_conv: n >= 2L - 1, so negative lags wrap onto zero padding
  const Tensor conj = from_vector<double>({1.0, -1.0}, {2}).to(u.dtype());
  return narrow(irfft(complex_mul(rfft(g, n), rfft(u, n) * conj), n), -1, 0, L);
}

// The sequence a kernel module was called with, checked: u [N, H, L] with the module's H.
void check_kernel_call(const char* who, const SequenceKernel& k, const Tensor& u, const Tensor& c, const Tensor& g) {
  check_call(who, u, c, g);
  KERN_CHECK(u.dim() == 3 && u.size(1) == k.channels() && c.shape() == u.shape(), who,
             " grad-sample rule: expected input and output [N, H = ", k.channels(), ", L], got input ", u.shape(),
             " and output ", c.shape());
}

// A leaf copy of t broadcast to [N, ...t's shape], requiring grad: the batched vjp's input.
Tensor batched_leaf(const Tensor& t, int64_t N) {
  Shape s = t.shape();
  s.insert(s.begin(), N);
  Tensor leaf = t.detach().unsqueeze(0).expand(s).contiguous();
  leaf.requires_grad_(true);
  return leaf;
}

std::vector<nn::GradSample> long_conv_kernel_rule(nn::Module& module, const Tensor& u, const Tensor& c,
                                                  const Tensor& g) {
  auto& kern_mod = static_cast<LongConvKernel&>(module);
  check_kernel_call("LongConvKernel", kern_mod, u, c, g);
  KERN_CHECK(!(kern_mod.is_training() && kern_mod.options().kernel_dropout > 0),
             "LongConvKernel grad-sample rule: kernel_dropout = ", kern_mod.options().kernel_dropout,
             " is active in training mode: its random mask is unknown to the rule; call eval()");
  if (!kern_mod.weight.tensor().requires_grad()) return {};
  const int64_t N = u.size(0), H = kern_mod.channels(), L = u.size(2);
  Tensor dk;
  {
    NoGradGuard no_grad;
    dk = causal_correlation(g, u);  // [N, H, L]
  }
  Tensor dw;
  {
    EnableGradGuard enable;
    Tensor w = batched_leaf(kern_mod.weight().reshape({H, kern_mod.l_max()}), N);  // [N, H, l_max]
    dw = grad({kern_mod.kernel_from(w, L)}, {w}, {dk}, {.allow_unused = true})[0];
  }
  if (!dw.defined()) dw = zeros({N, H, kern_mod.l_max()}, u.dtype());
  return {{"kernel", times_multiplier(dw.detach(), kern_mod.weight.multiplier()).reshape({N, 1, H, kern_mod.l_max()})}};
}

std::vector<nn::GradSample> sgconv_kernel_rule(nn::Module& module, const Tensor& u, const Tensor& c, const Tensor& g) {
  auto& kern_mod = static_cast<SGConvKernel&>(module);
  check_kernel_call("SGConvKernel", kern_mod, u, c, g);
  const auto& entries = static_cast<const longconv::ParameterList&>(*kern_mod.kernel_list).entries();
  const int64_t N = u.size(0), H = kern_mod.channels(), L = u.size(2), d = kern_mod.options().kernel_dim;
  Tensor dk;
  {
    NoGradGuard no_grad;
    dk = causal_correlation(g, u);  // [N, H, L]
  }
  std::vector<Tensor> subs, wanted;
  std::vector<size_t> which;
  std::vector<Tensor> grads;
  {
    EnableGradGuard enable;
    for (size_t i = 0; i < entries.size(); ++i) {
      subs.push_back(batched_leaf(entries[i]().reshape({H, d}), N));  // [N, H, d]
      if (entries[i].tensor().requires_grad()) {
        wanted.push_back(subs.back());
        which.push_back(i);
      }
    }
    if (wanted.empty()) return {};
    grads = grad({kern_mod.kernel_from(subs, L)}, wanted, {dk}, {.allow_unused = true});
  }
  std::vector<nn::GradSample> out;
  for (size_t j = 0; j < which.size(); ++j) {
    Tensor gi = grads[j].defined() ? grads[j].detach() : zeros({N, H, d}, u.dtype());
    out.push_back({"kernel_list." + std::to_string(which[j]),
                   times_multiplier(gi, entries[which[j]].multiplier()).reshape({N, 1, H, d})});
  }
  return out;
}

std::vector<nn::GradSample> long_conv_rule(nn::Module& module, const Tensor& x, const Tensor& y, const Tensor& g) {
  auto& layer = static_cast<LongConv&>(module);
  const auto& o = layer.options();
  const int64_t H = o.d_model;
  check_call("LongConv", x, y, g);
  KERN_CHECK(x.dim() == 3 && y.shape() == x.shape(), "LongConv grad-sample rule: expected input and output ",
             o.transposed ? "[N, H, L]" : "[N, L, H]", " (same shape), got input ", x.shape(), " and output ", y.shape());
  if (!layer.D.tensor().requires_grad()) return {};
  check_inactive("LongConv", layer.dropout.get(), "dropout");
  if (auto* lk = dynamic_cast<const LongConvKernel*>(layer.kernel.get()))
    KERN_CHECK(!(lk->is_training() && lk->options().kernel_dropout > 0), "LongConv grad-sample rule: the kernel's ",
               "kernel_dropout = ", lk->options().kernel_dropout, " is active in training mode; call eval()");
  const Tensor u = o.transposed ? x : x.transpose(1, 2);  // [N, H, L]
  KERN_CHECK(u.size(1) == H, "LongConv grad-sample rule: input ", x.shape(), " has ", u.size(1),
             " channels but d_model (H) is ", H);
  Tensor z;
  {
    NoGradGuard no_grad;
    z = (layer.kernel->forward(u) + u * layer.D().reshape({H, 1})).detach();  // [N, H, L], as forward
  }
  Tensor gz;
  {
    EnableGradGuard enable;
    z.requires_grad_(true);
    Tensor t = layer.dropout->forward(layer.activation->forward(z)).transpose(1, 2);  // [N, L, H]
    if (auto* seq = dynamic_cast<nn::Sequential*>(layer.output_linear.get()))
      for (const auto& child : seq->children()) t = child->forward(t);  // Linear, GLU / Identity: leaves
    else
      t = layer.output_linear->forward(t);  // Identity
    if (o.transposed) t = t.transpose(1, 2);
    gz = grad({t}, {z}, {g})[0].detach();  // [N, H, L]
  }
  NoGradGuard no_grad;
  return {{"D", times_multiplier(sum(gz * u, {2}), layer.D.multiplier()).reshape({x.size(0), 1, H})}};
}

std::vector<nn::GradSample> embedding_rule(nn::Module& module, const Tensor& ids, const Tensor& y, const Tensor& g) {
  auto& emb = static_cast<longconv::Embedding&>(module);
  if (!emb.weight.tensor().requires_grad()) return {};
  const int64_t num = emb.weight.shape()[0], dim = emb.weight.shape()[1];
  check_call("Embedding", ids, y, g);
  KERN_CHECK(ids.dtype() == DType::Int64, "Embedding grad-sample rule: ids must be int64, got ", ids.dtype());
  Shape want = ids.shape();
  want.push_back(dim);
  KERN_CHECK(y.shape() == want, "Embedding grad-sample rule: output ", y.shape(), " does not match ids ", ids.shape(),
             " (expected ", want, ")");
  NoGradGuard no_grad;
  const int64_t N = ids.size(0), T = ids.numel() / N;
  // Row n * T + t of the output gradient goes to row n * num + ids[n, t] of [N * num, dim].
  std::vector<int64_t> rows = ids.contiguous().to_vector<int64_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < T; ++t) {
      int64_t& r = rows[static_cast<size_t>(n * T + t)];
      KERN_CHECK(r >= 0 && r < num, "Embedding grad-sample rule: id ", r, " out of range [0, ", num, ")");
      r += n * num;
    }
  Tensor dw = index_add(zeros({N * num, dim}, g.dtype()), 0, from_vector<int64_t>(rows, {N * T}),
                        g.reshape({N * T, dim}));
  return {{"weight", times_multiplier(dw.reshape({N, num, dim}), emb.weight.multiplier())}};
}

const nn::GradSampleRegistrar<LongConvKernel> long_conv_kernel_registrar{long_conv_kernel_rule};
const nn::GradSampleRegistrar<SGConvKernel> sgconv_kernel_registrar{sgconv_kernel_rule, {"kernel_list"}};
const nn::GradSampleRegistrar<LongConv> long_conv_registrar{long_conv_rule};
const nn::GradSampleRegistrar<longconv::Embedding> embedding_registrar{embedding_rule};

}  // namespace
}  // namespace kern::models
