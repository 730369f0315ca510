// Hessian outliers and where they live (Sagun et al. 2017; Papyan 2019, 2020).
//
// Claim (Papyan): the outliers of the Hessian H of a classifier trained to zero error come from
// the Gauss-Newton term G, and within G from its class-means part G_means (the C^2 weighted
// class / cross-class means of the per-sample, per-class gradients; rank <= C(C-1)); the
// within-class remainder G_within carries the bulk. Sagun et al. count C outliers (Papyan
// finds C, or C(C-1) in the hierarchy); a first try with kern on a ReLU MLP saw no gap after
// C - 1 or C in the top-20 Lanczos eigenvalues.
//
// Setup: a balanced subset of Fashion-MNIST training images (--per-class per class, inputs
// standardized), a ReLU MLP 784-64-64-10 and a small CNN (conv5x5 1->8, pool, conv5x5 8->16,
// pool, fc 256->32, fc 32->10), each trained with SGD + momentum (minibatch 100) until the
// training error is zero and the mean loss is below --target-loss. Then, on the same images,
// in float32:
//   H         tools::Hessian of the mean cross-entropy
//   G         the GGN (GgnDecomposition::ggn(); equals tools::GaussNewton)
//   G_means   its class-means part, G_within the remainder (tools/hessian_decomposition.hpp)
// top-k Lanczos eigenvalues and SLQ densities of H and G, top-20 of G_means (a cross-check) and
// G_within, the exact spectrum of G_means (the C^2 x C^2 Gram matrix of its factor; every other
// eigenvalue is 0), and the separated count of each spectrum: the eigenvalues above the largest
// gap ratio lambda_j / lambda_{j+1} (tools::separated_eigenvalues), compared with C - 1, C and
// C(C-1).
//
// Verdict printed per model: the counts of H, G and G_means, and whether the top outliers of H
// are those of G_means (lambda_j(G_means) / lambda_j(G) and lambda_j(G) / lambda_j(H) for
// j <= C), and whether the bulk of G lies below them (lambda_1(G_within) vs the count-th
// eigenvalue of H).
//
//   hessian_outliers [--per-class 100] [--k 100] [--iters 160] [--center global|pixel]
//                    [--models mlp,cnn] [--out run/hessian_outliers]
//   -> <out>/hessian_outliers.json, <out>/hessian_outliers.png (tools/plot_hessian_outliers.py)
#include <CLI/CLI.hpp>
#include <kern/kern.hpp>
#include <kern/optim/optim.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/hessian_decomposition.hpp>
#include <kern/tools/coord_check.hpp>  // default_plot_script

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <tuple>

namespace nn = kern::nn;
namespace optim = kern::optim;
namespace tools = kern::tools;
namespace fs = std::filesystem;
using kern::Tensor;

namespace {

struct Config {
  int64_t per_class = 100;
  int64_t k = 100;
  int64_t iters = 160;
  int64_t density_runs = 2, density_steps = 40;
  int64_t max_epochs = 300;
  double target_loss = 0.01;
  double lr = 0.05;
  uint64_t seed = 0;
  int threads = 2;
  std::string models = "mlp,cnn";
  std::string center = "global";
  std::string data_dir, out = "run/hessian_outliers";
};

constexpr int64_t kClasses = 10;

// ReLU MLP 784-64-64-10: [N, 1, 28, 28] -> [N, 10]. P = 55,050.
std::shared_ptr<nn::Sequential> make_mlp() {
  auto l0 = std::make_shared<nn::Linear>(784, 64);
  auto l2 = std::make_shared<nn::Linear>(64, 64);
  auto l4 = std::make_shared<nn::Linear>(64, 10);
  return std::make_shared<nn::Sequential>(std::make_shared<nn::Flatten>(), l0, std::make_shared<nn::ReLU>(), l2,
                                          std::make_shared<nn::ReLU>(), l4);
}

// Small CNN: [N,1,28,28] conv5 -> [N,8,24,24] pool -> [N,8,12,12] conv5 -> [N,16,8,8] pool
// -> [N,16,4,4] -> fc 256->32 -> fc 32->10. P = 208 + 3,216 + 8,224 + 330 = 11,978.
std::shared_ptr<nn::Sequential> make_cnn() {
  auto c0 = std::make_shared<nn::Conv2d>(nn::Conv2dOptions(1, 8, 5));
  auto c1 = std::make_shared<nn::Conv2d>(nn::Conv2dOptions(8, 16, 5));
  auto f0 = std::make_shared<nn::Linear>(256, 32);
  auto f1 = std::make_shared<nn::Linear>(32, 10);
  return std::make_shared<nn::Sequential>(c0, std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2), c1,
                                          std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2),
                                          std::make_shared<nn::Flatten>(), f0, std::make_shared<nn::ReLU>(), f1);
}

// The first `per_class` images of every class among the training set, standardized.
kern::data::Batch balanced_subset(const Config& cfg) {
  auto train = kern::data::FashionMNIST::train(cfg.data_dir);
  auto all = train.batch(0, std::min<int64_t>(train.size(), 20 * cfg.per_class * kClasses));
  auto labels = all.y.to_vector<int64_t>();
  std::vector<int64_t> take, count(kClasses, 0);
  for (int64_t i = 0; i < static_cast<int64_t>(labels.size()); ++i)
    if (count[labels[i]] < cfg.per_class) ++count[labels[i]], take.push_back(i);
  KERN_CHECK(static_cast<int64_t>(take.size()) == cfg.per_class * kClasses, "--per-class ", cfg.per_class,
             ": found only ", take.size(), " images");
  std::sort(take.begin(), take.end(), [&](int64_t a, int64_t b) { return labels[a] < labels[b] || (labels[a] == labels[b] && a < b); });
  Tensor idx = kern::from_vector(take, {static_cast<int64_t>(take.size())});
  kern::NoGradGuard ng;
  Tensor x = kern::index_select(all.x, 0, idx).contiguous();
  // "global": one mean and std over all pixels (the usual Fashion-MNIST normalization);
  // "pixel": every pixel centered over the images (a zero-mean input removes the mean-gradient
  // direction of the first layer, one known source of a single dominant outlier).
  x = cfg.center == "pixel" ? x - kern::mean(x, {0}, true) : x - kern::mean(x);
  x = x / kern::std(x, {}, 0);
  return {x.reshape({-1, 1, 28, 28}).contiguous(), kern::index_select(all.y, 0, idx).contiguous()};
}

struct Fit {
  int64_t epochs = 0;
  double loss = NAN, accuracy = 0.0, seconds = 0.0;
};

// Full-data loss and accuracy.
std::pair<double, double> evaluate(nn::Module& model, const kern::data::Batch& d) {
  kern::NoGradGuard ng;
  Tensor out = model(d.x);
  const double loss = kern::cross_entropy(out, d.y).item();
  const double acc = kern::sum(kern::eq(kern::argmax(out, 1), d.y)).item() / static_cast<double>(d.y.size(0));
  return {loss, acc};
}

// SGD + momentum 0.9, minibatch 100, until zero training error and loss < target_loss.
Fit train(nn::Module& model, const kern::data::Batch& d, const Config& cfg) {
  const auto t0 = std::chrono::steady_clock::now();
  optim::SGD opt(model.parameters(), {.lr = cfg.lr, .momentum = 0.9});
  kern::data::TensorDataset ds(d.x, d.y);
  kern::data::DataLoader loader(ds, {.batch_size = 100, .shuffle = true, .seed = cfg.seed});
  Fit f;
  for (int64_t epoch = 0; epoch < cfg.max_epochs; ++epoch) {
    loader.set_epoch(epoch);
    for (auto& [x, y] : loader) {
      Tensor loss = kern::cross_entropy(model(x), y);
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
    f.epochs = epoch + 1;
    std::tie(f.loss, f.accuracy) = evaluate(model, d);
    if (f.accuracy == 1.0 && f.loss < cfg.target_loss) break;
  }
  f.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return f;
}

std::string json_number(double v) { return std::isfinite(v) ? fmt::format("{:.10g}", v) : "null"; }
std::string json_array(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + json_number(v[i]);
  return s + "]";
}

struct Measured {
  std::string name;
  tools::Spectrum spec;
  tools::Separation sep;
};

std::string json_spectrum(const Measured& m) {
  // The density on at most 300 grid points (the plot needs no more).
  std::vector<double> grid, dens;
  const auto& d = m.spec.density;
  const size_t step = std::max<size_t>(1, d.grid.size() / 300);
  for (size_t i = 0; i < d.grid.size(); i += step) grid.push_back(d.grid[i]), dens.push_back(d.density[i]);
  return fmt::format(
      "{{\"top\":{},\"residuals\":{},\"converged\":{},\"products\":{},\"seconds\":{},\"separated\":{},"
      "\"gap_ratio\":{},\"numerical_rank\":{},\"ratio_at_C_minus_1\":{},\"ratio_at_C\":{},\"ratio_at_C_C_minus_1\":{},"
      "\"density_grid\":{},\"density\":{},\"density_mean\":{},\"density_sigma\":{}}}",
      json_array(m.spec.top), json_array(m.spec.residuals), m.spec.converged ? "true" : "false", m.spec.products,
      json_number(m.spec.seconds), m.sep.count, json_number(m.sep.gap_ratio), m.sep.numerical_rank,
      json_number(m.sep.ratio_at(kClasses - 1)), json_number(m.sep.ratio_at(kClasses)),
      json_number(m.sep.ratio_at(kClasses * (kClasses - 1))), json_array(grid), json_array(dens),
      json_number(d.mean), json_number(d.sigma));
}

// One model: train, measure, print, return its JSON object.
std::string run_model(const std::string& which, const kern::data::Batch& data, const Config& cfg) {
  kern::manual_seed(cfg.seed);
  auto model = which == "mlp" ? make_mlp() : make_cnn();
  const int64_t P = tools::numel(model->parameters());
  const Fit fit = train(*model, data, cfg);
  fmt::print("\n[{}] P = {}, N = {}: trained {} epochs in {:.0f} s: train accuracy {:.4f}, mean loss {:.4g}\n", which,
             P, data.y.size(0), fit.epochs, fit.seconds, fit.accuracy, fit.loss);
  std::fflush(stdout);

  const tools::SpectrumOptions so{.k = cfg.k, .max_iters = cfg.iters, .tol = 1e-3, .density_runs = cfg.density_runs,
                                  .density_steps = cfg.density_steps, .seed = cfg.seed};
  const tools::SeparationOptions sepo{.rank_rtol = 1e-5, .tail_guard = std::max<int64_t>(5, cfg.k / 10)};
  std::vector<Measured> ms;
  auto measure = [&](const std::string& name, tools::SymmetricOperator& op, tools::SpectrumOptions o) {
    Measured m{name, tools::spectrum(op, o), {}};
    m.sep = tools::separated_eigenvalues(m.spec.top, sepo);
    fmt::print("  {:<9} top-{} in {:.0f} s ({} products{}): lambda_1..10 = [{:.4g}]\n", name, m.spec.top.size(),
               m.spec.seconds, m.spec.products, m.spec.converged ? "" : ", not all converged",
               fmt::join(std::vector<double>(m.spec.top.begin(), m.spec.top.begin() + std::min<size_t>(10, m.spec.top.size())), ", "));
    fmt::print("  {:<9} separated: {} (gap ratio {:.3g}); ratios at C-1 = {:.3g}, C = {:.3g}, C(C-1) = {:.3g}; "
               "numerical rank {}\n",
               "", m.sep.count, m.sep.gap_ratio, m.sep.ratio_at(kClasses - 1), m.sep.ratio_at(kClasses),
               m.sep.ratio_at(kClasses * (kClasses - 1)), m.sep.numerical_rank);
    std::fflush(stdout);
    ms.push_back(std::move(m));
  };

  tools::Hessian H(*model, data.x, data.y, tools::mean_cross_entropy);
  tools::GgnDecomposition dec(*model, data.x, data.y);
  measure("H", H, so);
  measure("G", dec.ggn(), so);
  // G_means and G_within: top-20 only (no density). G_means' full spectrum comes exactly from
  // its Gram matrix below; its Lanczos values are a cross-check of the matrix-free operator.
  tools::SpectrumOptions small = so;
  small.k = std::min<int64_t>(20, cfg.k);
  small.max_iters = std::min<int64_t>(cfg.iters, 60);
  small.density_runs = 0;
  measure("G_means", dec.class_means(), small);
  measure("G_within", dec.within_class(), small);

  // The exact spectrum of G_means from its C^2 x C^2 Gram matrix (no Lanczos).
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<double> exact = dec.class_means_eigenvalues();
  const double tr_means = dec.class_means_trace();
  const double gram_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto exact_sep = tools::separated_eigenvalues(exact, {.rank_rtol = 1e-5, .tail_guard = 0});
  const double tr_g = ms[1].spec.density.mean * static_cast<double>(P);  // SLQ estimate of tr(G)
  double lanczos_vs_exact = 0.0;
  for (size_t j = 0; j < std::min<size_t>(10, ms[2].spec.top.size()); ++j)
    lanczos_vs_exact = std::max(lanczos_vs_exact, std::abs(ms[2].spec.top[j] - exact[j]) / exact[0]);
  fmt::print("  G_means exact (Gram of the {} class-mean vectors, {:.0f} s): lambda_1..10 = [{:.4g}]\n",
             exact.size(), gram_s, fmt::join(std::vector<double>(exact.begin(), exact.begin() + 10), ", "));
  fmt::print("            numerical rank {} (bound C(C-1) = {}), separated {} (gap ratio {:.3g}); "
             "tr(G_means) = {:.4g} = {:.1f}% of tr(G) ~ {:.4g} (SLQ); Lanczos top-10 vs exact: max diff "
             "{:.1e} lambda_1\n",
             exact_sep.numerical_rank, kClasses * (kClasses - 1), exact_sep.count, exact_sep.gap_ratio, tr_means,
             100.0 * tr_means / tr_g, tr_g, lanczos_vs_exact);

  // Verdict numbers: do the top outliers of H coincide with G's and G_means'? Is the
  // within-class part below them?
  const auto& h = ms[0].spec.top;
  const auto& g = ms[1].spec.top;
  const int64_t nh = ms[0].sep.count;
  // lambda_j(G_means) / lambda_j(G) and lambda_j(G) / lambda_j(H), j = 1..C: how much of each
  // top eigenvalue the smaller operator keeps.
  std::vector<double> means_over_g, g_over_h;
  for (int64_t j = 0; j < std::min<int64_t>(kClasses, static_cast<int64_t>(std::min(h.size(), g.size()))); ++j) {
    means_over_g.push_back(exact[j] / g[j]);
    g_over_h.push_back(g[j] / h[j]);
  }
  const double within_top = ms[3].spec.top[0];
  // A second criterion, Papyan's picture taken literally: the eigenvalues of H above the edge
  // of the within-class part, lambda_1(G_within).
  const int64_t above_within = std::count_if(h.begin(), h.end(), [&](double e) { return e > within_top; });
  const bool count_is_c = nh == kClasses || nh == kClasses - 1 || nh == kClasses * (kClasses - 1);
  fmt::print("  lambda_j(G) / lambda_j(H), j = 1..C: [{:.3f}]\n", fmt::join(g_over_h, ", "));
  fmt::print("  lambda_j(G_means) / lambda_j(G), j = 1..C: [{:.3f}]\n", fmt::join(means_over_g, ", "));
  fmt::print("  verdict [{}]: H has {} separated eigenvalue(s) by the largest gap ratio, {} above lambda_1(G_within) "
             "(C-1 = {}, C = {}, C(C-1) = {}: the gap count {}); lambda_1(G_within) = {:.4g} vs lambda_{}(H) = {:.4g} "
             "({})\n",
             which, nh, above_within, kClasses - 1, kClasses, kClasses * (kClasses - 1),
             count_is_c ? "matches one" : "matches none of them", within_top, nh, nh >= 1 ? h[nh - 1] : NAN,
             nh >= 1 && within_top < h[nh - 1] ? "the within-class part stays below the outliers"
                                               : "the within-class part reaches the outliers");
  std::fflush(stdout);

  std::string s = fmt::format(
      "{{\"model\":\"{}\",\"params\":{},\"samples\":{},\"classes\":{},\"epochs\":{},\"train_seconds\":{},"
      "\"train_accuracy\":{},\"train_loss\":{},\"class_means_exact\":{},\"class_means_exact_separated\":{},"
      "\"class_means_exact_rank\":{},\"class_means_trace\":{},\"ggn_trace_slq\":{},\"h_above_within_edge\":{},\"means_over_g\":{},\"g_over_h\":{},\"weights\":{},\"spectra\":{{",
      which, P, data.y.size(0), kClasses, fit.epochs, json_number(fit.seconds), json_number(fit.accuracy),
      json_number(fit.loss), json_array(exact), exact_sep.count, exact_sep.numerical_rank, json_number(tr_means),
      json_number(tr_g), above_within, json_array(means_over_g), json_array(g_over_h), json_array(dec.weights()));
  for (size_t i = 0; i < ms.size(); ++i) s += fmt::format("{}\"{}\":{}", i ? "," : "", ms[i].name, json_spectrum(ms[i]));
  return s + "}}";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Hessian outliers: spectra of H, the GGN and its class-means part (Papyan's decomposition)"};
  Config cfg;
  app.add_option("--per-class", cfg.per_class, "training images per class")->check(CLI::Range(2, 6000));
  app.add_option("--k", cfg.k, "top-k eigenvalues per spectrum")->check(CLI::Range(2, 2000));
  app.add_option("--iters", cfg.iters, "Lanczos steps at most")->check(CLI::Range(2, 5000));
  app.add_option("--density-runs", cfg.density_runs, "SLQ runs (0: none)")->check(CLI::Range(0, 100));
  app.add_option("--density-steps", cfg.density_steps, "SLQ Lanczos steps per run")->check(CLI::Range(2, 1000));
  app.add_option("--max-epochs", cfg.max_epochs, "training epochs at most")->check(CLI::Range(1, 100000));
  app.add_option("--target-loss", cfg.target_loss, "train until zero error and mean loss below this")
      ->check(CLI::PositiveNumber);
  app.add_option("--lr", cfg.lr, "SGD learning rate (momentum 0.9, batch 100)")->check(CLI::PositiveNumber);
  app.add_option("--models", cfg.models, "comma-separated: mlp,cnn");
  app.add_option("--center", cfg.center, "input centering: global (one mean) or pixel (per-pixel means)")
      ->check(CLI::IsMember({"global", "pixel"}));
  app.add_option("--data", cfg.data_dir, "Fashion-MNIST directory (default: Debian's)");
  app.add_option("--out", cfg.out, "output directory");
  app.add_option("--seed", cfg.seed, "seed");
  app.add_option("--threads", cfg.threads, "threads")->check(CLI::Range(1, 256));
  CLI11_PARSE(app, argc, argv);

  try {
    KERN_CHECK(cfg.iters >= cfg.k, "--iters (", cfg.iters, ") must be >= --k (", cfg.k, ")");
    kern::set_num_threads(cfg.threads);
    std::vector<std::string> models;
    for (size_t at = 0; at <= cfg.models.size();) {
      const size_t end = std::min(cfg.models.find(',', at), cfg.models.size());
      const std::string m = cfg.models.substr(at, end - at);
      KERN_CHECK(m == "mlp" || m == "cnn", "--models: unknown model '", m, "' (expected mlp, cnn)");
      models.push_back(m);
      at = end + 1;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const kern::data::Batch data = balanced_subset(cfg);
    fmt::print("hessian_outliers: {} Fashion-MNIST training images ({} per class), top-{} Lanczos ({} steps at most), "
               "SLQ {} x {} steps, float32, inputs centered: {}\n",
               data.y.size(0), cfg.per_class, cfg.k, cfg.iters, cfg.density_runs, cfg.density_steps, cfg.center);
    std::string json = fmt::format("{{\"per_class\":{},\"k\":{},\"iters\":{},\"center\":\"{}\",\"models\":[", cfg.per_class,
                                   cfg.k, cfg.iters, cfg.center);
    for (size_t i = 0; i < models.size(); ++i) json += (i ? "," : "") + run_model(models[i], data, cfg);
    json += "]}\n";
    fs::create_directories(cfg.out);
    const std::string jpath = (fs::path(cfg.out) / "hessian_outliers.json").string();
    std::ofstream(jpath) << json;
    fmt::print("\nwrote {} ({:.0f} s in all)\n", jpath,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

    const std::string script =
        (fs::path(tools::default_plot_script()).parent_path() / "plot_hessian_outliers.py").string();
    const std::string png = (fs::path(cfg.out) / "hessian_outliers.png").string();
    const std::string cmd = "/usr/bin/python3 '" + script + "' '" + jpath + "' -o '" + png + "'";
    if (!fs::exists(script) || std::system(cmd.c_str()) != 0) fmt::print("plotting failed: {}\n", cmd);
    else fmt::print("wrote {}\n", png);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "hessian_outliers: {}\n", e.what());
    return 1;
  }
}
