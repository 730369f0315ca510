// Learning-rate transfer across width on a ConvNet (Tensor Programs V's claim, on the zoo).
//
// Claim (Yang et al. 2021, TP5): under muP the optimal learning rate does not move as the
// width grows, so it can be tuned on a narrow model and transferred; under standard
// parameterization (SP) with Adam it drifts to smaller values as the width grows.
//
// Setup: a small ConvNeXt (kern::models::ConvNeXt, timm's block: depthwise 7x7, LayerNorm,
// pointwise MLP x4, layer scale) with depths (1, 1, 2, 1) and dims w * (1, 2, 4, 8), trained
// with Adam on a Fashion-MNIST subsample zero-padded to 32x32, at every lr of a half-power-of-2
// grid, for widths w spanning 8x. SP: PyTorch's default init, one lr for all. muP: the mup
// library's Table 8 (kern::param::Preset::mup with base shapes from the width-w0 model, delta
// at 2 w0), readout zero-initialized. The score of a run is its training loss averaged over
// the last epoch, averaged over seeds. The optimum per width is the grid argmin and the vertex
// of the parabola through it and its neighbours (in grid steps of log2(lr) = 1/2).
//
// Verdict: muP's optima (argmin and vertex) span at most one grid step over all widths, and
// SP's span two or more. examples/pytorch/mup_transfer_zoo.py is the same recipe in PyTorch
// (muP written by hand as the mup library's Table 8), to tell the setup apart from kern.
//
//   mup_transfer_zoo [--widths 8,16,32,64] [--lr-min -13 --lr-max -6] [--epochs 3]
//                    [--subsample 3000] [--seeds 2] [--params SP,muP] [--threads 1]
//                    [--out run/mup_transfer_zoo] [--resume]
// Results go to <out>/transfer.jsonl as they are measured (--resume skips the points already
// there), then the optimum table, the verdict and <out>/transfer.png.
#include <CLI/CLI.hpp>
#include <kern/kern.hpp>
#include <kern/models/convnext.hpp>
#include <kern/optim/optim.hpp>
#include <kern/optim/param_groups.hpp>
#include <kern/param/param.hpp>
#include <kern/tools/coord_check.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <tuple>

namespace nn = kern::nn;
namespace param = kern::param;
namespace optim = kern::optim;
namespace models = kern::models;
using kern::Tensor;

namespace {

std::shared_ptr<models::ConvNeXt> convnext(int64_t w) {
  return std::make_shared<models::ConvNeXt>(models::ConvNeXtOptions{
      .depths = {1, 1, 2, 1}, .dims = {w, 2 * w, 4 * w, 8 * w}, .num_classes = 10, .in_chans = 1});
}

struct Run {
  std::string param;  // "SP" or "muP"
  int64_t width;
  int half_steps;     // lr = 2^(half_steps / 2)
  uint64_t seed;
};

double lr_of(int half_steps) { return std::exp2(0.5 * half_steps); }

// Mean training loss over the last epoch (NaN if the run diverged).
double train_one(const Run& r, const kern::data::TensorDataset& data, int epochs, int64_t batch_size,
                 int64_t base_width) {
  kern::manual_seed(r.seed);
  auto model = convnext(r.width);
  if (r.param == "SP") {
    param::apply(*model, param::Preset::standard());
  } else {
    const std::string rng = kern::default_generator().state();
    auto base = convnext(base_width), delta = convnext(2 * base_width);
    kern::default_generator().set_state(rng);
    param::apply(*model, param::Preset::mup(*base, *delta).zero_readout());
  }
  optim::Adam opt(optim::param_groups(*model, {.family = optim::Family::Adam}), {.lr = lr_of(r.half_steps)});
  kern::data::DataLoader loader(data, {.batch_size = batch_size, .shuffle = true, .seed = r.seed});
  double last = NAN;
  for (int e = 0; e < epochs; ++e) {
    loader.set_epoch(e);
    double sum = 0.0;
    int64_t n = 0;
    for (auto& batch : loader) {
      Tensor loss = kern::cross_entropy((*model)(batch.x), batch.y);
      const double l = loss.item<double>();
      if (!std::isfinite(l) || l > 1e3) return NAN;  // diverged
      opt.zero_grad();
      loss.backward();
      opt.step();
      sum += l;
      ++n;
    }
    last = sum / static_cast<double>(n);
  }
  return last;
}

// Optimum of a loss curve over the grid: argmin index, and the parabola vertex through the
// argmin and its neighbours (the argmin itself at the grid's edge or next to a divergence).
std::pair<size_t, double> optimum(const std::vector<double>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (std::isfinite(v[i]) && (!std::isfinite(v[best]) || v[i] < v[best])) best = i;
  double x = static_cast<double>(best);
  if (best > 0 && best + 1 < v.size() && std::isfinite(v[best - 1]) && std::isfinite(v[best + 1])) {
    const double a = v[best - 1], b = v[best], c = v[best + 1], den = a - 2 * b + c;
    if (den > 0) x += 0.5 * (a - c) / den;
  }
  return {best, x};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"muP learning-rate transfer on a small ConvNeXt, Fashion-MNIST 32x32 (SP vs muP)"};
  std::vector<int64_t> widths = {8, 16, 32, 64};
  std::string out_dir = "run/mup_transfer_zoo", data_dir, params_s = "SP,muP";
  int lr_min = -13, lr_max = -6, epochs = 3, threads = 1, seeds = 2;
  int64_t subsample = 3000, batch_size = 128, base_width = 0;
  uint64_t seed = 0;
  bool resume = false;
  app.add_option("--widths", widths, "widths w (dims w * (1, 2, 4, 8)), spanning 8x or more")->delimiter(',');
  app.add_option("--lr-min", lr_min, "smallest lr = 2^lr_min (grid in half powers of 2)");
  app.add_option("--lr-max", lr_max, "largest lr = 2^lr_max");
  app.add_option("--epochs", epochs, "epochs over the subsample")->check(CLI::Range(1, 1000));
  app.add_option("--subsample", subsample, "training images used (first N of 60000)")
      ->check(CLI::Range(128, 60000));
  app.add_option("--batch-size", batch_size, "batch size")->check(CLI::Range(1, 60000));
  app.add_option("--base-width", base_width, "muP base width (default: the smallest width)");
  app.add_option("--data", data_dir, "Fashion-MNIST directory (default: Debian's)");
  app.add_option("--out", out_dir, "output directory");
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 256));
  app.add_option("--seed", seed, "first seed (init and data order)");
  app.add_option("--seeds", seeds, "seeds per point; the score is their mean")->check(CLI::Range(1, 100));
  app.add_option("--params", params_s, "SP, muP or SP,muP")->check(CLI::IsMember({"SP", "muP", "SP,muP", "muP,SP"}));
  app.add_flag("--resume", resume, "skip the (param, width, lr, seed) points already in transfer.jsonl");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    kern::set_num_threads(threads);
    std::sort(widths.begin(), widths.end());
    KERN_CHECK(widths.size() >= 2 && widths.front() > 0, "--widths: give 2+ positive widths");
    KERN_CHECK(lr_min <= lr_max, "--lr-min ", lr_min, " > --lr-max ", lr_max);
    if (base_width <= 0) base_width = widths.front();
    std::vector<int> grid;  // half steps
    for (int k = 2 * lr_min; k <= 2 * lr_max; ++k) grid.push_back(k);
    std::vector<std::string> params;
    if (params_s.find("SP") != std::string::npos) params.push_back("SP");
    if (params_s.find("muP") != std::string::npos) params.push_back("muP");

    auto train = kern::data::FashionMNIST::train(data_dir);
    const kern::data::Normalize norm({0.286}, {0.353});
    Tensor x = kern::pad(norm(train.x().narrow(0, 0, subsample)), {2, 2, 2, 2}).contiguous();  // [N, 1, 32, 32]
    Tensor y = train.y().narrow(0, 0, subsample).contiguous();
    kern::data::TensorDataset data(x, y);

    std::filesystem::create_directories(out_dir);
    const std::string jsonl = out_dir + "/transfer.jsonl", png = out_dir + "/transfer.png";
    // (param, width, half step, seed) -> loss, from a previous run.
    std::map<std::tuple<std::string, int64_t, int, uint64_t>, double> done;
    if (resume && std::filesystem::exists(jsonl)) {
      std::ifstream in(jsonl);
      for (std::string line; std::getline(in, line);) {
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded() || j.value("kind", "") != "seed") continue;
        const double l = j["loss"].is_number() ? j["loss"].get<double>() : NAN;
        done[{j["param"], j["width"], j["half_steps"], j["seed"]}] = l;
      }
    }
    std::ofstream f(jsonl, resume ? std::ios::app : std::ios::trunc);
    KERN_CHECK(f.good(), "cannot write ", jsonl);
    fmt::print("ConvNeXt depths (1,1,2,1), dims w*(1,2,4,8); Fashion-MNIST {} images padded to 32x32, "
               "{} epochs, batch {}, Adam at {} lrs 2^{}..2^{} in half powers of 2; widths {}; muP base "
               "width {}; {} seed(s) from {}; {} point(s) resumed\n",
               subsample, epochs, batch_size, grid.size(), lr_min, lr_max, fmt::join(widths, ","), base_width,
               seeds, seed, done.size());

    const auto t0 = std::chrono::steady_clock::now();
    std::map<std::pair<std::string, int64_t>, std::vector<double>> curves;  // mean over seeds
    for (const std::string& p : params)
      for (int64_t w : widths)
        for (int k : grid) {
          double mean = 0.0;
          for (int s = 0; s < seeds; ++s) {
            const Run r{p, w, k, seed + static_cast<uint64_t>(s)};
            double l;
            if (auto it = done.find({p, w, k, r.seed}); it != done.end()) {
              l = it->second;
            } else {
              l = train_one(r, data, epochs, batch_size, base_width);
              f << fmt::format(R"({{"kind":"seed","param":"{}","width":{},"half_steps":{},"lr":{},"seed":{},"loss":{}}})",
                               p, w, k, lr_of(k), r.seed, std::isfinite(l) ? fmt::format("{}", l) : "null")
                << std::endl;
            }
            mean += l / seeds;
          }
          curves[{p, w}].push_back(mean);
          const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          fmt::print("{:>4} width {:>4} lr 2^{:<5} loss {:.4f}   [{:.0f} s]\n", p, w, 0.5 * k, mean, secs);
          std::fflush(stdout);
        }

    // The figure's records (one per point, mean over seeds) go to their own file.
    const std::string curve_jsonl = out_dir + "/curves.jsonl";
    std::ofstream c(curve_jsonl, std::ios::trunc);
    for (const auto& [key, v] : curves)
      for (size_t i = 0; i < v.size(); ++i)
        c << fmt::format(R"({{"kind":"transfer","param":"{}","width":{},"lr":{},"loss":{}}})", key.first,
                         key.second, lr_of(grid[i]), std::isfinite(v[i]) ? fmt::format("{}", v[i]) : "NaN")
          << "\n";
    c.close();

    fmt::print("\noptimal learning rate per width (log2 lr; grid step 0.5):\n{:>12}", "width");
    for (int64_t w : widths) fmt::print(" {:>7}", w);
    fmt::print("   spread (grid steps)\n");
    std::map<std::string, std::pair<double, double>> spread;  // param -> (argmin, vertex) in grid steps
    for (const std::string& p : params) {
      std::vector<double> arg, vertex;
      for (int64_t w : widths) {
        auto [best, x] = optimum(curves[{p, w}]);
        arg.push_back(0.5 * grid[best]);
        vertex.push_back(0.5 * (grid.front() + x));
      }
      const auto range = [](const std::vector<double>& v) {
        return *std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end());
      };
      spread[p] = {range(arg) / 0.5, range(vertex) / 0.5};
      fmt::print("{:>12}", p + " argmin");
      for (double k : arg) fmt::print(" {:>7}", fmt::format("2^{}", k));
      fmt::print("   {:.0f}\n{:>12}", spread[p].first, p + " vertex");
      for (double k : vertex) fmt::print(" {:>7.2f}", k);
      fmt::print("   {:.2f}\n", spread[p].second);
    }
    if (spread.count("SP") && spread.count("muP")) {
      const bool mup_ok = spread["muP"].first <= 1 && spread["muP"].second <= 1;
      const bool sp_drifts = spread["SP"].first >= 2;
      fmt::print("verdict: muP optimum spans {:.0f} grid step(s) (vertex {:.2f}) [{}]; SP spans {:.0f} (vertex "
                 "{:.2f}) [{}]: transfer {}\n",
                 spread["muP"].first, spread["muP"].second, mup_ok ? "<= 1: holds" : "> 1: FAILS",
                 spread["SP"].first, spread["SP"].second, sp_drifts ? ">= 2: drifts" : "< 2: does not drift",
                 mup_ok && sp_drifts ? "REPRODUCED" : "NOT reproduced");
    }
    const std::string script = kern::tools::default_plot_script();
    const std::string cmd = "/usr/bin/python3 '" + script + "' '" + curve_jsonl + "' -o '" + png +
                            "' --title 'ConvNeXt (1,1,2,1) on Fashion-MNIST, Adam: SP vs muP'";
    if (std::filesystem::exists(script) && std::system(cmd.c_str()) == 0) fmt::print("wrote {}\n", png);
    else fmt::print("plotting failed: {}\n", cmd);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "mup_transfer_zoo: error: {}\n", e.what());
    return 1;
  }
}
