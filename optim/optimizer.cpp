// Optimizer base: parameter groups, zero_grad, lr access, state_dict save/load with
// validation (every key, shape and dtype is checked before anything is replaced).
#include <kern/autograd.hpp>
#include <kern/optim/optimizer.hpp>

#include <fmt/ranges.h>

#include <charconv>
#include <cmath>
#include <set>

namespace kern::optim {

Optimizer::Optimizer(std::string name, Family family, std::vector<ParamGroup> groups, double lr,
                     double weight_decay)
    : name_(std::move(name)), family_(family) {
  init(std::move(groups), lr, weight_decay);
}

Optimizer::Optimizer(std::string name, Family family, std::vector<Tensor> params, double lr,
                     double weight_decay)
    : name_(std::move(name)), family_(family) {
  std::vector<ParamGroup> groups(1);
  groups[0].params = std::move(params);
  init(std::move(groups), lr, weight_decay);
}

void Optimizer::init(std::vector<ParamGroup> groups, double lr, double weight_decay) {
  KERN_CHECK(!groups.empty(), name_, ": no parameter groups given");
  std::set<const TensorImpl*> seen;
  for (size_t g = 0; g < groups.size(); ++g) {
    ParamGroup& grp = groups[g];
    if (!grp.lr) grp.lr = lr;
    if (!grp.weight_decay) grp.weight_decay = weight_decay;
    KERN_CHECK(*grp.lr >= 0.0, name_, ": invalid learning rate ", *grp.lr, " in group ", g,
               " (must be >= 0)");
    KERN_CHECK(*grp.weight_decay >= 0.0, name_, ": invalid weight_decay ", *grp.weight_decay,
               " in group ", g, " (must be >= 0)");
    check_group(grp, g);
    for (size_t j = 0; j < grp.params.size(); ++j) {
      const Tensor& p = grp.params[j];
      KERN_CHECK(p.defined(), name_, ": parameter ", j, " of group ", g, " is undefined");
      KERN_CHECK(is_floating(p.dtype()), name_, ": parameter ", j, " of group ", g, " is ",
                 p.dtype(), "; only float32/float64 parameters can be optimized");
      KERN_CHECK(p.is_leaf(), name_, ": parameter ", j, " of group ", g, " (shape ", p.shape(),
                 ") is not a leaf tensor");
      KERN_CHECK(grp.lr_mult[j] >= 0.0, name_, ": negative lr multiplier ", grp.lr_mult[j],
                 " for parameter ", j, " of group ", g);
      KERN_CHECK(seen.insert(p.impl_ptr().get()).second, name_, ": parameter ", j, " of group ",
                 g, " (shape ", p.shape(), ") appears more than once");
    }
    num_params_ += grp.params.size();
  }
  groups_ = std::move(groups);
  state_.resize(num_params_);
}

void Optimizer::check_group(ParamGroup& grp, size_t g) const {
  auto family_name = [](Family f) { return f == Family::Adam ? "Adam" : "SGD"; };
  KERN_CHECK(!grp.family || *grp.family == family_, name_, ": group ", g,
             " carries parameterization multipliers made for ", family_name(*grp.family),
             "-like optimizers, but ", name_, " is ", family_name(family_),
             "-like; build the groups with param_groups(model, {.family = optim::Family::",
             family_name(family_), "})");
  if (grp.lr_mult.empty()) grp.lr_mult.assign(grp.params.size(), 1.0);
  if (grp.wd_mult.empty()) grp.wd_mult.assign(grp.params.size(), 1.0);
  KERN_CHECK(grp.lr_mult.size() == grp.params.size(), name_, ": group ", g, " has ",
             grp.params.size(), " params but ", grp.lr_mult.size(), " lr multipliers");
  KERN_CHECK(grp.wd_mult.size() == grp.params.size(), name_, ": group ", g, " has ",
             grp.params.size(), " params but ", grp.wd_mult.size(), " weight-decay multipliers");
  for (size_t j = 0; j < grp.params.size(); ++j)
    KERN_CHECK(std::isfinite(grp.wd_mult[j]) && grp.wd_mult[j] >= 0.0, name_,
               ": invalid weight-decay multiplier ", grp.wd_mult[j], " for parameter ", j,
               " of group ", g);
}

void Optimizer::zero_grad() {
  for (auto& g : groups_)
    for (auto& p : g.params) p.zero_grad();
}

double Optimizer::lr(size_t group) const { return *param_group(group).lr; }

void Optimizer::set_lr(size_t group, double lr) {
  KERN_CHECK(group < groups_.size(), name_, ": set_lr: group ", group, " out of range (",
             groups_.size(), " groups)");
  KERN_CHECK(lr >= 0.0, name_, ": set_lr: invalid learning rate ", lr, " (must be >= 0)");
  groups_[group].lr = lr;
}

void Optimizer::set_lr(double lr) {
  for (size_t g = 0; g < groups_.size(); ++g) set_lr(g, lr);
}

double Optimizer::weight_decay(size_t group) const { return *param_group(group).weight_decay; }

void Optimizer::set_weight_decay(size_t group, double weight_decay) {
  KERN_CHECK(group < groups_.size(), name_, ": set_weight_decay: group ", group,
             " out of range (", groups_.size(), " groups)");
  KERN_CHECK(weight_decay >= 0.0, name_, ": invalid weight_decay ", weight_decay,
             " (must be >= 0)");
  groups_[group].weight_decay = weight_decay;
}

const ParamGroup& Optimizer::param_group(size_t group) const {
  KERN_CHECK(group < groups_.size(), name_, ": group ", group, " out of range (", groups_.size(),
             " groups)");
  return groups_[group];
}

std::vector<Tensor> Optimizer::parameters() const {
  std::vector<Tensor> out;
  for (auto& g : groups_) out.insert(out.end(), g.params.begin(), g.params.end());
  return out;
}

Tensor Optimizer::checked_grad(const Tensor& p, size_t index) const {
  Tensor g = p.grad();
  KERN_CHECK(g.shape() == p.shape(), name_, ": gradient of parameter ", index, " has shape ",
             g.shape(), ", parameter has ", p.shape());
  KERN_CHECK(g.dtype() == p.dtype(), name_, ": gradient of parameter ", index, " is ", g.dtype(),
             ", parameter is ", p.dtype());
  NoGradGuard ng;
  return g.is_contiguous() ? g.detach() : g.contiguous().detach();
}

// ---- state_dict

StateDict Optimizer::state_dict() const {
  NoGradGuard ng;
  StateDict sd;
  for (size_t g = 0; g < groups_.size(); ++g) {
    sd.emplace_back(fmt::format("group.{}.lr", g), scalar_tensor(*groups_[g].lr, DType::Float64));
    sd.emplace_back(fmt::format("group.{}.weight_decay", g),
                    scalar_tensor(*groups_[g].weight_decay, DType::Float64));
  }
  const auto names = state_names();
  for (size_t i = 0; i < num_params_; ++i) {
    if (state_[i].empty()) continue;
    for (const auto& n : names) {
      auto it = state_[i].find(n);
      if (it == state_[i].end() || !it->second.defined()) continue;
      sd.emplace_back(fmt::format("state.{}.{}", i, n), it->second.detach().clone());
    }
  }
  return sd;
}

namespace {

// Parses "<prefix><index>.<rest>"; false when the key does not have that form.
bool parse_key(const std::string& key, std::string_view prefix, size_t& index, std::string& rest) {
  if (key.rfind(prefix, 0) != 0) return false;
  const char* begin = key.data() + prefix.size();
  const char* end = key.data() + key.size();
  auto [ptr, ec] = std::from_chars(begin, end, index);
  if (ec != std::errc() || ptr == begin || ptr == end || *ptr != '.') return false;
  rest.assign(ptr + 1, end);
  return !rest.empty();
}

}  // namespace

namespace {

// A state dict's lr or weight_decay: a finite non-negative 0-dim float scalar.
double group_scalar(const std::string& opt, const std::string& key, const Tensor& t) {
  KERN_CHECK(t.numel() == 1 && t.dim() == 0 && is_floating(t.dtype()), opt,
             ": load_state_dict: key '", key, "' must be a 0-dim float scalar, got shape ",
             t.shape(), " ", t.dtype());
  const double v = t.item_double();
  KERN_CHECK(std::isfinite(v) && v >= 0.0, opt, ": load_state_dict: key '", key, "' holds ", v,
             ", not a finite non-negative number");
  return v;
}

// A state dict's step counter: a 0-dim float scalar holding a whole number in [0, 2^53]
// (exact in double; checked without a float -> int conversion, which is UB for 1e300 or NaN).
void check_step(const std::string& opt, const std::string& key, const Tensor& t) {
  KERN_CHECK(t.dim() == 0 && is_floating(t.dtype()), opt, ": load_state_dict: key '", key,
             "' must be a 0-dim float scalar, got shape ", t.shape(), " ", t.dtype());
  const double s = t.item_double();
  KERN_CHECK(std::isfinite(s) && s >= 0.0 && s <= 0x1p53 && s == std::floor(s), opt,
             ": load_state_dict: key '", key, "' holds ", s,
             ", not a whole step count in [0, 2^53]");
}

}  // namespace

Optimizer::PreparedState Optimizer::prepare_state_dict(const StateDict& sd) const {
  const auto names = state_names();
  const std::set<std::string> name_set(names.begin(), names.end());
  const auto params = parameters();

  std::vector<std::optional<double>> lrs(groups_.size()), wds(groups_.size());
  std::vector<std::map<std::string, Tensor>> state(num_params_);
  std::set<std::string> keys;
  for (const auto& [key, t] : sd) {
    KERN_CHECK(keys.insert(key).second, name_, ": load_state_dict: duplicate key '", key, "'");
    KERN_CHECK(t.defined(), name_, ": load_state_dict: key '", key, "' holds an undefined tensor");
    size_t idx = 0;
    std::string rest;
    if (parse_key(key, "group.", idx, rest)) {
      KERN_CHECK(idx < groups_.size(), name_, ": load_state_dict: key '", key, "' names group ",
                 idx, " but the optimizer has ", groups_.size(), " groups");
      KERN_CHECK(rest == "lr" || rest == "weight_decay", name_, ": load_state_dict: unexpected key '",
                 key, "' (groups hold lr and weight_decay)");
      (rest == "lr" ? lrs : wds)[idx] = group_scalar(name_, key, t);
    } else if (parse_key(key, "state.", idx, rest)) {
      KERN_CHECK(idx < num_params_, name_, ": load_state_dict: key '", key, "' names parameter ",
                 idx, " but the optimizer has ", num_params_, " parameters");
      KERN_CHECK(name_set.count(rest), name_, ": load_state_dict: unexpected key '", key, "' (",
                 name_, " keeps ", fmt::format("{}", fmt::join(names, ", ")), ")");
      const Tensor& p = params[idx];
      if (rest == "step") {
        check_step(name_, key, t);
      } else {
        KERN_CHECK(t.shape() == p.shape(), name_, ": load_state_dict: key '", key, "' has shape ",
                   t.shape(), " but parameter ", idx, " has shape ", p.shape());
        KERN_CHECK(is_floating(t.dtype()), name_, ": load_state_dict: key '", key, "' is ",
                   t.dtype(), ", expected ", p.dtype());
      }
      state[idx][rest] = t;
    } else {
      throw Error(fmt::format("{}: load_state_dict: unexpected key '{}'", name_, key));
    }
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    KERN_CHECK(lrs[g].has_value(), name_, ": load_state_dict: missing key 'group.", g, ".lr'");
    KERN_CHECK(wds[g].has_value(), name_, ": load_state_dict: missing key 'group.", g,
               ".weight_decay'");
  }
  for (size_t i = 0; i < num_params_; ++i) {
    if (state[i].empty()) continue;
    for (const auto& n : names)
      KERN_CHECK(state[i].count(n), name_, ": load_state_dict: missing key 'state.", i, ".", n,
                 "' (parameter ", i, " has other state keys)");
  }

  // Everything validated: copies (converted to the parameter's dtype, contiguous, detached).
  NoGradGuard ng;
  PreparedState out;
  for (size_t g = 0; g < groups_.size(); ++g) {
    out.lrs.push_back(*lrs[g]);
    out.weight_decays.push_back(*wds[g]);
  }
  out.state.resize(num_params_);
  for (size_t i = 0; i < num_params_; ++i) {
    for (auto& [n, t] : state[i]) {
      const DType dt = n == "step" ? DType::Float64 : params[i].dtype();
      Tensor c = empty(t.shape(), dt);
      c.copy_(t);
      out.state[i][n] = c;
    }
  }
  return out;
}

void Optimizer::commit_state_dict(PreparedState&& prepared) noexcept {
  for (size_t g = 0; g < groups_.size(); ++g) {
    groups_[g].lr = prepared.lrs[g];
    groups_[g].weight_decay = prepared.weight_decays[g];
  }
  for (size_t i = 0; i < num_params_; ++i) state_[i] = std::move(prepared.state[i]);
}

void Optimizer::load_state_dict(const StateDict& sd) { commit_state_dict(prepare_state_dict(sd)); }

}  // namespace kern::optim
