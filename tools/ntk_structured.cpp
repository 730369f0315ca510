// Structured NTK: closed-form per-layer kernels for Linear and Conv2d, contraction for the
// remaining parameters. See ntk.hpp for the formulas.
//
// A layer applied at S positions (S = 1 for Linear on [N, in]; S = H_out*W_out for a
// convolution; a module called several times contributes all its calls as more positions)
// is described per sample n by
//   A_n [S, F]        its input rows / patches, with a ones column when the bias is in theta
//   D_{n,o} [S, out]  d f_o(x_n) / d (layer output)_n   (one backward per o, whole batch)
// and its block of the Jacobian is the per-sample weight gradient G_{n,o} = D_{n,o}^T A_n.
// Three evaluations of K_layer = G1 G2^T (picked per layer by flop count):
//   Dense (S == 1):  K[(n,o),(m,p)] = <A_n, A_m> <D_{n,o}, D_{m,p}>   -- (A A^T) (x) (D D^T)
//   PerSample:       G = bmm(D, A) [N*O, out*F], then one GEMM G1 G2^T
//   Pairwise:        K[(n,o),(m,p)] = sum_{s,t} <A_{n,s}, A_{m,t}> <D_{n,o,s}, D_{m,p,t}>
//                    via Q = A A^T [(N S), (N S)], U = Q_{:,m} D_m, then per-pair contractions
// Grouped convolutions are handled one group at a time (a group is a small convolution).
// Other modules with a per-sample gradient rule (kern/nn/grad_sample.hpp: norms, the zoo's
// layer scales, filter banks, ...) are one unit each: during backward pass o the rule maps
// (input, output, d f_o / d output) to G_{., o} [N, P_layer]; then K += G1 G2^T as for
// PerSample (eager). When G would exceed NtkOptions::grad_sample_budget the output gradients
// are kept instead and G is rebuilt in feature chunks that fit the budget (the rule runs once
// per chunk).
#include <algorithm>
#include <omp.h>

#include <chrono>
#include <exception>
#include <optional>
#include <typeinfo>

#include <kern/nn/grad_sample.hpp>

#include "ntk_internal.hpp"

namespace kern::tools::detail {
namespace {

enum class Strategy { Dense, PerSample, Pairwise };

struct Layer {
  std::string name;
  nn::Module* module = nullptr;
  const nn::Linear* linear = nullptr;
  const nn::Conv2d* conv = nullptr;
  const nn::GradSampleRule* rule = nullptr;  // neither Linear nor Conv2d: the module's rule
  std::vector<std::string> rnames;           // rule: own parameter names in theta, in order
  std::vector<Tensor> rparams;               //       and the parameters
  Tensor w, b;  // Linear/Conv2d: the layer's parameters that are in theta (undefined otherwise)
  double mw = 1.0, mb = 1.0;  // forward multipliers of weight and bias
  bool ok = true;
};

struct Use {
  Tensor in, out;
};

struct Side {
  int64_t N = 0;
  Tensor out;                           // [N, O] with its graph
  std::vector<std::vector<Use>> uses;   // per layer, per call
};

// A unit of work: one Linear, or one group of a Conv2d (output channels [c0, c0 + og)).
struct Unit {
  size_t layer = 0;
  int64_t c0 = 0, og = 0;   // output channels
  int64_t ci0 = 0, cg = 0;  // input channels of the group (conv)
  int64_t F = 0, S = 0;     // features per position (incl. ones), positions (all calls)
  bool with_w = false, with_b = false;
  Strategy strategy = Strategy::PerSample;
  bool eager = false;  // PerSample with F < S: keep G (smaller than D), built during backward
  Tensor A[2];  // [N, S, F]
  Tensor D[2];  // Dense/PerSample: [N, O, og, S]; Pairwise: [N, S, og, O]
  Tensor G[2];  // eager: [N, O, og*F], the per-sample gradients
  // Rule units over the budget (not eager): d f_o / d output per o, per call.
  std::vector<std::vector<Tensor>> gout[2];
  std::vector<Use> ruses[2];  // rule units: the calls' inputs and outputs (detached)
  const Layer* rl = nullptr;  // rule units: the layer
  int64_t chunk = 0;          // rule units: features per chunk of G
};

void capture(nn::Module& model, const Tensor& x, const std::vector<Layer>& layers, Side& s) {
  s.N = x.size(0);
  s.uses.assign(layers.size(), {});
  HookScope hooks;
  for (size_t l = 0; l < layers.size(); ++l)
    hooks.add(layers[l].module,
              layers[l].module->register_forward_hook([&s, l](nn::Module&, const Tensor& in, const Tensor& out) {
                s.uses[l].push_back({in, out});
              }));
  EnableGradGuard eg;
  s.out = flatten_output(model(x), s.N, "ntk");
}

// Positions of one call of a layer, or -1 when its tensors do not have the batch first.
int64_t positions(const Layer& L, const Use& u, int64_t N) {
  if (u.in.dim() < 1 || u.out.dim() < 1 || u.in.size(0) != N || u.out.size(0) != N) return -1;
  if (L.rule) return 1;  // a rule sees whole calls
  if (L.linear) return u.out.numel() / (N * L.linear->options().out_features());
  if (u.in.dim() != 4 || u.out.dim() != 4) return -1;
  return u.out.size(2) * u.out.size(3);
}

// im2col of one group: x [N, C, H, W] -> A [N, Ho*Wo, F], features (c, i, j) then a ones
// column, matching the weight layout [C_out, C_in/groups, kH, kW].
// The patch values are scaled by mw and the ones column is mb (the forward multipliers), so
// that <A_n,s, A_m,t> is the kernel of the parameters as the forward uses them.
template <typename T>
void im2col(const Tensor& xt, const Conv2dParams& p, int64_t kh, int64_t kw, int64_t ci0, int64_t cg,
            bool with_w, bool with_b, T mw, T mb, int64_t Ho, int64_t Wo, Tensor& A) {
  const T* x = xt.data_ptr<T>();
  T* a = A.data_ptr<T>();
  const int64_t N = xt.size(0), C = xt.size(1), H = xt.size(2), W = xt.size(3), F = A.size(2);
  const int64_t sh = p.stride[0], sw = p.stride[1], ph = p.padding[0], pw = p.padding[1];
  const int64_t dh = p.dilation[0], dw = p.dilation[1];
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t ho = 0; ho < Ho; ++ho)
      for (int64_t wo = 0; wo < Wo; ++wo) {
        T* row = a + ((n * Ho + ho) * Wo + wo) * F;
        int64_t f = 0;
        if (with_w)
          for (int64_t c = 0; c < cg; ++c) {
            const T* plane = x + (n * C + ci0 + c) * H * W;
            for (int64_t i = 0; i < kh; ++i) {
              const int64_t hi = ho * sh - ph + i * dh;
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t wi = wo * sw - pw + j * dw;
                row[f++] = (hi >= 0 && hi < H && wi >= 0 && wi < W) ? mw * plane[hi * W + wi] : T(0);
              }
            }
          }
        if (with_b) row[f] = mb;
      }
}

Tensor unit_inputs(const Unit& u, const Layer& L, const std::vector<Use>& uses, int64_t N) {
  NoGradGuard ng;
  std::vector<Tensor> parts;
  for (const Use& use : uses) {
    const int64_t S = positions(L, use, N);
    const DType dt = use.in.dtype();
    if (L.linear) {
      const int64_t in_f = L.linear->options().in_features();
      std::vector<Tensor> cols;
      Tensor a = use.in.detach().reshape({N, S, in_f});
      if (u.with_w) cols.push_back(L.mw == 1.0 ? a : a * L.mw);
      if (u.with_b) cols.push_back(full({N, S, 1}, L.mb, dt));
      parts.push_back(cols.size() == 1 ? cols[0].contiguous() : cat(cols, 2));
    } else {
      const auto k = L.conv->options().kernel_size();
      Tensor x = use.in.detach().contiguous();
      Tensor A = empty({N, S, u.F}, dt);
      if (dt == DType::Float64)
        im2col<double>(x, L.conv->params(), k[0], k[1], u.ci0, u.cg, u.with_w, u.with_b, L.mw, L.mb,
                       use.out.size(2), use.out.size(3), A);
      else
        im2col<float>(x, L.conv->params(), k[0], k[1], u.ci0, u.cg, u.with_w, u.with_b, static_cast<float>(L.mw),
                      static_cast<float>(L.mb), use.out.size(2), use.out.size(3), A);
      parts.push_back(A);
    }
  }
  return parts.size() == 1 ? parts[0] : cat(parts, 1);
}

// D[n, s_off + s, c, o] = cm[n, c, s] for cm [N, og, S_use] (any strides), D [N, S, og, O]
// contiguous: the transposing store of the pairwise layout as a plain loop (a strided
// copy_ of the permuted view walks D with stride O element by element, several times
// slower).
template <typename T>
void scatter_pairwise_t(const Tensor& cm, Tensor& D, int64_t o, int64_t s_off) {
  const int64_t N = cm.size(0), og = cm.size(1), S_use = cm.size(2);
  const int64_t S = D.size(1), O = D.size(3);
  const int64_t sn = cm.stride(0), sc = cm.stride(1), ss = cm.stride(2);
  const T* src = cm.data_ptr<T>();
  T* dst = D.data_ptr<T>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t s = 0; s < S_use; ++s) {
      const T* in = src + n * sn + s * ss;
      T* out = dst + ((n * S + s_off + s) * og) * O + o;
      for (int64_t c = 0; c < og; ++c) out[c * O] = in[c * sc];
    }
}

void scatter_pairwise(const Tensor& cm, Tensor& D, int64_t o, int64_t s_off) {
  KERN_CHECK(D.is_contiguous() && cm.dtype() == D.dtype(), "ntk: pairwise store");
  if (D.dtype() == DType::Float64) scatter_pairwise_t<double>(cm, D, o, s_off);
  else scatter_pairwise_t<float>(cm, D, o, s_off);
}

// A rule layer's per-sample gradients for one output o: the rule on every call (rows
// [n0, n0 + n) of its input, output and output gradient gs[c]; undefined gs[c]: zeros),
// summed over calls, the parameters flattened in L.rparams order -> [n, P_layer].
Tensor rule_grads(const Layer& L, const std::vector<Use>& uses, const std::vector<Tensor>& gs, int64_t n0,
                  int64_t n) {
  std::vector<Tensor> acc(L.rparams.size());
  for (size_t c = 0; c < uses.size(); ++c) {
    Tensor out = uses[c].out.detach().narrow(0, n0, n);
    Tensor g = gs[c].defined() ? gs[c].narrow(0, n0, n) : zeros_like(out);
    for (nn::GradSample& s : (*L.rule)(*L.module, uses[c].in.detach().narrow(0, n0, n), out, g)) {
      auto it = std::find(L.rnames.begin(), L.rnames.end(), s.name);
      if (it == L.rnames.end()) continue;
      const size_t i = static_cast<size_t>(it - L.rnames.begin());
      const int64_t P = L.rparams[i].numel();
      KERN_CHECK(s.grad.numel() == n * P, "ntk: the grad-sample rule of ", L.name, " (", L.module->name(),
                 ") returned ", s.grad.shape(), " for '", s.name, "' ", L.rparams[i].shape(), " on ", n, " samples");
      Tensor t = s.grad.reshape({n, P});
      acc[i] = acc[i].defined() ? acc[i] + t : t;
    }
  }
  for (size_t i = 0; i < acc.size(); ++i) {
    KERN_CHECK(acc[i].defined() || uses.empty(), "ntk: the grad-sample rule of ", L.name, " (", L.module->name(),
               ") returned no gradient for its parameter '", L.rnames[i], "'");
    if (!acc[i].defined()) acc[i] = zeros({n, L.rparams[i].numel()}, L.rparams[i].dtype());
  }
  return acc.size() == 1 ? acc[0] : cat(acc, 1);
}

// Stores d f_o / d out of one call (g, shaped like the call's output) in the unit: into D, or
// for an eager unit straight into G_{., o} = D_{., o}^T A (so D is never stored).
void store(Unit& u, const Layer& L, int k, const Tensor& g, int64_t o, int64_t s_off, int64_t S_use, int64_t N,
           int64_t O) {
  if (!g.defined()) {
    if (u.eager) u.G[k].select(1, o).fill_(0.0);
    else if (u.strategy == Strategy::Pairwise) u.D[k].select(3, o).narrow(1, s_off, S_use).fill_(0.0);
    else u.D[k].select(1, o).narrow(2, s_off, S_use).fill_(0.0);
    return;
  }
  // Channel-major view [N, og, S_use].
  Tensor cm = L.linear ? g.reshape({N, S_use, L.linear->options().out_features()}).permute({0, 2, 1})
                       : g.reshape({N, g.size(1), S_use}).narrow(1, u.c0, u.og);
  if (u.eager) {
    Tensor dst = u.G[k].select(1, o).view({N, u.og, u.F});
    batched_matmul(cm, u.A[k], dst);
  }
  else if (u.strategy == Strategy::Pairwise) scatter_pairwise(cm, u.D[k], o, s_off);
  else u.D[k].select(1, o).narrow(2, s_off, S_use).copy_(cm);
}

// The O backward passes of one side (one per output, the whole batch at once: samples are
// independent), filling D or G of every unit. The passes are independent reads of one
// retained graph, so they run concurrently, one per thread, each with single-threaded ops
// inside (nested regions are inactive): one parallel region for all passes instead of one
// per op, which matters most on a loaded machine. The graph is released by the caller.
void backprop(Side& s, const std::vector<Layer>& layers, std::vector<Unit>& units, int k, int64_t O) {
  std::vector<Tensor> inputs;
  std::vector<std::vector<size_t>> index(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    if (!layers[l].ok) continue;
    for (const Use& use : s.uses[l]) {
      index[l].push_back(inputs.size());
      inputs.push_back(use.out);
    }
  }
  std::exception_ptr error;
  const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), O));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int64_t o = 0; o < O; ++o) {
    try {
      Tensor cot = zeros({s.N, O}, s.out.dtype());
      cot.narrow(1, o, 1).fill_(1.0);
      auto gs = grad({s.out}, inputs, {cot}, {.retain_graph = true, .allow_unused = true});
      NoGradGuard ng;  // grad mode is per thread
      for (Unit& u : units) {
        const Layer& L = layers[u.layer];
        if (!L.ok) continue;
        if (L.rule) {
          std::vector<Tensor> g_calls;
          for (size_t c : index[u.layer]) g_calls.push_back(gs[c]);
          if (u.eager) u.G[k].select(1, o).copy_(rule_grads(L, u.ruses[k], g_calls, 0, s.N));
          else u.gout[k][o] = std::move(g_calls);  // disjoint elements per o
          continue;
        }
        int64_t s_off = 0;
        for (size_t c = 0; c < s.uses[u.layer].size(); ++c) {
          const int64_t S_use = positions(L, s.uses[u.layer][c], s.N);
          store(u, L, k, gs[index[u.layer][c]], o, s_off, S_use, s.N, O);  // disjoint slices per o
          s_off += S_use;
        }
      }
    } catch (...) {
#pragma omp critical(kern_ntk_backprop)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// Runs the calling thread's parallel regions (kern ops, oneDNN) on one thread in a scope:
// for batches of tiny ops, where thread wake-ups cost more than the work.
class SerialScope {
 public:
  SerialScope() : prev_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SerialScope() { omp_set_num_threads(prev_); }
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;

 private:
  int prev_;
};

// The structure check: on sample 0 (a forward of that sample alone), autograd's gradient
// of sum_o f_o w.r.t. each layer's w and b must equal the layer-local sum_o G_{0,o}. A
// parameter also used outside its layer (tied weights, an unknown multiplier) breaks it.
void check_structure(nn::Module& model, const Tensor& x, std::vector<Layer>& layers, const std::vector<Unit>& units,
                     int64_t O, NtkInfo& info) {
  std::vector<Tensor> params;
  std::vector<std::pair<int64_t, int64_t>> at(layers.size(), {-1, -1});
  std::vector<int64_t> at_rule(layers.size(), -1);  // rule layers: index of their first parameter
  for (size_t l = 0; l < layers.size(); ++l) {
    if (!layers[l].ok) continue;
    if (layers[l].rule) {
      at_rule[l] = static_cast<int64_t>(params.size());
      params.insert(params.end(), layers[l].rparams.begin(), layers[l].rparams.end());
      continue;
    }
    if (layers[l].w.defined()) at[l].first = static_cast<int64_t>(params.size()), params.push_back(layers[l].w);
    if (layers[l].b.defined()) at[l].second = static_cast<int64_t>(params.size()), params.push_back(layers[l].b);
  }
  if (params.empty()) return;
  std::vector<Tensor> gs;
  SerialScope serial;  // one sample: tiny ops
  {
    EnableGradGuard eg;
    Tensor out = flatten_output(model(x.narrow(0, 0, 1)), 1, "ntk");
    gs = grad({out}, params, {ones_like(out)}, {.allow_unused = true});
  }
  NoGradGuard ng;
  for (const Unit& u : units) {
    Layer& L = layers[u.layer];
    if (!L.ok) continue;
    Tensor got;  // [og, F]
    // The rounding scale: sum_o |G_{0,o}| (or a bound of it), not |sum_o G_{0,o}|, which can
    // cancel (the gradient of sum_o f_o): float32 rounding is relative to the terms summed.
    double terms = 0;
    std::vector<Tensor> parts;
    if (L.rule) {  // got: sum_o G_{0,o} [1, P_layer]
      if (u.eager) {
        got = sum(u.G[0].select(0, 0), {0}).view({1, u.F});
        terms = max(sum(abs(u.G[0].select(0, 0)), {0})).item();
      } else {
        got = zeros({1, u.F}, L.rparams[0].dtype());
        Tensor abs_sum = zeros({1, u.F}, got.dtype());
        for (int64_t o = 0; o < O; ++o) {
          Tensor g_o = rule_grads(L, u.ruses[0], u.gout[0][o], 0, 1);
          got = got + g_o;
          abs_sum = abs_sum + abs(g_o);
        }
        terms = max(abs_sum).item();
      }
      for (size_t i = 0; i < L.rparams.size(); ++i) {
        const Tensor& g = gs[at_rule[u.layer] + static_cast<int64_t>(i)];
        const int64_t P = L.rparams[i].numel();
        parts.push_back(g.defined() ? g.reshape({1, P}) : zeros({1, P}, got.dtype()));
      }
    } else if (u.eager) {
      got = sum(u.G[0].select(0, 0), {0}).view({u.og, u.F});
      terms = max(sum(abs(u.G[0].select(0, 0)), {0})).item();
    } else {
      Tensor d0 = u.strategy == Strategy::Pairwise ? sum(u.D[0].select(0, 0), {2}).t()  // [og, S]
                                                   : sum(u.D[0].select(0, 0), {0});     // [og, S]
      got = mm(d0, u.A[0].select(0, 0));
      Tensor d0_abs = u.strategy == Strategy::Pairwise ? sum(abs(u.D[0].select(0, 0)), {2}).t()
                                                       : sum(abs(u.D[0].select(0, 0)), {0});
      terms = max(mm(d0_abs, abs(u.A[0].select(0, 0)))).item();  // >= sum_o |G_{0,o}|
    }
    const DType dt = got.dtype();
    if (!L.rule && u.with_w) {
      const int64_t fw = u.F - (u.with_b ? 1 : 0);
      const Tensor& gw = gs[at[u.layer].first];
      parts.push_back(gw.defined() ? gw.narrow(0, u.c0, u.og).reshape({u.og, fw}) : zeros({u.og, fw}, dt));
    }
    if (!L.rule && u.with_b) {
      const Tensor& gb = gs[at[u.layer].second];
      parts.push_back(gb.defined() ? gb.narrow(0, u.c0, u.og).reshape({u.og, 1}) : zeros({u.og, 1}, dt));
    }
    Tensor expected = parts.size() == 1 ? parts[0] : cat(parts, 1);
    // max() of kern ops (vectorized), not max_abs_diff (element-wise conversion to double).
    const double scale = std::max(max(abs(expected)).item(), terms);
    const double tol = dt == DType::Float64 ? 1e-9 : 1e-4;
    if (!(max(abs(got - expected)).item() <= tol * scale + 1e-30)) {
      L.ok = false;
      info.notes.push_back(L.name +
                           ": its parameters' gradient differs from the layer-local one (used outside the layer, "
                           "e.g. tied weights or a multiplier): contraction instead");
    }
  }
}

// ---- the three evaluations, accumulated into K

// Per-sample gradients of features [f0, f0 + fc): G[(n,o), (c,f)] = sum_s D[n,o,c,s] A[n,s,f],
// [N*O, og*fc]. (Eager units already hold all of G.)
Tensor per_sample_grads(const Unit& u, int k, int64_t N, int64_t O, int64_t f0, int64_t fc) {
  if (u.eager) return u.G[k].view({N * O, u.og * u.F});
  if (u.rl) {  // a rule unit over the budget: the chunk rebuilt from the output gradients
    Tensor G = empty({N, O, fc}, u.rl->rparams[0].dtype());
    for (int64_t o = 0; o < O; ++o)
      G.select(1, o).copy_(rule_grads(*u.rl, u.ruses[k], u.gout[k][o], 0, N).narrow(1, f0, fc));
    return G.view({N * O, fc});
  }
  Tensor G = empty({N, O * u.og, fc}, u.A[k].dtype());
  batched_matmul(u.D[k].view({N, O * u.og, u.S}), u.A[k].narrow(2, f0, fc), G);
  return G.view({N * O, u.og * fc});
}

// The features are processed in chunks so that a chunk of G holds at most 2^21 elements
// (K is a sum over features): G can be much larger than D and A (F > S), and the
// per-sample Jacobian block is exactly what this method avoids keeping whole. (Smaller
// chunks cost speed: the Gram products get a shorter inner dimension.)
int64_t feature_chunk(const Unit& u, int64_t N, int64_t O) {
  if (u.eager) return u.F;
  if (u.rl) return u.chunk;
  const int64_t row = N * O * u.og;
  const int64_t chunks = std::max<int64_t>(1, (row * u.F + (int64_t(1) << 21) - 1) >> 21);
  return (u.F + chunks - 1) / chunks;
}

void pairwise_full(Tensor& K, const Unit& u, int64_t N1, int64_t N2, int64_t O, bool sym) {
  const int64_t S = u.S;
  Tensor Q = zeros({N1 * S, N2 * S}, K.dtype());  // <A_{n,s}, A_{m,t}>
  add_gram(Q, u.A[0].view({N1 * S, u.F}), u.A[1].view({N2 * S, u.F}), sym);
  add_pairwise(K, Q, u.D[0], u.D[1], sym);
}

void add_unit_kernel(Tensor& K, const Unit& u, int64_t N1, int64_t N2, int64_t O, Kind kind, bool sym) {
  NoGradGuard ng;
  const int64_t S = u.S, F = u.F, og = u.og;
  switch (u.strategy) {
    case Strategy::PerSample: {
      const int64_t chunk = feature_chunk(u, std::max(N1, N2), O);
      for (int64_t f0 = 0; f0 < F; f0 += chunk) {
        const int64_t fc = std::min(chunk, F - f0), cols = og * fc;
        Tensor G1 = per_sample_grads(u, 0, N1, O, f0, fc);
        Tensor G2 = sym ? G1 : per_sample_grads(u, 1, N2, O, f0, fc);
        if (kind == Kind::Full) add_gram(K, G1, G2, sym);
        else if (kind == Kind::Diagonal) add_into(K, sum(G1 * G1, {1}).view({N1, O}));
        else
          add_into(K, sum(bmm(G1.view({N1, O, cols}).permute({1, 0, 2}), G2.view({N2, O, cols}).permute({1, 2, 0})),
                          {0}));
      }
      return;
    }
    case Strategy::Dense: {
      Tensor A1 = u.A[0].view({N1, F}), A2 = u.A[1].view({N2, F});
      Tensor D1 = u.D[0].view({N1, O, og}), D2 = u.D[1].view({N2, O, og});
      if (kind == Kind::Diagonal) return add_into(K, sum(D1 * D1, {2}) * sum(A1 * A1, {1}).view({N1, 1}));
      Tensor Q = mm(A1, A2.t());  // [N1, N2]
      if (kind == Kind::TracedSum)
        return add_into(K, sum(bmm(D1.permute({1, 0, 2}), D2.permute({1, 2, 0})), {0}) * Q);
      add_gram(K, D1.view({N1 * O, og}), D2.view({N2 * O, og}), sym, Q, O);  // (D D^T) (x) (A A^T)
      return;
    }
    case Strategy::Pairwise: {
      if (kind == Kind::Full) return pairwise_full(K, u, N1, N2, O, sym);
      if (kind == Kind::TracedSum) {
        Tensor full = zeros({N1 * O, N2 * O}, K.dtype());
        pairwise_full(full, u, N1, N2, O, sym);
        return add_into(K, trace_outputs(full, O));
      }
      Tensor diag = empty({N1, O}, K.dtype());
      for (int64_t n = 0; n < N1; ++n) {
        Tensor An = u.A[0].select(0, n);                       // [S, F]
        Tensor Dn = u.D[0].select(0, n).reshape({S, og * O});  // [S, og*O]
        Tensor U = mm(mm(An, An.t()), Dn).view({S * og, O});
        diag.select(0, n).copy_(sum(Dn.view({S * og, O}) * U, {0}));
      }
      return add_into(K, diag);
    }
  }
}

Strategy choose(NtkStructuredForm form, int64_t N1, int64_t N2, bool cross, int64_t O, int64_t og, int64_t S,
                int64_t F) {
  if (S == 1) return Strategy::Dense;
  if (form == NtkStructuredForm::PerSample) return Strategy::PerSample;
  if (form == NtkStructuredForm::Pairwise) return Strategy::Pairwise;
  const double n1 = N1, n2 = N2, o = O, c = og, s = S, f = F;
  const double per_sample = (n1 + (cross ? n2 : 0)) * o * c * s * f + n1 * o * n2 * o * c * f;
  // The pairwise form runs many small products; weigh it by 2 for their lower efficiency.
  const double pairwise = 2.0 * (n1 * s * n2 * s * f + n2 * n1 * s * s * o * c + n1 * n2 * o * o * s * c);
  return pairwise < per_sample ? Strategy::Pairwise : Strategy::PerSample;
}

// Multiply-adds of a unit's kernel term (roughly; eager units already hold G).
double unit_work(const Unit& u, int64_t N1, int64_t N2, int64_t O, bool cross) {
  const double n1 = N1, n2 = N2, o = O, c = u.og, s = u.S, f = u.F;
  switch (u.strategy) {
    case Strategy::Dense: return n1 * n2 * (f + o * o * c);
    case Strategy::PerSample: return (u.eager ? 0.0 : (n1 + (cross ? n2 : 0)) * o * c * s * f) + n1 * o * n2 * o * c * f;
    case Strategy::Pairwise: return n1 * s * n2 * s * f + n2 * n1 * s * s * o * c + n1 * n2 * o * o * s * c;
  }
  return 0.0;
}

// Units with less work than this (multiply-adds, ~0.05 ms) assemble on one thread: each
// parallel region costs a thread wake-up, which on a loaded machine (other processes on
// both cores) can take milliseconds (measured: the ntk_cnn workload's Linear readout, 0.1
// ms of work, took 10 ms as 2-thread regions).
constexpr double kSerialUnitWork = 1 << 22;

// Records the time since the previous call as a named phase of NtkInfo.
class PhaseTimer {
 public:
  explicit PhaseTimer(NtkInfo& info) : info_(info), t0_(std::chrono::steady_clock::now()) {}
  void operator()(const std::string& name) {
    const auto t = std::chrono::steady_clock::now();
    info_.phases.emplace_back(name, std::chrono::duration<double>(t - t0_).count());
    t0_ = t;
  }

 private:
  NtkInfo& info_;
  std::chrono::steady_clock::time_point t0_;
};

// The layer a module is, when it has a closed form: exactly nn::Linear / nn::Conv2d (a
// subclass may override forward), with its parameters and their forward multipliers. The
// one place that reads a module's parameters and multipliers.
std::optional<Layer> closed_form_layer(const std::string& name, nn::Module& m) {
  Layer L;
  L.name = name.empty() ? "<root>" : name;
  L.module = &m;
  if (typeid(m) == typeid(nn::Linear)) {
    L.linear = static_cast<const nn::Linear*>(&m);
    L.w = L.linear->weight.tensor();
    L.b = L.linear->bias.tensor();
  } else if (typeid(m) == typeid(nn::Conv2d)) {
    L.conv = static_cast<const nn::Conv2d*>(&m);
    L.w = L.conv->weight.tensor();
    L.b = L.conv->bias.tensor();
  } else {
    return std::nullopt;
  }
  // The slots' forward multipliers (kern/param): y = m_w (x W^T) + m_b b.
  L.mw = L.linear ? L.linear->weight.multiplier() : L.conv->weight.multiplier();
  L.mb = L.linear ? L.linear->bias.multiplier() : L.conv->bias.multiplier();
  return L;
}

// Any other module with a grad-sample rule and own parameters in theta.
std::optional<Layer> rule_layer(const std::string& name, nn::Module& m, const ParamSet& ps) {
  const nn::GradSampleRule* rule = nn::find_grad_sample_rule(m);
  if (rule == nullptr) return std::nullopt;
  Layer L;
  L.name = name.empty() ? "<root>" : name;
  L.module = &m;
  L.rule = rule;
  for (auto& [pname, p] : m.named_parameters(/*recurse=*/false))
    if (ps.find(p) >= 0) {
      L.rnames.push_back(pname);
      L.rparams.push_back(p);
    }
  // Parameter-only children the rule covers (SGConv's kernel_list): "child.name".
  const std::vector<std::string> covered = nn::grad_sample_covered_children(m);
  for (auto& [cname, child] : m.named_children())
    if (std::find(covered.begin(), covered.end(), cname) != covered.end())
      for (auto& [pname, p] : child->named_parameters())
        if (ps.find(p) >= 0) {
          L.rnames.push_back(cname + "." + pname);
          L.rparams.push_back(p);
        }
  if (L.rparams.empty()) return std::nullopt;
  return L;
}

// 1. Layers with a closed form or a rule and a parameter in theta; a parameter shared by two
// such modules is not one layer's (contraction handles it).
std::vector<Layer> find_layers(nn::Module& model, const ParamSet& ps, const NtkOptions& options, NtkInfo& info) {
  std::vector<Layer> layers;
  std::vector<int> claimed(ps.tensors.size(), 0);
  for (auto& [name, m] : model.named_modules()) {
    std::optional<Layer> L = closed_form_layer(name, *m);
    if (!L) {
      if (options.grad_sample_rules()) L = rule_layer(name, *m, ps);
      if (!L) continue;
      for (const Tensor& p : L->rparams) ++claimed[ps.find(p)];
      layers.push_back(std::move(*L));
      continue;
    }
    const int64_t wi = ps.find(L->w), bi = ps.find(L->b);
    if (wi < 0) L->w = Tensor();
    if (bi < 0) L->b = Tensor();
    if (wi < 0 && bi < 0) continue;
    if (wi >= 0) ++claimed[wi];
    if (bi >= 0) ++claimed[bi];
    layers.push_back(std::move(*L));
  }
  for (Layer& L : layers) {
    bool shared = (L.w.defined() && claimed[ps.find(L.w)] > 1) || (L.b.defined() && claimed[ps.find(L.b)] > 1);
    for (const Tensor& p : L.rparams) shared = shared || claimed[ps.find(p)] > 1;
    if (shared) {
      L.ok = false;
      info.notes.push_back(L.name + ": parameters shared with another module");
    }
  }
  return layers;
}

// After the forward passes: a layer whose calls the closed form cannot describe (not called
// through operator(), batch not first, called differently on x1 and x2) falls back.
void check_layer_calls(std::vector<Layer>& layers, const Side* side, bool cross, NtkInfo& info) {
  for (size_t l = 0; l < layers.size(); ++l) {
    Layer& L = layers[l];
    for (int k = 0; k < (cross ? 2 : 1) && L.ok; ++k) {
      if (side[k].uses[l].empty()) {
        L.ok = false;
        info.notes.push_back(L.name + ": not called through operator() (no forward hook fired)");
      }
      for (const Use& use : side[k].uses[l])
        if (L.ok && positions(L, use, side[k].N) < 0) {
          L.ok = false;
          info.notes.push_back(L.name + ": input/output " + fmt::format("{}", use.out.shape()) +
                               " does not have the batch as dim 0");
        }
    }
    if (L.ok && cross && side[0].uses[l].size() != side[1].uses[l].size()) {
      L.ok = false;
      info.notes.push_back(L.name + ": called a different number of times on x1 and x2");
    }
  }
}

// Depthwise convolutions (one input and one output channel per group; ConvNeXt's have
// hundreds of groups) whose G [N, O, C*kH*kW (+C)] fits the budget go through Conv2d's
// grad-sample rule -- per output o ONE depthwise weight-gradient convolution over all
// samples and channels -- instead of one closed-form unit per group (thousands of tiny
// units, each with its own im2col, stores and Gram product). Still reported as "conv2d".
void batch_depthwise(std::vector<Layer>& layers, int64_t N_total, int64_t O, const NtkOptions& options, DType dt) {
  for (Layer& L : layers) {
    if (!L.ok || !L.conv || !options.grad_sample_rules()) continue;
    const auto& co = L.conv->options();
    if (co.groups() < 2 || co.in_channels() != co.groups() || co.out_channels() != co.groups()) continue;
    int64_t P = 0;
    for (const Tensor& p : {L.w, L.b}) P += p.defined() ? p.numel() : 0;
    if (N_total * O * P * static_cast<int64_t>(dtype_size(dt)) > options.grad_sample_budget()) continue;
    L.rule = nn::find_grad_sample_rule(*L.module);
    if (L.rule == nullptr) continue;
    if (L.w.defined()) L.rnames.push_back("weight"), L.rparams.push_back(L.w);
    if (L.b.defined()) L.rnames.push_back("bias"), L.rparams.push_back(L.b);
  }
}

// A rule layer's unit: G [N, O, P_layer] built during the backward passes when it fits the
// budget (eager), else the output gradients are kept and G is rebuilt in chunks of features.
Unit rule_unit(size_t l, const Layer& L, const Side* side, bool cross, int64_t O, const NtkOptions& options,
               DType dt) {
  const int64_t N1 = side[0].N, N2 = cross ? side[1].N : N1;
  Unit u;
  u.layer = l;
  u.rl = &L;
  u.og = 1;
  u.S = 1;
  for (const Tensor& p : L.rparams) u.F += p.numel();
  u.with_w = true;
  u.strategy = Strategy::PerSample;
  const int64_t elt = dtype_size(dt);
  u.eager = (N1 + (cross ? N2 : 0)) * O * u.F * elt <= options.grad_sample_budget();
  u.chunk = u.eager ? u.F
                    : std::clamp<int64_t>(options.grad_sample_budget() / ((N1 + (cross ? N2 : 0)) * O * elt), 1, u.F);
  for (int k = 0; k < (cross ? 2 : 1); ++k) {
    for (const Use& use : side[k].uses[l]) u.ruses[k].push_back({use.in.detach(), use.out.detach()});
    if (u.eager) u.G[k] = empty({side[k].N, O, u.F}, dt);
    else u.gout[k].assign(O, {});
  }
  if (!cross) u.ruses[1] = u.ruses[0], u.G[1] = u.G[0];
  return u;
}

// 3. Units (a Linear, one group of a Conv2d, or a rule layer), their evaluation and buffers.
std::vector<Unit> make_units(const std::vector<Layer>& layers, const Side* side, bool cross, int64_t O,
                             const NtkOptions& options, DType dt) {
  const int64_t N1 = side[0].N, N2 = cross ? side[1].N : N1;
  std::vector<Unit> units;
  for (size_t l = 0; l < layers.size(); ++l) {
    const Layer& L = layers[l];
    if (!L.ok) continue;
    if (L.rule) {
      units.push_back(rule_unit(l, L, side, cross, O, options, dt));
      continue;
    }
    int64_t S = 0;
    for (const Use& use : side[0].uses[l]) S += positions(L, use, N1);
    const int64_t groups = L.conv ? L.conv->options().groups() : 1;
    const int64_t out_ch = L.conv ? L.conv->options().out_channels() : L.linear->options().out_features();
    const int64_t in_ch = L.conv ? L.conv->options().in_channels() : L.linear->options().in_features();
    const int64_t kk = L.conv ? L.conv->options().kernel_size()[0] * L.conv->options().kernel_size()[1] : 1;
    for (int64_t g = 0; g < groups; ++g) {
      Unit u;
      u.layer = l;
      u.og = out_ch / groups;
      u.c0 = g * u.og;
      u.cg = in_ch / groups;
      u.ci0 = g * u.cg;
      u.with_w = L.w.defined();
      u.with_b = L.b.defined();
      u.F = (u.with_w ? u.cg * kk : 0) + (u.with_b ? 1 : 0);
      u.S = S;
      u.strategy = choose(options.structured_form(), N1, N2, cross, O, u.og, S, u.F);
      // Eager: G_{., o} is built during the backward passes and D is never stored. It needs
      // less memory when F < S, but runs O small products per sample instead of one large
      // one, so by default only when D would be large (>= 2^20 elements).
      u.eager = u.strategy == Strategy::PerSample && u.F < S && side[0].uses[l].size() == 1 &&
                (options.low_memory() || N1 * O * u.og * S >= (int64_t(1) << 20));
      for (int k = 0; k < (cross ? 2 : 1); ++k) {
        const int64_t N = side[k].N;
        u.A[k] = unit_inputs(u, L, side[k].uses[l], N);
        if (u.eager) u.G[k] = empty({N, O, u.og * u.F}, dt);
        else u.D[k] = u.strategy == Strategy::Pairwise ? empty({N, S, u.og, O}, dt) : empty({N, O, u.og, S}, dt);
      }
      if (!cross) u.A[1] = u.A[0], u.D[1] = u.D[0], u.G[1] = u.G[0];
      units.push_back(std::move(u));
    }
  }
  return units;
}

// 5. Each unit's kernel term added into K, one unit at a time (its buffers are freed after
// its term), timed per layer.
void assemble(Tensor& K, std::vector<Unit>& units, const std::vector<Layer>& layers, int64_t N1, int64_t N2,
              int64_t O, Kind kind, bool cross, PhaseTimer& phase) {
  for (size_t i = 0; i < units.size(); ++i) {
    const size_t l = units[i].layer;
    if (layers[l].ok) {
      std::optional<SerialScope> small;
      if (unit_work(units[i], N1, N2, O, cross) < kSerialUnitWork) small.emplace();
      add_unit_kernel(K, units[i], N1, N2, O, kind, !cross);
    }
    units[i] = Unit();  // free its buffers
    if (i + 1 == units.size() || units[i + 1].layer != l) phase("kernel:" + layers[l].name);
  }
}

// The parameters no layer took (their kernel by Jacobian contraction), NtkInfo's structured
// / fallback lists and its per-layer report.
std::vector<Tensor> remaining_params(nn::Module& model, const std::vector<Layer>& layers, const ParamSet& ps,
                                     NtkInfo& info) {
  std::vector<std::string> rule(ps.tensors.size());  // empty: contraction
  for (const Layer& L : layers) {
    if (!L.ok) continue;
    const std::string r = L.linear ? "linear" : L.conv ? "conv2d" : "grad_sample:" + L.module->name();
    for (const Tensor& p : {L.w, L.b})
      if (p.defined()) rule[ps.find(p)] = r;
    for (const Tensor& p : L.rparams) rule[ps.find(p)] = r;
  }
  std::vector<Tensor> rest;
  for (size_t i = 0; i < ps.tensors.size(); ++i) {
    (rule[i].empty() ? info.fallback : info.structured).push_back(ps.names[i]);
    if (rule[i].empty()) rest.push_back(ps.tensors[i]);
  }
  // Per module: its own parameters in theta, grouped by how they were handled.
  std::vector<bool> seen(ps.tensors.size(), false);
  for (auto& [path, m] : model.named_modules()) {
    std::vector<NtkLayerInfo> mine;
    for (auto& [pname, p] : m->named_parameters(/*recurse=*/false)) {
      const int64_t i = ps.find(p);
      if (i < 0 || seen[i]) continue;
      seen[i] = true;
      const std::string r = rule[i].empty() ? "contraction" : rule[i];
      auto it = std::find_if(mine.begin(), mine.end(), [&](const NtkLayerInfo& e) { return e.rule == r; });
      if (it == mine.end()) it = mine.insert(mine.end(), NtkLayerInfo{path.empty() ? "<root>" : path, r, {}});
      it->params.push_back(ps.names[i]);
    }
    info.layers.insert(info.layers.end(), mine.begin(), mine.end());
  }
  return rest;
}

}  // namespace

Tensor structured_ntk(nn::Module& model, const Tensor& x1, const Tensor& x2, const ParamSet& ps, Kind kind,
                      const NtkOptions& options, NtkInfo& info) {
  info.method = NtkMethod::Structured;
  const bool cross = x2.defined();
  PhaseTimer phase(info);
  std::vector<Layer> layers = find_layers(model, ps, options, info);

  // 2. Forward passes with hooks. For small inputs the forward and the input gathering run
  // on one thread: a few milliseconds of small ops where waking threads costs more than it
  // saves (measured: 0.7 ms serial vs 7 ms with 2 threads on a loaded machine).
  std::optional<SerialScope> serial;
  if (x1.numel() + (cross ? x2.numel() : 0) <= (int64_t(1) << 20)) serial.emplace();
  Side side[2];
  capture(model, x1, layers, side[0]);
  if (cross) capture(model, x2, layers, side[1]);
  const int64_t O = side[0].out.size(1);
  KERN_CHECK(!cross || side[1].out.size(1) == O, "ntk: the model gives ", O, " outputs on x1 but ",
             side[1].out.size(1), " on x2");
  info.num_outputs = O;
  const int64_t N1 = side[0].N, N2 = cross ? side[1].N : N1;
  phase("forward");
  check_layer_calls(layers, side, cross, info);
  const DType dt = ps.tensors[0].dtype();
  batch_depthwise(layers, N1 + (cross ? N2 : 0), O, options, dt);
  std::vector<Unit> units = make_units(layers, side, cross, O, options, dt);
  serial.reset();
  phase("inputs");

  // 4. Output gradients (O backward passes per side), then free the graphs.
  backprop(side[0], layers, units, 0, O);
  if (cross) backprop(side[1], layers, units, 1, O);
  for (Side& s : side) s = Side();
  phase("backward");
  if (options.check_structure()) {
    check_structure(model, x1, layers, units, O, info);
    phase("check");
  }

  NoGradGuard ng;
  Tensor K;
  {
    SerialScope one_thread;  // a fill of at most a few MB
    K = kind == Kind::Full        ? zeros({N1 * O, N2 * O}, dt)
        : kind == Kind::TracedSum ? zeros({N1, N2}, dt)
                                  : zeros({N1, O}, dt);
  }
  assemble(K, units, layers, N1, N2, O, kind, cross, phase);
  std::vector<Tensor> rest = remaining_params(model, layers, ps, info);
  if (!rest.empty()) {
    int64_t O1 = 0;
    Tensor J1 = jacobian_rows(model, x1, rest, O1);
    Tensor J2 = cross ? jacobian_rows(model, x2, rest, O1) : J1;
    add_into(K, contract_jacobians(J1, J2, O, kind));
    phase("fallback");
  }
  return K;
}

}  // namespace kern::tools::detail
