// "Demystifying the NTK for architecture search" (Mok et al., CVPR 2022): can kernel metrics
// computed before (or just after the start of) training rank architectures by the accuracy
// they reach? The paper's claim: label-gradient alignment (LGA, Baratin et al. 2021) predicts
// trained accuracy, and better than the NTK's condition number or trace, which earlier
// training-free NAS methods used.
//
// The experiment: 9 zoo configurations (ConvNeXt with depthwise kernels 3/7/13/31, deeper and
// wider ConvNeXts, InceptionNeXt, a RepLKNet-style net, a p4 group-equivariant CNN), each
// trained with the same protocol on Fashion-MNIST (AdamW, warmup-cosine, images padded to
// 32x32). For each we compute the output-traced empirical NTK [P, P] of P training probes,
// in float64, at init and after --early-steps steps, and record
//   LGA, condition number, trace, effective rank (participation ratio)
// then train to the end and measure the test accuracy. The verdict is the Kendall rank
// correlation (tau-b, with its two-sided p-value) of each metric with the final accuracy.
//
//   ntk_nas [--epochs 2] [--subsample 10000] [--probes 64] [--early-steps 50]
//           [--layer-scale 1e-6] [--only convnext_k7,...] [--out run/ntk_nas]
//   python3 tools/plot_ntk_nas.py run/ntk_nas/ntk_nas.json -o docs/ntk_nas.png
//
// BatchNorm (InceptionNeXt, RepLKNet) makes samples interact in training mode, so the NTK is
// taken in eval mode after the running statistics were calibrated on --calibration training
// batches (at init and again after the early steps): the kernel of the network as it is
// evaluated.
#include <CLI/CLI.hpp>
#include <kern/kern.hpp>
#include <kern/models/models.hpp>
#include <kern/optim/optim.hpp>
#include <kern/tools/ntk.hpp>
#include <kern/tools/stats.hpp>

#include "zoo_data.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <sstream>

namespace nn = kern::nn;
namespace models = kern::models;
namespace tools = kern::tools;
using kern::Tensor;

namespace {

// ---- architectures -------------------------------------------------------------------

struct Arch {
  std::string name;
  std::string description;
  std::function<std::shared_ptr<nn::Module>()> build;
};

std::vector<Arch> architectures(double layer_scale) {
  auto convnext = [layer_scale](std::vector<int64_t> depths, std::vector<int64_t> dims, int64_t k) {
    return [=]() -> std::shared_ptr<nn::Module> {
      return std::make_shared<models::ConvNeXt>(models::ConvNeXtOptions{
          .depths = depths, .dims = dims, .num_classes = 10, .in_chans = 1, .kernel_size = k,
          .ls_init_value = layer_scale});
    };
  };
  const std::vector<int64_t> small{1, 1, 2, 1}, dims{24, 48, 96, 192};
  std::vector<Arch> a;
  for (int64_t k : {3, 7, 13, 31})
    a.push_back({fmt::format("convnext_k{}", k), fmt::format("ConvNeXt depths 1/1/2/1, dims 24..192, dw kernel {}", k),
                 convnext(small, dims, k)});
  a.push_back({"convnext_k7_deep", "ConvNeXt depths 2/2/4/2, dims 24..192, kernel 7",
               convnext({2, 2, 4, 2}, dims, 7)});
  a.push_back({"convnext_k7_wide", "ConvNeXt depths 1/1/2/1, dims 48..384, kernel 7",
               convnext(small, {48, 96, 192, 384}, 7)});
  a.push_back({"inception_next", "InceptionNeXt depths 1/1/2/1, dims 24..192, band 11",
               [layer_scale]() -> std::shared_ptr<nn::Module> {
                 return std::make_shared<models::InceptionNeXt>(models::InceptionNeXtOptions{
                     .depths = {1, 1, 2, 1}, .dims = {24, 48, 96, 192}, .ls_init_value = layer_scale,
                     .num_classes = 10, .in_chans = 1});
               }});
  a.push_back({"replknet_style", "RepLKNet layers 1/1/2/1, channels 24..192, kernels 13/11/9/5 + 3",
               []() -> std::shared_ptr<nn::Module> {
                 return std::make_shared<models::RepLKNet>(models::RepLKNetOptions{
                     .large_kernel_sizes = {13, 11, 9, 5}, .layers = {1, 1, 2, 1},
                     .channels = {24, 48, 96, 192}, .small_kernel = 3, .in_chans = 1, .num_classes = 10});
               }});
  a.push_back({"p4cnn", "p4 group CNN, 7 layers of 10 channels x 4 rotations, max pool after layer 2",
               []() -> std::shared_ptr<nn::Module> {
                 return std::make_shared<models::P4CNN>(
                     models::P4CNNOptions{.in_chans = 1, .num_classes = 10, .channels = 10, .num_layers = 7,
                                          .max_pool_after = 2});
               }});
  return a;
}

// ---- data ----------------------------------------------------------------------------

using zoo_data::evaluate;
using zoo_data::prepare;

// ---- kernel metrics --------------------------------------------------------------------

struct Metrics {
  double lga = NAN, condition = NAN, trace = NAN, effective_rank = NAN, seconds = 0;
};

// Forward passes in training mode without gradients: BatchNorm's running statistics follow
// the data (momentum 0.1, so 30 batches forget the init values to 0.9^30 = 4%).
void calibrate_batch_norm(nn::Module& model, const kern::data::TensorDataset& train,
                          const kern::data::Normalize& norm, int64_t batches) {
  kern::NoGradGuard no_grad;
  model.train();
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t start = (b * 64) % std::max<int64_t>(1, train.size() - 64);
    model(prepare(train.batch(start, 64).x, norm));
  }
}

// The metrics of the traced NTK of `model` on the probes, computed on a float64 twin (same
// parameters and buffers) so that the condition number is not limited by float32 rounding.
Metrics kernel_metrics(const Arch& arch, nn::Module& model, const kern::data::Batch& probes) {
  const auto t0 = std::chrono::steady_clock::now();
  auto twin = arch.build();
  {
    kern::NoGradGuard no_grad;
    twin->to(kern::DType::Float64);
    auto dst = twin->named_parameters(), src = model.named_parameters();
    auto dst_b = twin->named_buffers(), src_b = model.named_buffers();
    KERN_CHECK(dst.size() == src.size() && dst_b.size() == src_b.size(), "ntk_nas: twin of ", arch.name,
               " has a different structure");
    for (size_t i = 0; i < dst.size(); ++i) dst[i].second.copy_(src[i].second.to(kern::DType::Float64));
    for (size_t i = 0; i < dst_b.size(); ++i)
      dst_b[i].second.copy_(src_b[i].second.to(dst_b[i].second.dtype()));
  }
  twin->eval();
  Tensor K = tools::ntk_traced(*twin, probes.x.to(kern::DType::Float64));
  auto s = tools::summarize_kernel(K, probes.y);
  Metrics m;
  m.lga = s.label_gradient_alignment;
  m.condition = s.condition_number;
  m.trace = s.trace;
  m.effective_rank = s.effective_rank;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return m;
}

std::string json_number(double v) { return std::isfinite(v) ? fmt::format("{}", v) : "null"; }

std::string metrics_json(const Metrics& m) {
  return fmt::format(R"({{"lga": {}, "condition_number": {}, "trace": {}, "effective_rank": {}, "seconds": {}}})",
                     json_number(m.lga), json_number(m.condition), json_number(m.trace),
                     json_number(m.effective_rank), json_number(m.seconds));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Do NTK metrics at init rank zoo architectures by trained accuracy? (Mok et al. 2022)"};
  int epochs = 2, threads = 2;
  int64_t subsample = 10000, batch_size = 64, probes_n = 64, early_steps = 50, calibration = 30;
  double lr = 2e-3, weight_decay = 0.05, layer_scale = 1e-6;
  std::string only, data_dir, out_dir = "run/ntk_nas";
  uint64_t seed = 0;
  app.add_option("--epochs", epochs, "training epochs per architecture")->check(CLI::Range(1, 100));
  app.add_option("--subsample", subsample, "training images (the first N of 60000)")->check(CLI::Range(256, 60000));
  app.add_option("--batch-size", batch_size, "batch size")->check(CLI::Range(2, 4096));
  app.add_option("--lr", lr, "peak AdamW learning rate")->check(CLI::PositiveNumber);
  app.add_option("--weight-decay", weight_decay, "AdamW decoupled weight decay")->check(CLI::NonNegativeNumber);
  app.add_option("--probes", probes_n, "NTK probe images (training images)")->check(CLI::Range(8, 512));
  app.add_option("--early-steps", early_steps, "steps before the second kernel measurement")->check(CLI::Range(1, 100000));
  app.add_option("--calibration", calibration, "batches that calibrate BatchNorm statistics before a kernel")
      ->check(CLI::Range(0, 1000));
  app.add_option("--layer-scale", layer_scale, "ConvNeXt/InceptionNeXt layer-scale init (timm: 1e-6)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--only", only, "comma-separated architecture names (default: all)");
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 256));
  app.add_option("--data", data_dir, "Fashion-MNIST directory (default: Debian's)");
  app.add_option("--out", out_dir, "output directory");
  app.add_option("--seed", seed, "seed (init, data order)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    kern::set_num_threads(threads);
    auto archs = architectures(layer_scale);
    if (!only.empty()) {
      std::vector<Arch> chosen;
      std::stringstream ss(only);
      for (std::string name; std::getline(ss, name, ',');) {
        auto it = std::find_if(archs.begin(), archs.end(), [&](const Arch& a) { return a.name == name; });
        KERN_CHECK(it != archs.end(), "ntk_nas: unknown architecture '", name, "' in --only");
        chosen.push_back(*it);
      }
      archs = chosen;
    }
    auto train_full = kern::data::FashionMNIST::train(data_dir);
    auto test = kern::data::FashionMNIST::test(data_dir);
    KERN_CHECK(probes_n <= subsample, "ntk_nas: --probes (", probes_n, ") exceeds --subsample (", subsample, ")");
    kern::data::TensorDataset train(train_full.x().narrow(0, 0, subsample), train_full.y().narrow(0, 0, subsample));
    const kern::data::Normalize norm({0.286}, {0.353});
    // Probes: the last `probes_n` images of the subsample (part of the training set).
    auto probe_raw = train.batch(subsample - probes_n, probes_n);
    const kern::data::Batch probes{prepare(probe_raw.x, norm), probe_raw.y};
    std::filesystem::create_directories(out_dir);

    struct Row {
      std::string name, description;
      int64_t params = 0;
      Metrics init, early;
      double accuracy = NAN, train_seconds = 0;
    };
    std::vector<Row> rows;
    for (const Arch& arch : archs) {
      kern::manual_seed(seed);
      auto model = arch.build();
      Row row{arch.name, arch.description};
      for (const Tensor& p : model->parameters()) row.params += p.numel();
      calibrate_batch_norm(*model, train, norm, calibration);
      row.init = kernel_metrics(arch, *model, probes);
      fmt::print("{:<16} {:>8} params | init:  LGA {:+.4f}  cond {:.3e}  trace {:.3e}  erank {:.2f}  ({:.1f} s)\n",
                 arch.name, row.params, row.init.lga, row.init.condition, row.init.trace,
                 row.init.effective_rank, row.init.seconds);
      std::fflush(stdout);

      kern::data::DataLoader loader(train, {.batch_size = batch_size, .shuffle = true, .seed = seed});
      const int64_t total_steps = epochs * loader.size();
      kern::optim::AdamW opt(model->parameters(), {.lr = lr, .weight_decay = weight_decay});
      kern::optim::WarmupCosine schedule(opt, std::min<int64_t>(100, total_steps / 2), total_steps);
      model->train();
      int64_t step = 0;
      const auto t0 = std::chrono::steady_clock::now();
      double kernel_seconds = 0;
      for (int epoch = 0; epoch < epochs; ++epoch) {
        loader.set_epoch(epoch);
        for (auto& batch : loader) {
          Tensor loss = kern::cross_entropy((*model)(prepare(batch.x, norm)), batch.y);
          opt.zero_grad();
          loss.backward();
          opt.step();
          schedule.step();
          if (++step == early_steps) {
            calibrate_batch_norm(*model, train, norm, calibration);
            row.early = kernel_metrics(arch, *model, probes);
            kernel_seconds += row.early.seconds;
            model->train();
          }
        }
      }
      row.train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - kernel_seconds;
      row.accuracy = evaluate(*model, test, norm);
      fmt::print("{:<16} {:>8}        | step {}: LGA {:+.4f}  cond {:.3e}  trace {:.3e}  erank {:.2f} | test acc {:.4f} ({:.0f} s training)\n",
                 "", "", early_steps, row.early.lga, row.early.condition, row.early.trace, row.early.effective_rank,
                 row.accuracy, row.train_seconds);
      std::fflush(stdout);
      rows.push_back(row);
    }

    // Verdict: Kendall tau-b of each metric with the final accuracy.
    struct MetricDef {
      std::string key, label;
      std::function<double(const Metrics&)> get;
    };
    const std::vector<MetricDef> defs{
        {"lga", "LGA", [](const Metrics& m) { return m.lga; }},
        {"condition_number", "condition number", [](const Metrics& m) { return m.condition; }},
        {"trace", "trace", [](const Metrics& m) { return m.trace; }},
        {"effective_rank", "effective rank", [](const Metrics& m) { return m.effective_rank; }},
    };
    std::vector<double> acc;
    for (const Row& r : rows) acc.push_back(r.accuracy);
    fmt::print("\nKendall tau-b of each metric with the final test accuracy ({} architectures):\n", rows.size());
    fmt::print("{:<18} {:>6} {:>8} {:>8}\n", "metric", "when", "tau", "p");
    std::string verdicts;
    std::map<std::string, tools::KendallTau> at_init;
    for (const char* when : {"init", "early"}) {
      for (const MetricDef& d : defs) {
        std::vector<double> v;
        for (const Row& r : rows) v.push_back(d.get(std::string(when) == "init" ? r.init : r.early));
        const tools::KendallTau k = tools::kendall_tau(v, acc);
        if (std::string(when) == "init") at_init[d.key] = k;
        fmt::print("{:<18} {:>6} {:>+8.3f} {:>8.4f}\n", d.label, when, k.tau, k.p);
        verdicts += fmt::format(R"({}{{"metric": "{}", "when": "{}", "tau": {}, "p": {}}})",
                                verdicts.empty() ? "" : ", ", d.key, when, json_number(k.tau), json_number(k.p));
      }
    }
    // The paper's claim in numbers: LGA's |tau| at init beats every other init metric's.
    const double lga_tau = std::abs(at_init["lga"].tau);
    bool lga_best = std::isfinite(lga_tau);
    for (const auto& [key, k] : at_init)
      if (key != "lga" && std::isfinite(k.tau) && std::abs(k.tau) >= lga_tau) lga_best = false;
    fmt::print("\nverdict: LGA at init {} the best rank predictor of final accuracy here (|tau| {:.3f}, p {:.4f})\n",
               lga_best ? "IS" : "is NOT", lga_tau, at_init["lga"].p);

    const std::string path = out_dir + "/ntk_nas.json";
    std::ofstream out(path + ".tmp");
    out << "{\"probes\": " << probes_n << ", \"early_steps\": " << early_steps << ", \"epochs\": " << epochs
        << ", \"subsample\": " << subsample << ", \"layer_scale\": " << layer_scale << ", \"architectures\": [";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      out << (i ? ", " : "")
          << fmt::format(R"({{"name": "{}", "description": "{}", "params": {}, "test_accuracy": {}, "train_seconds": {}, "init": {}, "early": {}}})",
                         r.name, r.description, r.params, json_number(r.accuracy), json_number(r.train_seconds),
                         metrics_json(r.init), metrics_json(r.early));
    }
    out << "], \"kendall\": [" << verdicts << "], \"lga_best_at_init\": " << (lga_best ? "true" : "false") << "}\n";
    out.close();
    KERN_CHECK(out.good(), "ntk_nas: could not write ", path);
    std::filesystem::rename(path + ".tmp", path);
    fmt::print("wrote {}\n", path);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "ntk_nas: error: {}\n", e.what());
    return 1;
  }
}
