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
//
// The files: ntk_structured_layers.cpp (step 1, the checks), ntk_structured_grads.cpp (steps
// 2-4: capture, units, backward passes), this one (step 5, the evaluations and the entry);
// ntk_structured_internal.hpp declares what they share.
#include <algorithm>

#include <chrono>
#include <optional>

#include "ntk_structured_internal.hpp"

namespace kern::tools::detail {
namespace structured {
namespace {

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

}  // namespace

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

namespace {

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
}  // namespace structured

Tensor structured_ntk(nn::Module& model, const Tensor& x1, const Tensor& x2, const ParamSet& ps, Kind kind,
                      const NtkOptions& options, NtkInfo& info) {
  info.method = NtkMethod::Structured;
  using namespace structured;
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
