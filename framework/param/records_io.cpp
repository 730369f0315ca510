// Parameterization records as JSON (checkpoint metadata), their comparison, and re-applying
// stored records to a model without re-initializing it.
#include <kern/param/param.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <optional>
#include <utility>

namespace kern::param {

namespace {

using Json = nlohmann::ordered_json;

template <class Enum, size_t N>
std::optional<Enum> parse_enum(const std::string& s, const std::array<Enum, N>& values,
                               std::string_view (*name)(Enum)) {
  for (Enum v : values)
    if (name(v) == s) return v;
  return std::nullopt;
}

constexpr std::array<Role, 7> kRoles = {Role::InputWeight, Role::HiddenWeight, Role::OutputWeight, Role::FiniteWeight,
                                        Role::Bias,        Role::NormGain,     Role::Scalar};
constexpr std::array<Scheme, 4> kSchemes = {Scheme::Standard, Scheme::NTK, Scheme::MuP, Scheme::MuPTable3};
constexpr std::array<InitKind, 5> kInits = {InitKind::Keep, InitKind::Uniform, InitKind::Normal, InitKind::Zeros,
                                            InitKind::Ones};

std::string_view role_str(Role r) { return role_name(r); }
std::string_view scheme_str(Scheme s) { return scheme_name(s); }
std::string_view init_str(InitKind k) { return init_name(k); }

Json record_json(const ParamRecord& r) {
  Json j;
  j["scheme"] = scheme_name(r.scheme);
  j["role"] = role_name(r.role);
  j["fan_in"] = r.fan_in;
  j["fan_out"] = r.fan_out;
  j["base_fan_in"] = r.base_fan_in;
  j["base_fan_out"] = r.base_fan_out;
  j["base_shape"] = std::vector<int64_t>(r.base_shape.begin(), r.base_shape.end());
  j["init"] = init_name(r.init);
  j["init_std"] = r.init_std;
  j["multiplier"] = r.multiplier;
  j["depth_mult"] = r.depth_mult;
  j["lr_mult_sgd"] = r.lr_mult_sgd;
  j["lr_mult_adam"] = r.lr_mult_adam;
  j["wd_mult_sgd"] = r.wd_mult_sgd;
  j["wd_mult_adam"] = r.wd_mult_adam;
  return j;
}

// Reads one record; every error names `where`, the parameter and the field.
ParamRecord record_from(const Json& j, const std::string& where, const std::string& name) {
  auto field = [&](const char* key) -> const Json& {
    KERN_CHECK(j.contains(key), where, ": parameterization record of '", name, "' has no field '", key, "'");
    return j.at(key);
  };
  auto number = [&](const char* key) {
    const Json& v = field(key);
    KERN_CHECK(v.is_number() && std::isfinite(v.get<double>()), where, ": parameterization record of '", name,
               "': field '", key, "' must be a finite number, got ", v.dump());
    return v.get<double>();
  };
  auto integer = [&](const char* key) {
    const Json& v = field(key);
    KERN_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, where, ": parameterization record of '", name,
               "': field '", key, "' must be an integer >= 0, got ", v.dump());
    return v.get<int64_t>();
  };
  auto text = [&](const char* key) {
    const Json& v = field(key);
    KERN_CHECK(v.is_string(), where, ": parameterization record of '", name, "': field '", key,
               "' must be a string, got ", v.dump());
    return v.get<std::string>();
  };
  auto choice = [&](const char* key, auto values, auto to_name) {
    const std::string s = text(key);
    auto v = parse_enum(s, values, to_name);
    KERN_CHECK(v.has_value(), where, ": parameterization record of '", name, "': unknown ", key, " '", s, "'");
    return *v;
  };
  ParamRecord r;
  r.scheme = choice("scheme", kSchemes, scheme_str);
  r.role = choice("role", kRoles, role_str);
  r.fan_in = integer("fan_in");
  r.fan_out = integer("fan_out");
  r.base_fan_in = number("base_fan_in");
  r.base_fan_out = number("base_fan_out");
  const Json& bs = field("base_shape");
  KERN_CHECK(bs.is_array(), where, ": parameterization record of '", name, "': field 'base_shape' must be an array");
  for (const Json& d : bs) {
    KERN_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, where, ": parameterization record of '", name,
               "': base_shape entries must be integers >= 0, got ", d.dump());
    r.base_shape.push_back(d.get<int64_t>());
  }
  r.init = choice("init", kInits, init_str);
  r.init_std = number("init_std");
  r.multiplier = number("multiplier");
  r.depth_mult = number("depth_mult");
  r.lr_mult_sgd = number("lr_mult_sgd");
  r.lr_mult_adam = number("lr_mult_adam");
  r.wd_mult_sgd = number("wd_mult_sgd");
  r.wd_mult_adam = number("wd_mult_adam");
  return r;
}

bool close(double a, double b) { return std::abs(a - b) <= 1e-12 * std::max({1.0, std::abs(a), std::abs(b)}); }

// "field a -> b" for each field that differs.
std::string differences(const ParamRecord& a, const ParamRecord& b) {
  std::string out;
  auto add = [&](const char* field, const std::string& x, const std::string& y) {
    out += fmt::format("{}{} {} in the file, {} in the model", out.empty() ? "" : "; ", field, x, y);
  };
  if (a.scheme != b.scheme) add("scheme", std::string(scheme_name(a.scheme)), std::string(scheme_name(b.scheme)));
  if (a.role != b.role) add("role", std::string(role_name(a.role)), std::string(role_name(b.role)));
  if (a.fan_in != b.fan_in) add("fan_in", fmt::format("{}", a.fan_in), fmt::format("{}", b.fan_in));
  if (a.fan_out != b.fan_out) add("fan_out", fmt::format("{}", a.fan_out), fmt::format("{}", b.fan_out));
  const std::pair<const char*, std::pair<double, double>> numbers[] = {
      {"base_fan_in", {a.base_fan_in, b.base_fan_in}},    {"base_fan_out", {a.base_fan_out, b.base_fan_out}},
      {"multiplier", {a.multiplier, b.multiplier}},       {"depth_mult", {a.depth_mult, b.depth_mult}},
      {"lr_mult_sgd", {a.lr_mult_sgd, b.lr_mult_sgd}},    {"lr_mult_adam", {a.lr_mult_adam, b.lr_mult_adam}},
      {"wd_mult_sgd", {a.wd_mult_sgd, b.wd_mult_sgd}},    {"wd_mult_adam", {a.wd_mult_adam, b.wd_mult_adam}}};
  for (const auto& [field, v] : numbers)
    if (!close(v.first, v.second)) add(field, fmt::format("{:.6g}", v.first), fmt::format("{:.6g}", v.second));
  return out;
}

}  // namespace

std::string to_json(const Records& records) {
  Json j;
  std::string scheme = records.empty() ? "none" : std::string(scheme_name(records.front().second.scheme));
  for (const auto& [n, r] : records)
    if (scheme_name(r.scheme) != scheme) scheme = "mixed";
  j["scheme"] = scheme;
  j["params"] = Json::object();
  for (const auto& [n, r] : records) j["params"][n] = record_json(r);
  return j.dump();
}

Records from_json(const std::string& text, const std::string& where) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  KERN_CHECK(!j.is_discarded() && j.is_object(), where, ": the parameterization metadata (", kMetadataKey,
             ") is not a JSON object");
  KERN_CHECK(j.contains("params") && j["params"].is_object(), where, ": the parameterization metadata (",
             kMetadataKey, ") has no 'params' object");
  Records out;
  for (const auto& [name, rec] : j["params"].items()) {
    KERN_CHECK(rec.is_object(), where, ": parameterization record of '", name, "' is not an object");
    out.emplace_back(name, record_from(rec, where, name));
  }
  return out;
}

std::vector<std::string> compare(const Records& stored, const Records& model) {
  std::map<std::string, const ParamRecord*> in_model;
  for (const auto& [n, r] : model) in_model[n] = &r;
  std::vector<std::string> out;
  std::map<std::string, bool> seen;
  for (const auto& [n, r] : stored) {
    seen[n] = true;
    auto it = in_model.find(n);
    if (it == in_model.end()) {
      out.push_back(fmt::format("{}: the file records {} / {} (multiplier {:.6g}), the model has no record", n,
                                scheme_name(r.scheme), role_name(r.role), r.forward_multiplier()));
      continue;
    }
    const std::string d = differences(r, *it->second);
    if (!d.empty()) out.push_back(n + ": " + d);
  }
  for (const auto& [n, r] : model)
    if (!seen.count(n))
      out.push_back(fmt::format("{}: the model has a {} / {} record (multiplier {:.6g}), the file has none", n,
                                scheme_name(r.scheme), role_name(r.role), r.forward_multiplier()));
  return out;
}

bool is_neutral(const ParamRecord& r) {
  return r.multiplier == 1.0 && r.depth_mult == 1.0 && r.lr_mult_sgd == 1.0 && r.lr_mult_adam == 1.0 &&
         r.wd_mult_sgd == 1.0 && r.wd_mult_adam == 1.0;
}

std::vector<std::string> compare_behaviour(const Records& stored, const Records& model) {
  const auto acting = [](const Records& rs) {
    Records out;
    for (const auto& nr : rs)
      if (!is_neutral(nr.second)) out.push_back(nr);
    return out;
  };
  return compare(acting(stored), acting(model));
}

void set_records(nn::Module& model, const Records& records) {
  // Owning module and leaf name of every parameter, by dotted name.
  std::map<std::string, std::pair<nn::Module*, std::string>> owners;
  for (auto& [path, m] : model.named_modules())
    for (const nn::Slot* s : std::as_const(*m).slots())
      if (!s->is_buffer) owners.emplace(path.empty() ? s->name : path + "." + s->name, std::make_pair(m.get(), s->name));
  for (const auto& [n, r] : records)
    KERN_CHECK(owners.count(n), "param::set_records: ", model.name(), " has no parameter '", n, "'");
  for (auto& [path, m] : model.named_modules()) m->clear_param_records();
  for (const auto& [n, r] : records) owners[n].first->set_param_record(owners[n].second, r);
}

}  // namespace kern::param
