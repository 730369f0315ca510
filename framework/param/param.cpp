// Parameterization presets -> per-parameter records; apply() re-initializes and stores them.
// The formulas are listed in kern/param/param.hpp; this file only evaluates them.
#include <kern/nn/conv.hpp>
#include <kern/nn/init.hpp>
#include <kern/nn/linear.hpp>
#include <kern/param/param.hpp>

#include <cmath>
#include <typeinfo>
#include <unordered_set>

namespace kern::param {

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

const Shape* BaseShapes::find_delta(const std::string& name) const {
  for (auto& [n, s] : delta)
    if (n == name) return &s;
  return nullptr;
}

BaseShapes base_shapes(const nn::Module& base, const nn::Module& delta) {
  BaseShapes out = base_shapes(base);
  for (auto& [n, t] : delta.named_parameters()) out.delta.emplace_back(n, t.shape());
  return out;
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

Preset Preset::mup(const nn::Module& base_model, const nn::Module& delta_model) {
  Preset p = mup(base_model);
  p.base = base_shapes(base_model, delta_model);
  return p;
}

Preset Preset::mup_table3(const nn::Module& base_model, const nn::Module& delta_model) {
  Preset p = mup(base_model, delta_model);
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
  param::Layout layout;         // declared by the module, or the default for the rank
  bool declared = false;        // the module declared the layout
  const nn::Module* owner = nullptr;
  int layer = -1;       // for 1-D params: index of the sibling "weight" matrix, if any
};

std::string dotted(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

Layout default_layout(size_t ndim) {
  if (ndim >= 2) return {0, 1};
  if (ndim == 1) return {0, -1};
  return {-1, -1};
}

std::vector<Entry> collect(const nn::Module& model) {
  std::vector<Entry> out;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& [path, m] : model.named_modules()) {
    const size_t first = out.size();
    for (const nn::Slot* s : m->slots()) {
      if (s->is_buffer) continue;
      const Tensor& t = s->current();
      if (!seen.insert(t.impl_ptr().get()).second) continue;  // tied: first name only
      Entry e{dotted(path, s->name), path, s->name, t.shape(), default_layout(t.shape().size()),
              s->layout.has_value(), m.get(), -1};
      if (s->layout) e.layout = *s->layout;
      out.push_back(std::move(e));
    }
    int weight = -1;
    for (size_t i = first; i < out.size(); ++i)
      if (out[i].leaf == "weight" && out[i].shape.size() >= 2) weight = static_cast<int>(i);
    for (size_t i = first; i < out.size(); ++i)
      if (out[i].shape.size() == 1) out[i].layer = weight;
  }
  return out;
}

// fan_in, fan_out of a shape under a layout: the channel dims times the receptive dims.
std::pair<int64_t, int64_t> fans(const Shape& s, const Layout& l) {
  int64_t k = 1;
  for (int64_t d = 0; d < static_cast<int64_t>(s.size()); ++d)
    if (d != l.out_dim && d != l.in_dim) k *= s[static_cast<size_t>(d)];
  const int64_t in = l.in_dim >= 0 ? s[static_cast<size_t>(l.in_dim)] : 1;
  const int64_t out = l.out_dim >= 0 ? s[static_cast<size_t>(l.out_dim)] : 1;
  return {in * k, out * k};
}

bool is_weight(Role r) {
  return r == Role::InputWeight || r == Role::HiddenWeight || r == Role::OutputWeight ||
         r == Role::FiniteWeight;
}

const char* override_hint(const Entry& e) {
  (void)e;
  return "override it with Preset::role(\"<name>\", param::Role::...) or declare the "
         "parameter's layout (nn::ParamOptions::layout)";
}

// How the preset gives width information.
struct Width {
  bool by_model = false;  // base shapes of a base model
  bool by_width = false;  // a width ratio r = width / base_width (registration-order roles)
  double r = 1.0;
};

Width width_info(const Preset& p) {
  Width w;
  w.by_model = p.base.has_value();
  w.by_width = !w.by_model && p.width > 0 && p.base_width > 0;
  if (w.by_width) w.r = static_cast<double>(p.width) / static_cast<double>(p.base_width);
  return w;
}

const Shape& base_shape_of(const Preset& p, const Entry& e) {
  const Shape* s = p.base->find(e.name);
  KERN_CHECK(s != nullptr, "param: the base model has no parameter '", e.name, "' (model ",
             e.shape, ")");
  KERN_CHECK(s->size() == e.shape.size(), "param: base shape of '", e.name, "' is ", *s,
             " but the model's is ", e.shape, " (different ranks)");
  return *s;
}

// The dims of a parameter that grow with width: where the base shape differs from the delta
// shape (when a delta model was given) or from the model's own shape.
std::vector<bool> growing_dims(const Preset& p, const Entry& e) {
  const Shape& base = base_shape_of(p, e);
  const Shape* other = &e.shape;
  if (!p.base->delta.empty()) {
    other = p.base->find_delta(e.name);
    KERN_CHECK(other != nullptr && other->size() == base.size(), "param: the delta model has no ",
               "parameter '", e.name, "' of rank ", base.size(), " (base ", base, ")");
  }
  std::vector<bool> grows(base.size());
  for (size_t d = 0; d < base.size(); ++d) grows[d] = base[d] != (*other)[d];
  return grows;
}

// Role of a >= 2-D parameter from the dims that grow with width (base shapes).
Role role_from_shapes(const Entry& e, const std::vector<bool>& growing, const Shape& base) {
  const auto& l = e.layout;
  std::vector<int64_t> extra;
  for (int64_t d = 0; d < static_cast<int64_t>(e.shape.size()); ++d)
    if (growing[static_cast<size_t>(d)] && d != l.out_dim && d != l.in_dim) extra.push_back(d);
  KERN_CHECK(extra.empty(), "param: cannot decide the role of '", e.name, "' ", e.shape,
             " (base ", base, "): dim ", extra.front(), " grows with width but is neither its ",
             "output-channel dim (", l.out_dim, ") nor its input-channel dim (", l.in_dim, ")",
             e.declared ? " of the layout its module declared" : " of PyTorch's [out, in, k...]",
             "; ", override_hint(e));
  auto grows = [&](int64_t d) { return d >= 0 && growing[static_cast<size_t>(d)]; };
  const bool out = grows(l.out_dim), in = grows(l.in_dim);
  if (out && in) return Role::HiddenWeight;
  if (out) return Role::InputWeight;
  if (in) return Role::OutputWeight;
  return Role::FiniteWeight;
}

// A weight whose dims the registration-order rule understands: a plain Linear or a groups = 1
// Conv2d, with the default layout.
bool plain_layer_weight(const Entry& e) {
  if (e.declared || e.leaf != "weight") return false;
  if (typeid(*e.owner) == typeid(nn::Linear)) return true;
  if (typeid(*e.owner) == typeid(nn::Conv2d))
    return static_cast<const nn::Conv2d*>(e.owner)->options().groups() == 1;
  return false;
}

// Roles: overrides first (the last matching one wins), then shapes (base model) or
// registration order.
std::vector<Role> infer_roles(const std::vector<Entry>& entries, const Preset& preset) {
  const Width w = width_info(preset);
  const size_t n = entries.size();
  std::vector<Role> roles(n, Role::Scalar);
  std::vector<bool> overridden(n, false);
  for (size_t i = 0; i < n; ++i)
    for (auto& [pattern, r] : preset.roles)
      if (glob_match(pattern, entries[i].name)) {
        roles[i] = r;
        overridden[i] = true;
      }
  // Registration order over the matrix-like parameters that are not overridden.
  std::vector<size_t> matrices;
  for (size_t i = 0; i < n; ++i)
    if (!overridden[i] && entries[i].shape.size() >= 2) matrices.push_back(i);
  for (size_t j = 0; j < matrices.size(); ++j) {
    const Entry& e = entries[matrices[j]];
    Role r = Role::HiddenWeight;
    if (j + 1 == matrices.size()) r = Role::OutputWeight;
    else if (j == 0) r = Role::InputWeight;
    if (w.by_model) {
      r = role_from_shapes(e, growing_dims(preset, e), base_shape_of(preset, e));
    } else if (w.by_width) {
      KERN_CHECK(plain_layer_weight(e), "param: cannot decide the role of '", e.name, "' ",
                 e.shape, " (", e.owner->name(), e.declared ? ", declared layout" : "",
                 "): Preset::mup(width, base_width) reads roles from registration order, which "
                 "only holds for the weights of plain Linear and groups = 1 Conv2d layers. Give "
                 "base shapes instead (Preset::mup(base_model), the model built at the base "
                 "width), or ", override_hint(e));
    }
    roles[matrices[j]] = r;
  }
  for (size_t i = 0; i < n; ++i) {
    const Entry& e = entries[i];
    if (!overridden[i] && e.shape.size() == 1) roles[i] = e.leaf == "bias" ? Role::Bias : Role::NormGain;
    KERN_CHECK(!is_weight(roles[i]) || e.shape.size() >= 2, "param: '", e.name, "' ", e.shape,
               " cannot have role ", role_name(roles[i]), " (weights need >= 2 dims)");
  }
  return roles;
}

// Fans and base fans of entry i (roles decided).
void set_fans(ParamRecord& rec, size_t i, const std::vector<Entry>& entries,
              const std::vector<Role>& roles, const Preset& preset) {
  const Entry& e = entries[i];
  const Width w = width_info(preset);
  const Entry* layer = e.layer >= 0 ? &entries[static_cast<size_t>(e.layer)] : nullptr;
  const Role layer_role = layer ? roles[static_cast<size_t>(e.layer)] : Role::Scalar;
  if (e.shape.size() >= 2) {
    auto [fi, fo] = fans(e.shape, e.layout);
    rec.fan_in = fi;
    rec.fan_out = fo;
    if (w.by_model) {
      rec.base_shape = base_shape_of(preset, e);
      auto [bi, bo] = fans(rec.base_shape, e.layout);
      rec.base_fan_in = static_cast<double>(bi);
      rec.base_fan_out = static_cast<double>(bo);
    } else {
      const bool hidden_or_out = rec.role == Role::HiddenWeight || rec.role == Role::OutputWeight;
      const bool in_or_hidden = rec.role == Role::InputWeight || rec.role == Role::HiddenWeight;
      const bool in_inf = w.by_width && hidden_or_out && e.shape[1] != 1;
      const bool out_inf = w.by_width && in_or_hidden;
      rec.base_fan_in = in_inf ? fi / w.r : static_cast<double>(fi);
      rec.base_fan_out = out_inf ? fo / w.r : static_cast<double>(fo);
    }
  } else if (e.shape.size() == 1) {
    rec.fan_out = e.shape[0];
    rec.fan_in = layer ? fans(layer->shape, layer->layout).first : 1;
    if (w.by_model) {
      rec.base_shape = base_shape_of(preset, e);
      rec.base_fan_out = static_cast<double>(rec.base_shape[0]);
      rec.base_fan_in =
          layer ? static_cast<double>(fans(base_shape_of(preset, *layer), layer->layout).first) : 1.0;
    } else {
      const bool out_inf = w.by_width && layer_role != Role::OutputWeight;
      const bool in_inf = w.by_width && layer &&
                          (layer_role == Role::HiddenWeight || layer_role == Role::OutputWeight) &&
                          layer->shape[1] != 1;
      rec.base_fan_out = out_inf ? rec.fan_out / w.r : static_cast<double>(rec.fan_out);
      rec.base_fan_in = in_inf ? rec.fan_in / w.r : static_cast<double>(rec.fan_in);
    }
  }
}

// Init std, multiplier and lr / wd multipliers of a weight under the preset's scheme.
void weight_rules(ParamRecord& rec, const Preset& preset, double sigma) {
  const double m_in = rec.fan_in_mult(), m_out = rec.fan_out_mult();
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
      } else {  // input, hidden and finite weights (for input and finite weights m_in = 1)
        rec.init_std = sigma / std::sqrt(static_cast<double>(rec.fan_in));
        rec.lr_mult_sgd = m_out / m_in;
        rec.lr_mult_adam = 1.0 / m_in;
      }
      break;
  }
}

// Bias and gain rules (a bias of a layer is re-drawn; a norm's vectors keep their init).
void vector_rules(ParamRecord& rec, const Preset& preset, double sigma, bool layer_bias) {
  if (layer_bias) {
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
  const bool mup = preset.scheme == Scheme::MuP || preset.scheme == Scheme::MuPTable3;
  if (mup) rec.lr_mult_sgd = rec.fan_out_mult();  // vector-like: lr * width multiplier (MuSGD)
}

// depth-muP: sqrt(base_depth / depth) on branch outputs, and on blocks' Adam lr.
void depth_rules(ParamRecord& rec, const Entry& e, const DepthOptions& depth) {
  if (depth.depth <= 0) return;
  const double d = std::sqrt(static_cast<double>(depth.base_depth) / static_cast<double>(depth.depth));
  bool ends_branch = false, in_block = false;
  for (auto& pattern : depth.branch_outputs) ends_branch = ends_branch || glob_match(pattern, e.module);
  if (depth.blocks.empty()) in_block = ends_branch;
  for (auto& pattern : depth.blocks) in_block = in_block || glob_match(pattern, e.name);
  if (ends_branch) rec.depth_mult = d;
  if (in_block) rec.lr_mult_adam *= d;
}

void check_depth_patterns(const std::vector<Entry>& entries, const DepthOptions& depth) {
  if (depth.depth <= 0) return;
  for (auto& pattern : depth.branch_outputs) {
    bool any = false;
    for (auto& e : entries) any = any || glob_match(pattern, e.module);
    KERN_CHECK(any, "param: depth_mup: no module with parameters matches branch pattern '",
               pattern, "'");
  }
}

}  // namespace

Records compute_records(const nn::Module& model, const Preset& preset) {
  const std::vector<Entry> entries = collect(model);
  const std::vector<Role> roles = infer_roles(entries, preset);
  const double sigma = preset.init_gain.value_or(
      preset.dist == InitDist::Uniform ? 1.0 / std::sqrt(3.0) : 1.0);
  const InitKind draw = preset.dist == InitDist::Uniform ? InitKind::Uniform : InitKind::Normal;

  Records out;
  out.reserve(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    const Role layer_role = e.layer >= 0 ? roles[static_cast<size_t>(e.layer)] : Role::Scalar;
    const bool layer_bias = roles[i] == Role::Bias && e.layer >= 0;
    ParamRecord rec;
    rec.scheme = preset.scheme;
    rec.role = roles[i];
    set_fans(rec, i, entries, roles, preset);
    if (is_weight(rec.role)) {
      rec.init = draw;
      weight_rules(rec, preset, sigma);
    } else if (rec.role == Role::Bias || rec.role == Role::NormGain) {
      if (layer_bias) rec.init = draw;
      vector_rules(rec, preset, sigma, layer_bias);
    }
    rec.wd_mult_sgd = 1.0 / rec.lr_mult_sgd;
    rec.wd_mult_adam = 1.0 / rec.lr_mult_adam;

    // init overrides
    if (preset.bias_zero_init && layer_bias) rec.init = InitKind::Zeros;
    if (preset.readout_zero_init &&
        (rec.role == Role::OutputWeight || (layer_bias && layer_role == Role::OutputWeight)))
      rec.init = InitKind::Zeros;
    if (rec.init == InitKind::Zeros) rec.init_std = 0.0;
    for (auto& pattern : preset.keep_init)
      if (glob_match(pattern, e.name)) rec.init = InitKind::Keep;

    depth_rules(rec, e, preset.depth);
    out.emplace_back(e.name, rec);
  }
  check_depth_patterns(entries, preset.depth);
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

std::string describe(const nn::Module& model) { return describe(records(model)); }

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
