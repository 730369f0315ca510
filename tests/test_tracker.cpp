// tools/tracker: JSON lines from a short training loop, and tools/plot_dynamics.py on them.
#include <kern/nn/nn.hpp>
#include <kern/ops.hpp>
#include <kern/optim/optim.hpp>
#include <kern/tools/tracker.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "gradcheck.hpp"
#include "requirements.hpp"

using namespace kern;
namespace tools = kern::tools;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::path(KERN_BINARY_DIR) / "test_tmp" / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<nlohmann::json> read_lines(const fs::path& p) {
  std::ifstream in(p);
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

// A small float64 classification problem and model.
struct Setup {
  Generator gen{21};
  std::shared_ptr<nn::Sequential> model;
  data::Batch probe;
  Setup() {
    manual_seed(21);
    model = std::make_shared<nn::Sequential>(nn::Linear(5, 12), nn::Tanh(), nn::Linear(12, 3));
    model->to(DType::Float64);
    probe.x = randn({32, 5}, DType::Float64, &gen);
    probe.y = argmax(matmul(probe.x, randn({5, 3}, DType::Float64, &gen)), 1);  // learnable labels
  }
};

// Plain GD with the tracker between backward and the update; returns the losses.
std::vector<double> train(Setup& s, tools::Tracker& tracker, int steps, double lr) {
  std::vector<double> losses;
  for (int i = 0; i < steps; ++i) {
    Tensor loss = tools::mean_cross_entropy((*s.model)(s.probe.x), s.probe.y);
    s.model->zero_grad();
    loss.backward();
    losses.push_back(loss.item());
    tracker.step(loss);
    NoGradGuard ng;
    for (auto& p : s.model->parameters()) p.copy_(p - p.grad() * lr);
  }
  return losses;
}

}  // namespace

TEST_CASE("Tracker writes one JSON line per due step with the expected keys", "[tracker]") {
  Setup s;
  const fs::path dir = fresh_dir("tracker_keys");
  const fs::path file = dir / "sub" / "dynamics.jsonl";
  const double lr = 0.5;
  std::vector<double> losses;
  double final_sharpness = 0.0;
  {
    tools::Tracker tracker(file.string(), {.every = 5, .lr = lr, .label = "lr=0.5"});
    tracker.track(tools::probe_metrics(*s.model, s.probe, tools::mean_cross_entropy));
    tracker.track(tools::norm_metrics(*s.model, /*per_parameter=*/true));
    tracker.track(tools::sharpness(*s.model, s.probe, tools::mean_cross_entropy, {.iters = 60, .k = 2, .tol = 1e-8}));
    tracker.track(tools::hessian_trace(*s.model, s.probe, tools::mean_cross_entropy, {.samples = 10}));
    int calls = 0;
    tracker.track("custom_counter", [&] { return static_cast<double>(++calls); }, 10);
    tracker.track("spectrum", [](const tools::StepInfo& info) {
      return tools::Values{{"fake_ntk_spectrum", std::vector<double>{3.0, 2.0, 1.0 / (1.0 + info.step)}},
                           {"fake_ntk_rel_change", 0.01 * info.step}};
    });
    losses = train(s, tracker, 21, lr);
    CHECK(tracker.steps() == 21);
    CHECK(tracker.records() == 5);  // steps 0, 5, 10, 15, 20
    CHECK(calls == 3);              // steps 0, 10, 20
    CHECK(tracker.overhead_seconds() > 0.0);
    // A forced final record evaluates every metric, at the current step.
    tracker.record();
    CHECK(calls == 4);
    CHECK(tracker.last_line().rfind("{\"step\":21,", 0) == 0);
    // The sharpness it recorded is the top Hessian eigenvalue at the final parameters.
    tools::Hessian H(*s.model, s.probe.x, s.probe.y, tools::mean_cross_entropy);
    final_sharpness = tools::lanczos(H, {.k = 1, .max_iters = 100, .tol = 1e-10}).eigenvalues[0];
  }
  auto recs = read_lines(file);
  REQUIRE(recs.size() == 6);
  for (size_t i = 0; i < 5; ++i) {
    const auto& r = recs[i];
    INFO(r.dump());
    CHECK(r["step"] == 5 * static_cast<int>(i));
    CHECK(r["run"] == "lr=0.5");
    CHECK(std::abs(r["loss"].get<double>() - losses[5 * i]) < 1e-12);
    CHECK(r["lr"] == lr);
    CHECK(r["two_over_lr"] == 2.0 / lr);
    // Tracked between backward and the update on the training batch itself: the probe
    // loss is the loss passed in.
    CHECK(std::abs(r["probe_loss"].get<double>() - losses[5 * i]) < 1e-12);
    CHECK(r["probe_accuracy"].get<double>() >= 0.0);
    CHECK(r["probe_accuracy"].get<double>() <= 1.0);
    for (const char* k : {"grad_norm", "weight_norm", "grad_norm.0.weight", "weight_norm.2.bias", "sharpness",
                          "sharpness_x_lr_over_2", "sharpness_hvps", "sharpness_residual", "hessian_trace",
                          "hessian_trace_se", "time.probe", "time.norms", "time.sharpness", "time.hessian_trace",
                          "time.spectrum", "overhead_s", "overhead_total_s", "wall_s", "fake_ntk_rel_change"})
      CHECK(r.contains(k));
    CHECK(r.contains("custom_counter") == (i % 2 == 0));
    CHECK(r["hessian_top_k"].size() == 2);
    CHECK(r["hessian_top_k"][0] == r["sharpness"]);
    CHECK(r["sharpness"].get<double>() >= r["hessian_top_k"][1].get<double>());
    CHECK(r["fake_ntk_spectrum"].size() == 3);
    CHECK(std::abs(r["sharpness_x_lr_over_2"].get<double>() - r["sharpness"].get<double>() * lr / 2) < 1e-12);
    CHECK(r["overhead_total_s"].get<double>() >= r["overhead_s"].get<double>());
  }
  CHECK(recs[5]["step"] == 21);
  CHECK(!recs[5].contains("loss"));
  CHECK(std::abs(recs[5]["sharpness"].get<double>() - final_sharpness) < 1e-8 * std::abs(final_sharpness));
  // Training happened, and the loss went down.
  CHECK(losses.back() < losses.front());
  // Every line is complete and the key order is stable (step first, wall_s last).
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    CHECK(line.rfind("{\"step\":", 0) == 0);
    CHECK(line.find("\"wall_s\":") != std::string::npos);
    CHECK(line.back() == '}');
  }
}

TEST_CASE("Tracker records NTK metrics through tools/ntk", "[tracker][ntk]") {
  Setup s;
  const fs::path dir = fresh_dir("tracker_ntk");
  Tensor K0 = tools::ntk_traced(*s.model, s.probe.x);
  std::string last;
  {
    tools::Tracker tracker((dir / "ntk.jsonl").string(), {.every = 5, .lr = 0.5});
    tracker.track(tools::ntk_metrics(*s.model, s.probe.x, s.probe.y, {.eigenvalues = 8}));
    train(s, tracker, 11, 0.5);
    tracker.record();
  }
  Tensor Kt = tools::ntk_traced(*s.model, s.probe.x);
  auto recs = read_lines(dir / "ntk.jsonl");
  REQUIRE(recs.size() == 4);  // steps 0, 5, 10 and the final record
  CHECK(recs[0]["ntk_rel_change"].get<double>() == 0.0);
  for (const char* k : {"ntk_trace", "ntk_eig_max", "ntk_eig_min", "ntk_condition_number", "ntk_effective_rank",
                        "ntk_distance", "ntk_target_alignment", "ntk_label_gradient_alignment", "time.ntk"})
    CHECK(recs[3].contains(k));
  CHECK(recs[3]["ntk_eigenvalues"].size() == 8);
  CHECK(recs[3]["ntk_eigenvalues"][0] == recs[3]["ntk_eig_max"]);
  CHECK(std::abs(recs[3]["ntk_rel_change"].get<double>() - tools::kernel_relative_change(Kt, K0)) < 1e-12);
  CHECK(std::abs(recs[3]["ntk_trace"].get<double>() - tools::kernel_trace(Kt)) < 1e-10);
  CHECK(recs[3]["ntk_rel_change"].get<double>() > 0.0);
}

TEST_CASE("Sharpness with per-parameter lr multipliers is the top eigenvalue of D^1/2 H D^1/2", "[tracker]") {
  Setup s;
  auto params = s.model->parameters();
  // Two groups: the first layer at 3x the lr, the rest at 1x (the second group lists no multipliers).
  std::vector<optim::ParamGroup> groups(2);
  groups[0].params = {params[0], params[1]};
  groups[0].lr_mult = {3.0, 3.0};
  groups[1].params = {params[2], params[3]};
  Tensor d = tools::lr_multipliers(params, groups);
  REQUIRE(d.numel() == tools::numel(params));
  CHECK(d.to_vector<double>().front() == 3.0);
  CHECK(d.to_vector<double>().back() == 1.0);
  CHECK(sum(d).item() == 3.0 * (params[0].numel() + params[1].numel()) + params[2].numel() + params[3].numel());

  const fs::path dir = fresh_dir("tracker_scaled");
  tools::Tracker tracker((dir / "d.jsonl").string(), {.every = 1, .lr = 0.1});
  tracker.track(tools::sharpness(*s.model, s.probe, tools::mean_cross_entropy,
                                 {.iters = 100, .tol = 1e-10, .lr_scale = d.to(DType::Float64)}));
  tracker.step();
  tools::Hessian H(*s.model, s.probe.x, s.probe.y, tools::mean_cross_entropy);
  tools::ScaledOperator S(H, d);
  const double expected = tools::lanczos(S, {.k = 1, .max_iters = 111, .tol = 1e-12}).eigenvalues[0];
  const double plain = tools::lanczos(H, {.k = 1, .max_iters = 111, .tol = 1e-12}).eigenvalues[0];
  const auto rec = nlohmann::json::parse(tracker.last_line());
  CHECK(std::abs(rec["sharpness"].get<double>() - expected) < 1e-8 * expected);
  CHECK(expected > plain * 1.01);  // the 3x layer really changes it
}

TEST_CASE("Tracker appends to a resumed run and rejects bad options", "[tracker][errors]") {
  const fs::path dir = fresh_dir("tracker_append");
  const std::string file = (dir / "d.jsonl").string();
  {
    tools::Tracker t(file, {.every = 2});
    for (int i = 0; i < 4; ++i) t.step(1.0 / (i + 1));
  }
  {
    tools::Tracker t(file, {.every = 2, .append = true});
    t.track("nan_metric", [] { return std::nan(""); });
    t.step(0.1);
  }
  auto recs = read_lines(file);
  REQUIRE(recs.size() == 3);
  CHECK(recs[1]["loss"] == 1.0 / 3);
  CHECK(!recs[1].contains("lr"));
  CHECK(recs[2]["nan_metric"].is_null());  // NaN is written as null (valid JSON)
  {
    tools::Tracker t(file, {.every = 2});   // truncates
    t.step(2.0);
  }
  CHECK(read_lines(file).size() == 1);
  CHECK_THROWS_WITH(tools::Tracker(file, {.every = 0}), Catch::Contains("every"));
  CHECK_THROWS_WITH(tools::Tracker("/proc/kern_no_such_dir/x.jsonl"), Catch::Contains("/proc/kern_no_such_dir"));
  tools::Tracker t(file);
  t.track("bad", [](const tools::StepInfo&) -> tools::Values { throw Error("boom"); });
  CHECK_THROWS_WITH(t.step(), Catch::Contains("metric 'bad'") && Catch::Contains("boom"));
  CHECK_THROWS_WITH(t.step(ones({2})), Catch::Contains("one element"));
}

TEST_CASE("plot_dynamics.py renders the tracker's JSON lines as PNGs", "[tracker]") {
  if (std::system("/usr/bin/python3 -c 'import matplotlib' > /dev/null 2>&1") != 0) {
    testing::requirement_missing("/usr/bin/python3 cannot import matplotlib", "python3-matplotlib");
    return;
  }
  const fs::path dir = fresh_dir("tracker_plot");
  for (double lr : {0.2, 0.5}) {
    Setup run;
    tools::Tracker tracker((dir / fmt::format("lr{}.jsonl", lr)).string(),
                           {.every = 2, .lr = lr, .label = fmt::format("lr={}", lr)});
    tracker.track(tools::probe_metrics(*run.model, run.probe, tools::mean_cross_entropy));
    tracker.track(tools::sharpness(*run.model, run.probe, tools::mean_cross_entropy, {.iters = 20}));
    tracker.track("ntk", [](const tools::StepInfo& info) {
      return tools::Values{{"ntk_eigenvalues", std::vector<double>{5.0 + info.step, 2.0, 0.5}},
                           {"ntk_rel_change", 0.02 * info.step}};
    });
    train(run, tracker, 9, lr);
  }
  const fs::path out = dir / "png";
  const std::string cmd = fmt::format("/usr/bin/python3 {}/tools/plot_dynamics.py {} {} -o {} > {} 2>&1", KERN_SOURCE_DIR,
                                      (dir / "lr0.2.jsonl").string(), (dir / "lr0.5.jsonl").string(), out.string(),
                                      (dir / "plot.log").string());
  const int rc = std::system(cmd.c_str());
  std::ifstream log(dir / "plot.log");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  INFO(text);
  REQUIRE(rc == 0);
  for (const char* png : {"sharpness.png", "loss.png", "ntk_rel_change.png", "ntk_spectrum.png", "metrics.png"}) {
    INFO(png);
    REQUIRE(fs::exists(out / png));
    std::ifstream f(out / png, std::ios::binary);
    char magic[8] = {};
    f.read(magic, 8);
    CHECK(std::string(magic + 1, 3) == "PNG");
    CHECK(fs::file_size(out / png) > 5000);
  }
  // --figure: one image for the experiment (both runs in one column, shared y per row).
  const fs::path fig = dir / "figure" / "eos.png";
  const std::string fig_cmd =
      fmt::format("/usr/bin/python3 {}/tools/plot_dynamics.py {} {} --figure {} --title T > {} 2>&1", KERN_SOURCE_DIR,
                  (dir / "lr0.2.jsonl").string(), (dir / "lr0.5.jsonl").string(), fig.string(), (dir / "fig.log").string());
  REQUIRE(std::system(fig_cmd.c_str()) == 0);
  REQUIRE(fs::exists(fig));
  CHECK(fs::file_size(fig) > 5000);
  CHECK(!fs::exists(dir / "figure" / "sharpness.png"));  // only the one figure
}

namespace {
std::string read_all(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  std::fseek(f, 0, SEEK_END);  // back to writing
  return text;
}
size_t count(const std::string& text, const std::string& what) {
  size_t c = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++c;
  return c;
}
void sleep_s(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }
}  // namespace

TEST_CASE("Tracker records its cost per record and warns once when tracking dominates the run", "[tracker]") {
  const fs::path dir = fresh_dir("tracker_cost");
  std::FILE* log = std::tmpfile();
  REQUIRE(log != nullptr);
  {
    // Tracking is almost the whole run: a 30 ms metric, nothing else between records.
    tools::Tracker t((dir / "slow.jsonl").string(),
                     {.every = 1, .log = log, .announce_after_s = 0.01, .log_interval_s = 0.0, .warn_share = 0.5, .warn_after_s = 0.0});
    t.track("slow", [] { sleep_s(0.03); return 1.0; });
    t.track("fast", [] { return 2.0; });
    for (int i = 0; i < 4; ++i) t.step(1.0);
    CHECK(t.warned());
  }
  const std::string text = read_all(log);
  std::fclose(log);
  INFO(text);
  auto recs = read_lines(dir / "slow.jsonl");
  REQUIRE(recs.size() == 4);
  double sum = 0.0;
  int warnings = 0;
  for (auto& r : recs) {
    INFO(r.dump());
    CHECK(r["time.slow"].get<double>() >= 0.03);           // the metric's own sleep
    CHECK(r["time.fast"].get<double>() < r["time.slow"].get<double>());
    CHECK(r["overhead_s"].get<double>() >= r["time.slow"].get<double>() + r["time.fast"].get<double>());
    sum += r["overhead_s"].get<double>();
    // Cumulative: every record's cost, plus the writes (each lands in the next total).
    CHECK(r["overhead_total_s"].get<double>() >= sum - 1e-12);
    CHECK(r["overhead_total_s"].get<double>() <= sum + 0.01);
    CHECK(r["overhead_total_s"].get<double>() <= r["wall_s"].get<double>());
    CHECK(std::abs(r["overhead_share"].get<double>() - r["overhead_total_s"].get<double>() / r["wall_s"].get<double>()) < 1e-12);
    CHECK(r["overhead_share"].get<double>() > 0.5);
    warnings += r.value("overhead_warning", false) ? 1 : 0;
  }
  CHECK(warnings == 1);
  CHECK(recs[0].value("overhead_warning", false));  // warn_after_s = 0: at the first record already
  CHECK(count(text, "warning: tracking took") == 1);
  CHECK(text.find("costliest metric is 'slow'") != std::string::npos);
  // Not a terminal: one line after each slow record (log_interval_s = 0), naming the metrics' costs.
  CHECK(count(text, "recorded in") == 4);
  CHECK(text.find("slow 0.0") != std::string::npos);
  CHECK(text.find("\x1b[K") == std::string::npos);  // no terminal control codes in a log file
}

TEST_CASE("Tracker does not warn when tracking is a small share of the run, or before warn_after_s", "[tracker]") {
  const fs::path dir = fresh_dir("tracker_cost_quiet");
  std::FILE* log = std::tmpfile();
  REQUIRE(log != nullptr);
  {
    // Slow records, but at most one line per log_interval_s = 1e9 s: only the first is logged.
    tools::Tracker t((dir / "interval.jsonl").string(),
                     {.every = 1, .log = log, .announce_after_s = 0.001, .log_interval_s = 1e9, .warn_share = 0.0});
    t.track("metric", [] { sleep_s(0.005); return 1.0; });
    for (int i = 0; i < 3; ++i) t.step(1.0);
  }
  CHECK(count(read_all(log), "recorded in") == 1);
  {
    // 5 ms of tracking per 60 ms of "training": about 8% < 50%.
    tools::Tracker t((dir / "cheap.jsonl").string(),
                     {.every = 1, .log = log, .announce_after_s = 1.0, .warn_share = 0.5, .warn_after_s = 0.0});
    t.track("metric", [] { sleep_s(0.005); return 1.0; });
    sleep_s(0.06);
    for (int i = 0; i < 4; ++i) {
      t.step(1.0);
      sleep_s(0.06);
    }
    CHECK(!t.warned());
    // Tracking dominates, but only warn_after_s = 1e9 seconds in: no warning either.
    tools::Tracker late((dir / "late.jsonl").string(), {.every = 1, .log = log, .warn_share = 0.1, .warn_after_s = 1e9});
    late.track("metric", [] { sleep_s(0.01); return 1.0; });
    for (int i = 0; i < 3; ++i) late.step(1.0);
    CHECK(!late.warned());
  }
  const std::string text = read_all(log);
  std::fclose(log);
  INFO(text);
  CHECK(text.find("warning") == std::string::npos);
  CHECK(count(text, "recorded in") == 1);  // the interval tracker's first; no other record reached announce_after_s
  for (auto& r : read_lines(dir / "cheap.jsonl")) {
    CHECK(!r.contains("overhead_warning"));
    CHECK(r["overhead_share"].get<double>() < 0.5);
    CHECK(r["overhead_share"].get<double>() > 0.0);
  }
  for (auto& r : read_lines(dir / "late.jsonl")) CHECK(r["overhead_share"].get<double>() > 0.1);
}

TEST_CASE("Sharpness states its BatchNorm mode in the record and warm-starts from the last top vector",
          "[tracker][hvp]") {
  manual_seed(41);
  // [N, 4] -> Linear -> [N, 6, 1, 1] -> BatchNorm2d -> [N, 6] -> Tanh -> Linear -> [N, 3]
  auto model = std::make_shared<nn::Sequential>(
      nn::Linear(4, 6), nn::Functional([](const Tensor& t) { return t.reshape({t.size(0), 6, 1, 1}); }, "To4d"),
      nn::BatchNorm2d(6), nn::Flatten(), nn::Tanh(), nn::Linear(6, 3));
  model->to(DType::Float64);
  Generator gen(42);
  data::Batch probe;
  probe.x = randn({12, 4}, DType::Float64, &gen);
  probe.y = randint(0, 3, {12}, &gen);
  {
    NoGradGuard ng;  // non-trivial running statistics
    (*model)(randn({12, 4}, DType::Float64, &gen) * 2.0 + 1.0);
  }
  auto bn = model->at<nn::BatchNorm2d>(2);
  Tensor rm = bn->running_mean.tensor().clone(), rv = bn->running_var.tensor().clone();
  auto params = model->parameters();
  // The top eigenvalue of the dense Hessian of the loss written out with functional batch_norm.
  auto top_eigenvalue = [&](bool batch_stats) {
    Tensor H = kern::hessian(
        [&](const std::vector<Tensor>& v) {
          auto p = tools::unflatten_vector(v[0], params);
          Tensor h = linear(probe.x, p[0], p[1]).reshape({12, 6, 1, 1});
          h = batch_stats ? batch_norm(h, Tensor(), Tensor(), p[2], p[3], true) : batch_norm(h, rm, rv, p[2], p[3], false);
          return tools::mean_cross_entropy(linear(tanh(h.reshape({12, 6})), p[4], p[5]), probe.y);
        },
        tools::flatten_vectors(params));
    tools::MatrixOperator op(H);
    return tools::lanczos(op, {.k = 1, .max_iters = op.size(), .tol = 1e-12}).eigenvalues[0];
  };
  const fs::path dir = fresh_dir("tracker_sharpness_mode");
  for (tools::Mode mode : {tools::Mode::Eval, tools::Mode::Train}) {
    const bool train = mode == tools::Mode::Train;
    const fs::path path = dir / (train ? "train.jsonl" : "eval.jsonl");
    {
      tools::Tracker tracker(path.string(), {.every = 1});
      tracker.track(tools::sharpness(*model, probe, tools::mean_cross_entropy,
                                     {.iters = 200, .tol = 1e-10, .mode = mode}));
      tracker.step(0.0);
    }
    auto rec = read_lines(path).at(0);
    CHECK(rec["sharpness_mode"].get<std::string>() == (train ? "train" : "eval"));
    const double want = top_eigenvalue(train);
    CHECK(std::abs(rec["sharpness"].get<double>() - want) < 1e-8 * std::abs(want));
  }
  CHECK(std::abs(top_eigenvalue(true) - top_eigenvalue(false)) > 1e-3);  // the modes really differ

  // Warm start: the second record (same parameters) starts from the first one's top vector and
  // needs fewer products than a cold start for the same tolerance.
  std::vector<double> hvps[2], values[2];
  for (bool warm : {false, true}) {
    const fs::path path = dir / (warm ? "warm.jsonl" : "cold.jsonl");
    {
      tools::Tracker tracker(path.string(), {.every = 1});
      tracker.track(tools::sharpness(*model, probe, tools::mean_cross_entropy,
                                     {.iters = 500, .tol = 1e-6, .method = tools::EigenMethod::Power,
                                      .warm_start = warm}));
      tracker.step(0.0);
      tracker.step(0.0);
    }
    for (auto& rec : read_lines(path)) {
      hvps[warm].push_back(rec["sharpness_hvps"].get<double>());
      values[warm].push_back(rec["sharpness"].get<double>());
    }
  }
  INFO("cold hvps " << hvps[0][0] << ", " << hvps[0][1] << "; warm " << hvps[1][0] << ", " << hvps[1][1]);
  CHECK(hvps[1][0] == hvps[0][0]);        // nothing to start from at the first record
  CHECK(hvps[1][1] < hvps[0][1]);         // the second one reuses the first's top vector
  CHECK(std::abs(values[1][1] - values[0][1]) < 1e-6 * std::abs(values[0][1]));
}
