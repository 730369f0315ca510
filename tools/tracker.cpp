// Tracker (JSON lines, one write(2) per line) and the ready-made metrics: probe loss and
// accuracy, gradient and weight norms, sharpness, Hutchinson trace.
#include <kern/ops.hpp>
#include <kern/tools/tracker.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>

namespace kern::tools {

namespace {

using Json = nlohmann::ordered_json;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Json to_json(const Value& v) {
  if (const double* d = std::get_if<double>(&v)) return *d;  // NaN/Inf dump as null
  if (const std::string* s = std::get_if<std::string>(&v)) return *s;
  return std::get<std::vector<double>>(v);
}

double loss_value(const Tensor& loss) {
  if (!loss.defined()) return std::numeric_limits<double>::quiet_NaN();
  KERN_CHECK(loss.numel() == 1, "Tracker::step: the loss must have one element, got shape ", loss.shape());
  return loss.item();
}

}  // namespace

// ---- Tracker -----------------------------------------------------------------------------

Tracker::Tracker(const std::string& path, TrackerOptions options)
    : path_(path), options_(std::move(options)), start_(std::chrono::steady_clock::now()) {
  KERN_CHECK(options_.every >= 1, "Tracker: every must be >= 1, got ", options_.every);
  const auto parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  KERN_CHECK(!ec, "Tracker: cannot create directory ", parent.string(), ": ", ec.message());
  const int flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (options_.append ? 0 : O_TRUNC);
  fd_ = ::open(path.c_str(), flags, 0644);
  KERN_CHECK(fd_ >= 0, "Tracker: cannot open ", path, " for writing: ", std::strerror(errno));
  terminal_ = options_.log != nullptr && ::isatty(::fileno(options_.log)) == 1;
}

Tracker::~Tracker() {
  if (fd_ >= 0) ::close(fd_);
}

Tracker& Tracker::track(Metric metric) {
  KERN_CHECK(static_cast<bool>(metric.fn), "Tracker::track: metric '", metric.name, "' has no callback");
  KERN_CHECK(metric.every >= 0, "Tracker::track: metric '", metric.name, "' has every = ", metric.every);
  metrics_.push_back(std::move(metric));
  return *this;
}

Tracker& Tracker::track(std::string name, MetricFn fn, int64_t every) {
  return track(Metric{std::move(name), std::move(fn), every});
}

bool Tracker::due() const { return step_ % options_.every == 0; }

bool Tracker::step(const Tensor& loss) { return step(loss_value(loss)); }

bool Tracker::step(double loss) {
  const bool now = due();
  if (now) write_record(loss, false);
  ++step_;
  return now;
}

void Tracker::record(const Tensor& loss) { write_record(loss_value(loss), true); }

void Tracker::write_record(double loss, bool all_metrics) {
  const auto t0 = std::chrono::steady_clock::now();
  Json rec;
  rec["step"] = step_;
  if (!options_.label.empty()) rec["run"] = options_.label;
  if (!std::isnan(loss)) rec["loss"] = loss;
  if (options_.lr > 0.0) {
    rec["lr"] = options_.lr;
    rec["two_over_lr"] = 2.0 / options_.lr;
  }
  const StepInfo info{step_, options_.lr, loss};
  Json timing = Json::object();
  // Announce (on a terminal) a record expected to be slow: the first, or one after a slow one.
  announcing_ = terminal_ && (last_record_s_ < 0.0 || last_record_s_ >= options_.announce_after_s);
  for (auto& m : metrics_) {
    if (!all_metrics && m.every > 0 && step_ % m.every != 0) continue;
    announce(m.name, false);
    const auto tm = std::chrono::steady_clock::now();
    Values values;
    try {
      values = m.fn(info);
    } catch (const Error& e) {
      announce("", true);
      throw Error(fmt::format("Tracker: metric '{}' failed at step {}: {}", m.name, step_, e.what()));
    }
    for (auto& [key, v] : values) rec[key] = to_json(v);
    const double tm_s = seconds_since(tm);
    timing["time." + m.name] = tm_s;
    metric_total_s_[m.name] += tm_s;
  }
  announce("", true);
  for (auto& [k, v] : timing.items()) rec[k] = v;
  // The write itself is part of the overhead; its own duration lands in the next record.
  const double overhead = seconds_since(t0);
  overhead_total_ += overhead;
  const double wall = seconds_since(start_);
  rec["overhead_s"] = overhead;
  rec["overhead_total_s"] = overhead_total_;
  rec["wall_s"] = wall;
  rec["overhead_share"] = wall > 0.0 ? overhead_total_ / wall : 0.0;
  if (check_overhead(wall)) rec["overhead_warning"] = true;
  if (options_.log && !terminal_ && overhead >= options_.announce_after_s &&
      (last_log_wall_ < 0.0 || wall - last_log_wall_ >= options_.log_interval_s)) {
    last_log_wall_ = wall;
    std::string parts;
    for (auto& [k, v] : timing.items())  // "time.<name>" -> "<name> 0.12 s"
      parts += fmt::format("{}{} {:.2f} s", parts.empty() ? "" : ", ", k.substr(5), v.get<double>());
    fmt::print(options_.log, "tracker: step {}: recorded in {:.2f} s ({}); tracking is {:.0f}% of the run so far\n", step_,
               overhead, parts, 100.0 * overhead_total_ / std::max(wall, 1e-9));
    std::fflush(options_.log);
  }
  last_record_s_ = overhead;
  std::string line = rec.dump(-1, ' ', false, Json::error_handler_t::replace);
  last_line_ = line;
  line += '\n';
  // One write per line (O_APPEND): the line lands whole or, at worst on a full disk, not at all.
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    KERN_CHECK(n > 0, "Tracker: writing ", path_, " failed: ", std::strerror(errno));
    p += n;
    left -= static_cast<size_t>(n);
  }
  ++records_;
  overhead_total_ += seconds_since(t0) - overhead;
}

// The status line of a slow record on a terminal: "\r" + text, erased with "\r\x1b[K" when done.
void Tracker::announce(const std::string& metric, bool done) {
  if (!announcing_ || !options_.log) return;
  if (done) {
    fmt::print(options_.log, "\r\x1b[K");
    announcing_ = false;
  } else {
    const std::string last = last_record_s_ >= 0.0 ? fmt::format(" (last record took {:.1f} s)", last_record_s_) : "";
    fmt::print(options_.log, "\r\x1b[Ktracker: step {}: computing {}...{}", step_, metric, last);
  }
  std::fflush(options_.log);
}

// True (once) when the tracker's share of the wall time passes warn_share.
bool Tracker::check_overhead(double wall) {
  if (warned_ || options_.warn_share <= 0.0 || wall < options_.warn_after_s || wall <= 0.0) return false;
  const double share = overhead_total_ / wall;
  if (share <= options_.warn_share) return false;
  warned_ = true;
  std::string costliest;  // by total time so far
  double most = -1.0;
  for (auto& [name, t] : metric_total_s_)
    if (t > most) {
      most = t;
      costliest = name;
    }
  if (options_.log) {
    fmt::print(options_.log,
               "tracker: warning: tracking took {:.1f} s of {:.1f} s ({:.0f}% > {:.0f}%) by step {}; the costliest "
               "metric is '{}' ({:.1f} s): record less often (every), give it its own every, or make it cheaper\n",
               overhead_total_, wall, 100.0 * share, 100.0 * options_.warn_share, step_, costliest, most);
    std::fflush(options_.log);
  }
  return true;
}

// ---- metrics -----------------------------------------------------------------------------

Metric probe_metrics(nn::Module& model, data::Batch probe, Criterion criterion, Mode mode) {
  KERN_CHECK(probe.x.defined() && probe.y.defined(), "probe_metrics: the probe batch needs x and y");
  return Metric{"probe", [&model, probe, criterion, mode](const StepInfo&) {
                  ModeGuard guard(model, mode);
                  NoGradGuard ng;
                  Tensor out = model(probe.x);
                  Values v{{"probe_loss", criterion(out, probe.y).item()}};
                  Tensor labels;
                  if (probe.y.dtype() == DType::Int64) labels = probe.y.reshape({-1});
                  else if (probe.y.dim() == 2 && probe.y.size(1) > 1) labels = argmax(probe.y, 1);
                  if (labels.defined() && out.dim() == 2) {
                    const double correct = sum(eq(argmax(out, 1), labels).to(DType::Float64)).item();
                    v.emplace_back("probe_accuracy", correct / static_cast<double>(labels.numel()));
                  }
                  return v;
                }};
}

Metric norm_metrics(nn::Module& model, bool per_parameter) {
  return Metric{"norms", [&model, per_parameter](const StepInfo&) {
                  NoGradGuard ng;
                  double g2 = 0.0, w2 = 0.0;
                  bool any_grad = false;
                  Values per;
                  for (auto& [name, p] : model.named_parameters()) {
                    const double w = dot(p.reshape({-1}), p.reshape({-1})).item();
                    w2 += w;
                    if (per_parameter) per.emplace_back("weight_norm." + name, std::sqrt(w));
                    Tensor g = p.grad();
                    if (g.defined()) {
                      const double gg = dot(g.reshape({-1}), g.reshape({-1})).item();
                      g2 += gg;
                      any_grad = true;
                      if (per_parameter) per.emplace_back("grad_norm." + name, std::sqrt(gg));
                    }
                  }
                  Values v;
                  if (any_grad) v.emplace_back("grad_norm", std::sqrt(g2));
                  v.emplace_back("weight_norm", std::sqrt(w2));
                  for (auto& e : per) v.push_back(std::move(e));
                  return v;
                }};
}

Metric sharpness(nn::Module& model, data::Batch probe, Criterion criterion, SharpnessOptions options) {
  KERN_CHECK(options.iters >= 1 && options.k >= 1, "sharpness: iters (", options.iters, ") and k (", options.k,
             ") must be >= 1");
  auto previous = std::make_shared<Tensor>();  // the last top eigenvector (warm start)
  return Metric{"sharpness", [&model, probe, criterion, options, previous](const StepInfo& info) {
                  std::unique_ptr<SymmetricOperator> base, scaled;
                  HessianOptions ho{.mode = options.mode};
                  if (options.gauss_newton) base = std::make_unique<GaussNewton>(model, probe.x, probe.y, criterion, ho);
                  else base = std::make_unique<Hessian>(model, probe.x, probe.y, criterion, ho);
                  if (options.lr_scale.defined()) scaled = std::make_unique<ScaledOperator>(*base, options.lr_scale);
                  SymmetricOperator* op = scaled ? scaled.get() : base.get();
                  EigenOptions eo{.k = options.k,
                                  .which = Which::LargestAlgebraic,
                                  .max_iters = std::min(options.iters, op->size()),
                                  .tol = options.tol,
                                  .seed = options.seed + static_cast<uint64_t>(info.step),
                                  .v0 = Tensor()};
                  if (options.warm_start && previous->defined() && previous->numel() == op->size() &&
                      previous->dtype() == op->dtype()) {
                    // The previous top eigenvector plus an equal-norm random vector: fast when
                    // the top direction moved little, and an eigenvalue that overtook it still
                    // has a random start's weight in the Krylov space.
                    NoGradGuard ng;
                    Generator gen(options.seed + 7919 * static_cast<uint64_t>(info.step + 1));
                    Tensor r = randn({op->size()}, op->dtype(), &gen);
                    eo.v0 = *previous / norm(*previous).item() + r / norm(r).item();
                  }
                  EigenResult r;
                  if (options.method == EigenMethod::Lanczos) {
                    eo.max_iters = std::max(eo.max_iters, options.k);
                    r = lanczos(*op, eo);
                  } else {
                    eo.max_iters = options.iters;
                    r = power_iteration(*op, eo);
                  }
                  *previous = r.eigenvectors.at(0);
                  Values v{{"sharpness", r.eigenvalues[0]}};
                  if (info.lr > 0.0) v.emplace_back("sharpness_x_lr_over_2", r.eigenvalues[0] * info.lr / 2.0);
                  v.emplace_back("sharpness_hvps", static_cast<double>(r.products));
                  v.emplace_back("sharpness_residual", r.residuals[0]);
                  if (options.k > 1) v.emplace_back("hessian_top_k", r.eigenvalues);
                  v.emplace_back("sharpness_mode", std::string(options.mode == Mode::Train ? "train" : "eval"));
                  return v;
                }};
}

Tensor lr_multipliers(const std::vector<Tensor>& params, const std::vector<optim::ParamGroup>& groups) {
  std::vector<double> d;
  d.reserve(static_cast<size_t>(numel(params)));
  for (auto& p : params) {
    double m = 1.0;
    for (auto& g : groups) {
      KERN_CHECK(g.lr_mult.empty() || g.lr_mult.size() == g.params.size(), "lr_multipliers: a group has ",
                 g.params.size(), " parameters but ", g.lr_mult.size(), " multipliers");
      for (size_t i = 0; i < g.params.size(); ++i)
        if (g.params[i].impl_ptr() == p.impl_ptr()) m = g.lr_mult.empty() ? 1.0 : g.lr_mult[i];
    }
    d.insert(d.end(), static_cast<size_t>(p.numel()), m);
  }
  return from_vector<double>(d, {static_cast<int64_t>(d.size())});
}

Metric hessian_trace(nn::Module& model, data::Batch probe, Criterion criterion, TraceMetricOptions options) {
  return Metric{"hessian_trace", [&model, probe, criterion, options](const StepInfo&) {
                  Hessian h(model, probe.x, probe.y, criterion, {.mode = options.mode});
                  auto t = hutchinson_trace(h, {.samples = options.samples, .seed = options.seed});
                  return Values{{"hessian_trace", t.trace}, {"hessian_trace_se", t.std_error}};
                }};
}

Metric ntk_metrics(nn::Module& model, data::Batch probe, NtkMetricOptions options) {
  KERN_CHECK(probe.x.defined(), "ntk_metrics: the probe batch needs x");
  auto reference = std::make_shared<Tensor>();  // K_0, from the first evaluation
  return Metric{"ntk", [&model, probe, options, reference](const StepInfo&) {
                  ModeGuard guard(model, Mode::Eval);
                  NtkOptions no;
                  no.method(options.method);
                  Tensor K = options.traced ? ntk_traced(model, probe.x, no) : ntk(model, probe.x, no);
                  if (!reference->defined()) *reference = K.clone();
                  Tensor targets = probe.y;
                  if (!options.traced && targets.defined() && targets.dtype() == DType::Int64 && K.size(0) != targets.numel())
                    targets = one_hot(targets.reshape({-1}), K.size(0) / targets.numel(), K.dtype());
                  const bool labels = options.traced && targets.defined() && targets.dtype() == DType::Int64;
                  auto s = summarize_kernel(K, targets.defined() ? targets : Tensor(), *reference);
                  Values v{{"ntk_trace", s.trace},
                           {"ntk_eig_max", s.eig_max},
                           {"ntk_eig_min", s.eig_min},
                           {"ntk_condition_number", s.condition_number},
                           {"ntk_effective_rank", s.effective_rank},
                           {"ntk_rel_change", s.relative_change},
                           {"ntk_distance", s.distance}};
                  if (targets.defined()) v.emplace_back("ntk_target_alignment", s.target_alignment);
                  if (labels) v.emplace_back("ntk_label_gradient_alignment", s.label_gradient_alignment);
                  if (options.eigenvalues > 0) {
                    auto ev = s.eigenvalues.to_vector<double>();  // ascending
                    std::vector<double> top(ev.rbegin(), ev.rbegin() + std::min<int64_t>(options.eigenvalues,
                                                                                       static_cast<int64_t>(ev.size())));
                    v.emplace_back("ntk_eigenvalues", std::move(top));
                  }
                  return v;
                }};
}

}  // namespace kern::tools
