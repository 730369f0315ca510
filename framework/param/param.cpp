// Parameterization presets -> per-parameter records; apply() re-initializes and stores them.
// The formulas are listed in kern/param/param.hpp; this file only evaluates them.
#include <kern/nn/init.hpp>
#include <kern/param/param.hpp>

#include <cmath>
#include <unordered_set>

namespace kern::param {

std::string_view scheme_name(Scheme s) {
  switch (s) {
    case Scheme::Standard: return "standard";
    case Scheme::NTK: return "ntk";
    case Scheme::MuP: return "mup";
    case Scheme::MuPTable3: return "mup_table3";
  }
  return "?";
}

bool glob_match(std::string_view p, std::string_view s) {
  // Iterative '*' matcher with backtracking to the last star.
  size_t pi = 0, si = 0, star = std::string_view::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (pi < p.size() && p[pi] == s[si]) {
      ++pi;
      ++si;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

const Shape* BaseShapes::find(const std::string& name) const {
  for (auto& [n, s] : shapes)
    if (n == name) return &s;
  return nullptr;
}

BaseShapes base_shapes(const nn::Module& base) {
  BaseShapes out;
  for (auto& [n, t] : base.named_parameters()) out.shapes.emplace_back(n, t.shape());
  return out;
}

Preset Preset::standard() { return Preset{}; }

Preset Preset::ntk() {
  Preset p;
  p.scheme = Scheme::NTK;
  p.dist = InitDist::Normal;
  return p;
}

Preset Preset::mup(int64_t width, int64_t base_width) {
  KERN_CHECK(width > 0 && base_width > 0, "param::Preset::mup: width (", width,
             ") and base_width (", base_width, ") must be > 0");
  Preset p;
  p.scheme = Scheme::MuP;
  p.width = width;
  p.base_width = base_width;
  return p;
}

Preset Preset::mup(const nn::Module& base_model) {
  Preset p;
  p.scheme = Scheme::MuP;
  p.base = base_shapes(base_model);
  return p;
}

Preset Preset::mup_table3(int64_t width, int64_t base_width) {
  Preset p = mup(width, base_width);
  p.scheme = Scheme::MuPTable3;
  return p;
}

Preset Preset::mup_table3(const nn::Module& base_model) {
  Preset p = mup(base_model);
  p.scheme = Scheme::MuPTable3;
  return p;
}

Preset Preset::depth_mup(Preset p, int64_t depth, int64_t base_depth,
                         std::vector<std::string> branch_outputs, std::vector<std::string> blocks) {
  KERN_CHECK(depth > 0 && base_depth > 0, "param::Preset::depth_mup: depth (", depth,
             ") and base_depth (", base_depth, ") must be > 0");
  KERN_CHECK(!branch_outputs.empty(), "param::Preset::depth_mup: name at least one module that ",
             "ends a residual branch (e.g. \"blocks.*.fc2\")");
  p.depth = {depth, base_depth, std::move(branch_outputs), std::move(blocks)};
  return p;
}

namespace {

struct Entry {
  std::string name;     // dotted parameter name
  std::string module;   // dotted module path ("" = root)
  std::string leaf;     // name inside the module
  Shape shape;
  int layer = -1;       // for 1-D params: index of the sibling "weight" matrix, if any
};

std::string dotted(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

std::vector<Entry> collect(const nn::Module& model) {
  std::vector<Entry> out;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& [path, m] : model.named_modules()) {
    const size_t first = out.size();
    for (auto& [leaf, t] : m->named_parameters(false)) {
      if (!seen.insert(t.impl_ptr().get()).second) continue;  // tied: first name only
      out.push_back({dotted(path, leaf), path, leaf, t.shape(), -1});
    }
    int weight = -1;
    for (size_t i = first; i < out.size(); ++i)
      if (out[i].leaf == "weight" && out[i].shape.size() >= 2) weight = static_cast<int>(i);
    for (size_t i = first; i < out.size(); ++i)
      if (out[i].shape.size() == 1) out[i].layer = weight;
  }
  return out;
}

// fan_in, fan_out of a matrix-like shape [out, in, k...].
std::pair<int64_t, int64_t> matrix_fans(const Shape& s) {
  int64_t k = 1;
  for (size_t d = 2; d < s.size(); ++d) k *= s[d];
  return {s[1] * k, s[0] * k};
}

bool is_weight(Role r) {
  return r == Role::InputWeight || r == Role::HiddenWeight || r == Role::OutputWeight;
}

}  // namespace

Records compute_records(const nn::Module& model, const Preset& preset) {
  const std::vector<Entry> entries = collect(model);
  const size_t n = entries.size();

  // ---- roles: inferred, then overridden by name (the last matching override wins)
  std::vector<Role> roles(n, Role::Scalar);
  std::vector<size_t> matrices;
  for (size_t i = 0; i < n; ++i)
    if (entries[i].shape.size() >= 2) matrices.push_back(i);
  for (size_t j = 0; j < matrices.size(); ++j) {
    Role r = Role::HiddenWeight;
    if (j + 1 == matrices.size()) r = Role::OutputWeight;
    else if (j == 0) r = Role::InputWeight;
    roles[matrices[j]] = r;
  }
  for (size_t i = 0; i < n; ++i) {
    if (entries[i].shape.size() == 1)
      roles[i] = entries[i].leaf == "bias" ? Role::Bias : Role::NormGain;
    for (auto& [pattern, r] : preset.roles)
      if (glob_match(pattern, entries[i].name)) roles[i] = r;
    KERN_CHECK(!is_weight(roles[i]) || entries[i].shape.size() >= 2, "param: '", entries[i].name,
               "' ", entries[i].shape, " cannot have role ", role_name(roles[i]),
               " (weights need >= 2 dims)");
  }

  // ---- fans and base fans
  const bool by_model = preset.base.has_value();
  const bool by_width = !by_model && preset.width > 0 && preset.base_width > 0;
  const double r = by_width ? static_cast<double>(preset.width) / preset.base_width : 1.0;
  auto base_shape = [&](const Entry& e) -> const Shape& {
    const Shape* s = preset.base->find(e.name);
    KERN_CHECK(s != nullptr, "param: the base model has no parameter '", e.name, "' (model ",
               e.shape, ")");
    KERN_CHECK(s->size() == e.shape.size(), "param: base shape of '", e.name, "' is ", *s,
               " but the model's is ", e.shape, " (different ranks)");
    return *s;
  };

  Records out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const Entry& e = entries[i];
    ParamRecord rec;
    rec.role = roles[i];
    const Entry* layer = e.layer >= 0 ? &entries[e.layer] : nullptr;
    const Role layer_role = layer ? roles[e.layer] : Role::Scalar;
    if (e.shape.size() >= 2) {
      auto [fi, fo] = matrix_fans(e.shape);
      rec.fan_in = fi;
      rec.fan_out = fo;
      if (by_model) {
        auto [bi, bo] = matrix_fans(base_shape(e));
        rec.base_fan_in = static_cast<double>(bi);
        rec.base_fan_out = static_cast<double>(bo);
      } else {
        const bool in_inf = by_width && (rec.role == Role::HiddenWeight || rec.role == Role::OutputWeight) &&
                            e.shape[1] != 1;
        const bool out_inf = by_width && (rec.role == Role::InputWeight || rec.role == Role::HiddenWeight);
        rec.base_fan_in = in_inf ? fi / r : static_cast<double>(fi);
        rec.base_fan_out = out_inf ? fo / r : static_cast<double>(fo);
      }
    } else if (e.shape.size() == 1) {
      rec.fan_out = e.shape[0];
      rec.fan_in = layer ? matrix_fans(layer->shape).first : 1;
      if (by_model) {
        rec.base_fan_out = static_cast<double>(base_shape(e)[0]);
        rec.base_fan_in = layer ? static_cast<double>(matrix_fans(base_shape(*layer)).first) : 1.0;
      } else {
        const bool out_inf = by_width && layer_role != Role::OutputWeight;
        const bool in_inf = by_width && layer &&
                            (layer_role == Role::HiddenWeight || layer_role == Role::OutputWeight) &&
                            layer->shape[1] != 1;
        rec.base_fan_out = out_inf ? rec.fan_out / r : static_cast<double>(rec.fan_out);
        rec.base_fan_in = in_inf ? rec.fan_in / r : static_cast<double>(rec.fan_in);
      }
    }

    // ---- the scheme's rules
    const double sigma = preset.init_gain.value_or(
        preset.dist == InitDist::Uniform ? 1.0 / std::sqrt(3.0) : 1.0);
    const InitKind draw = preset.dist == InitDist::Uniform ? InitKind::Uniform : InitKind::Normal;
    const double m_in = rec.fan_in_mult(), m_out = rec.fan_out_mult();
    const bool layer_bias = rec.role == Role::Bias && layer != nullptr;
    const bool mup = preset.scheme == Scheme::MuP || preset.scheme == Scheme::MuPTable3;
    if (is_weight(rec.role)) {
      rec.init = draw;
      switch (preset.scheme) {
        case Scheme::Standard:
          rec.init_std = sigma / std::sqrt(static_cast<double>(rec.fan_in));
          break;
        case Scheme::NTK:
          rec.init_std = 1.0;
          rec.multiplier = 1.0 / std::sqrt(static_cast<double>(rec.fan_in));
          break;
        case Scheme::MuP:
        case Scheme::MuPTable3:
          if (rec.role == Role::OutputWeight) {
            rec.init_std = sigma / std::sqrt(rec.base_fan_in);
            if (preset.scheme == Scheme::MuP) {
              rec.multiplier = preset.output_mult / m_in;
              rec.lr_mult_sgd = m_in;
              rec.lr_mult_adam = 1.0;
            } else {
              rec.init_std /= m_in;
              rec.multiplier = preset.output_mult;
              rec.lr_mult_sgd = 1.0 / m_in;
              rec.lr_mult_adam = 1.0 / m_in;
            }
          } else {  // input and hidden weights (for an input weight m_in = 1)
            rec.init_std = sigma / std::sqrt(static_cast<double>(rec.fan_in));
            rec.lr_mult_sgd = m_out / m_in;
            rec.lr_mult_adam = 1.0 / m_in;
          }
          break;
      }
    } else if (rec.role == Role::Bias || rec.role == Role::NormGain) {
      if (layer_bias) {
        rec.init = draw;
        switch (preset.scheme) {
          case Scheme::Standard:
            rec.init_std = sigma / std::sqrt(static_cast<double>(rec.fan_in));
            break;
          case Scheme::NTK:
            rec.init_std = 1.0;
            rec.multiplier = preset.ntk_bias_mult;
            break;
          case Scheme::MuP:
          case Scheme::MuPTable3:
            rec.init_std = sigma / std::sqrt(rec.base_fan_in);
            break;
        }
      }
      if (mup) rec.lr_mult_sgd = m_out;  // vector-like: lr * width multiplier (MuSGD)
    }
    rec.wd_mult_sgd = 1.0 / rec.lr_mult_sgd;
    rec.wd_mult_adam = 1.0 / rec.lr_mult_adam;

    // ---- init overrides
    if (preset.bias_zero_init && layer_bias) rec.init = InitKind::Zeros;
    if (preset.readout_zero_init &&
        (rec.role == Role::OutputWeight || (layer_bias && layer_role == Role::OutputWeight)))
      rec.init = InitKind::Zeros;
    if (rec.init == InitKind::Zeros) rec.init_std = 0.0;
    for (auto& pattern : preset.keep_init)
      if (glob_match(pattern, e.name)) rec.init = InitKind::Keep;

    // ---- depth-muP
    if (preset.depth.depth > 0) {
      const double d = std::sqrt(static_cast<double>(preset.depth.base_depth) /
                                 static_cast<double>(preset.depth.depth));
      bool ends_branch = false, in_block = false;
      for (auto& pattern : preset.depth.branch_outputs)
        ends_branch = ends_branch || glob_match(pattern, e.module);
      if (preset.depth.blocks.empty()) in_block = ends_branch;
      for (auto& pattern : preset.depth.blocks) in_block = in_block || glob_match(pattern, e.name);
      if (ends_branch) rec.depth_mult = d;
      if (in_block) rec.lr_mult_adam *= d;
    }
    out.emplace_back(e.name, rec);
  }
  if (preset.depth.depth > 0) {
    for (auto& pattern : preset.depth.branch_outputs) {
      bool any = false;
      for (auto& e : entries) any = any || glob_match(pattern, e.module);
      KERN_CHECK(any, "param: depth_mup: no module with parameters matches branch pattern '",
                 pattern, "'");
    }
  }
  return out;
}

Records apply(nn::Module& model, const Preset& preset, Generator* gen) {
  Records recs = compute_records(model, preset);
  Generator& g = gen ? *gen : default_generator();
  // Owning module of each parameter, in named_parameters order (as compute_records).
  std::vector<std::pair<std::shared_ptr<nn::Module>, std::string>> owners;
  std::vector<Tensor> tensors;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& [path, m] : model.named_modules()) {
    m->clear_param_records();
    for (auto& [leaf, t] : m->named_parameters(false)) {
      if (!seen.insert(t.impl_ptr().get()).second) continue;
      owners.emplace_back(m, leaf);
      tensors.push_back(t);
    }
  }
  KERN_CHECK(owners.size() == recs.size(), "param::apply: internal: ", owners.size(),
             " parameters but ", recs.size(), " records");
  NoGradGuard no_grad;
  for (size_t i = 0; i < recs.size(); ++i) {
    const ParamRecord& r = recs[i].second;
    const Tensor& t = tensors[i];
    switch (r.init) {
      case InitKind::Keep: break;
      case InitKind::Uniform: {
        const double bound = std::sqrt(3.0) * r.init_std;
        nn::init::uniform_(t, -bound, bound, &g);
        break;
      }
      case InitKind::Normal: nn::init::normal_(t, 0.0, r.init_std, &g); break;
      case InitKind::Zeros: nn::init::zeros_(t); break;
      case InitKind::Ones: nn::init::ones_(t); break;
    }
    owners[i].first->set_param_record(owners[i].second, r);
  }
  return recs;
}

Records records(const nn::Module& model) {
  Records out;
  for (auto& [path, m] : model.named_modules())
    for (auto& [leaf, t] : m->named_parameters(false))
      if (const ParamRecord* r = m->param_record(leaf)) out.emplace_back(dotted(path, leaf), *r);
  return out;
}

void clear(nn::Module& model) {
  for (auto& [path, m] : model.named_modules()) m->clear_param_records();
}

std::string describe(const Records& recs) {
  size_t w = 4;
  for (auto& [n, r] : recs) w = std::max(w, n.size());
  std::string out = fmt::format("{:<{}}  {:<6} {:>7} {:>7} {:>9} {:>9} {:<7} {:>10} {:>10} {:>10} {:>10} {:>6}\n",
                                "name", w, "role", "fan_in", "fan_out", "base_in", "base_out",
                                "init", "std", "mult", "lr_sgd", "lr_adam", "depth");
  for (auto& [n, r] : recs)
    out += fmt::format("{:<{}}  {:<6} {:>7} {:>7} {:>9.6g} {:>9.6g} {:<7} {:>10.4g} {:>10.4g} {:>10.4g} {:>10.4g} {:>6.4g}\n",
                       n, w, role_name(r.role), r.fan_in, r.fan_out, r.base_fan_in, r.base_fan_out,
                       init_name(r.init), r.init_std, r.multiplier, r.lr_mult_sgd, r.lr_mult_adam,
                       r.depth_mult);
  return out;
}

}  // namespace kern::param
