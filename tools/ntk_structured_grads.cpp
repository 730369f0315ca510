// Structured NTK, steps 2 to 4: the forward capture of every layer's calls, the units with
// their inputs A [N, S, F], and the O backward passes per side that fill D (or, for eager
// units, G). See ntk_structured.cpp for the method.
#include <algorithm>
#include <omp.h>

#include <exception>

#include "ntk_structured_internal.hpp"

namespace kern::tools::detail::structured {

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

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

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

}  // namespace kern::tools::detail::structured
