// Structured NTK, step 1: which modules are layers (closed form or grad-sample rule), the
// check of their calls after the forward, and the structure check against autograd. See
// ntk_structured.cpp for the method.
#include <algorithm>
#include <optional>
#include <typeinfo>

#include "ntk_structured_internal.hpp"

namespace kern::tools::detail::structured {
namespace {

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

}  // namespace

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

namespace {

// Where each layer's parameters sit in `params`: (weight, bias) indices of a closed-form
// layer, the first parameter's index of a rule layer (-1: not in params).
struct CheckIndex {
  std::vector<std::pair<int64_t, int64_t>> at;
  std::vector<int64_t> at_rule;
};

// The parameters of the ok layers, in layer order, and where each layer's are.
std::vector<Tensor> check_params(const std::vector<Layer>& layers, CheckIndex& index) {
  std::vector<Tensor> params;
  index.at.assign(layers.size(), {-1, -1});
  index.at_rule.assign(layers.size(), -1);
  for (size_t l = 0; l < layers.size(); ++l) {
    if (!layers[l].ok) continue;
    if (layers[l].rule) {
      index.at_rule[l] = static_cast<int64_t>(params.size());
      params.insert(params.end(), layers[l].rparams.begin(), layers[l].rparams.end());
      continue;
    }
    if (layers[l].w.defined()) index.at[l].first = static_cast<int64_t>(params.size()), params.push_back(layers[l].w);
    if (layers[l].b.defined()) index.at[l].second = static_cast<int64_t>(params.size()), params.push_back(layers[l].b);
  }
  return params;
}

// The unit's layer-local sum_o G_{0,o}: [1, P_layer] for a rule unit, else [og, F]. `terms`
// is its rounding scale: sum_o |G_{0,o}| (or a bound of it), not |sum_o G_{0,o}|, which can
// cancel (the gradient of sum_o f_o): float32 rounding is relative to the terms summed.
Tensor layer_local_sum(const Unit& u, const Layer& L, int64_t O, double& terms) {
  Tensor got;
  if (L.rule) {
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
  return got;
}

// Autograd's gradient gs of the unit's parameters in layer_local_sum's layout (undefined
// gradients as zeros of dtype dt).
Tensor autograd_part(const Unit& u, const Layer& L, const std::vector<Tensor>& gs, const CheckIndex& index,
                     DType dt) {
  std::vector<Tensor> parts;
  if (L.rule) {
    for (size_t i = 0; i < L.rparams.size(); ++i) {
      const Tensor& g = gs[index.at_rule[u.layer] + static_cast<int64_t>(i)];
      const int64_t P = L.rparams[i].numel();
      parts.push_back(g.defined() ? g.reshape({1, P}) : zeros({1, P}, dt));
    }
  }
  if (!L.rule && u.with_w) {
    const int64_t fw = u.F - (u.with_b ? 1 : 0);
    const Tensor& gw = gs[index.at[u.layer].first];
    parts.push_back(gw.defined() ? gw.narrow(0, u.c0, u.og).reshape({u.og, fw}) : zeros({u.og, fw}, dt));
  }
  if (!L.rule && u.with_b) {
    const Tensor& gb = gs[index.at[u.layer].second];
    parts.push_back(gb.defined() ? gb.narrow(0, u.c0, u.og).reshape({u.og, 1}) : zeros({u.og, 1}, dt));
  }
  return parts.size() == 1 ? parts[0] : cat(parts, 1);
}

}  // namespace

// The structure check: on sample 0 (a forward of that sample alone), autograd's gradient
// of sum_o f_o w.r.t. each layer's w and b must equal the layer-local sum_o G_{0,o}. A
// parameter also used outside its layer (tied weights, an unknown multiplier) breaks it.
void check_structure(nn::Module& model, const Tensor& x, std::vector<Layer>& layers, const std::vector<Unit>& units,
                     int64_t O, NtkInfo& info) {
  CheckIndex index;
  std::vector<Tensor> params = check_params(layers, index);
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
    double terms = 0;
    Tensor got = layer_local_sum(u, L, O, terms);  // [og, F] or [1, P_layer]
    const DType dt = got.dtype();
    Tensor expected = autograd_part(u, L, gs, index, dt);
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

}  // namespace kern::tools::detail::structured
