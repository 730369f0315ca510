// Learning-rate transfer across width (Tensor Programs V, Figure 1 style) on Fashion-MNIST.
//
// MLP 784 -> w -> ReLU -> w -> ReLU -> 10 for widths 128..2048, trained with Adam at each lr
// of a log2 grid, in standard parameterization (PyTorch defaults) and in muP (the mup
// library's form, base width 128, readout zero-initialized). The score of a run is its
// training loss averaged over the last epoch. Under muP the optimal lr should stay put as the
// width grows; under SP it drifts (to smaller lrs, with Adam).
//
// To fit in under ~30 minutes on 2 cores the training set is SUBSAMPLED (default: the first
// 8000 of the 60000 training images, 6 epochs of batch 128 = 378 Adam steps per run, 11 lrs,
// one thread: these small steps lose to OpenMP barriers on a busy 2-core machine). Output:
// loss-vs-lr JSON lines and a PNG (tools/plot_coord_check.py) in --out, and the optimal lr per
// width for each parameterization. Why 6 epochs: after 3, the muP grid optimum spans two steps
// (2^-8 at width 128, 2^-6 at 2048); after 6, one (2^-8 .. 2^-7). The sub-grid parabola vertex
// still moves up by about one grid step from 128 to 2048 in both, and PyTorch with the same
// recipe (examples/pytorch/mup_transfer.py) shows the same: a property of this small setup
// (8000 images, few steps), not of kern.
//
//   mup_transfer [--widths 128,256,512,1024,2048] [--lr-min -14 --lr-max -4] [--epochs 6]
//                [--subsample 8000] [--threads 1] [--optimizer adam|sgd] [--out run/mup_transfer]
//                [--seeds 1] [--params SP,muP]
// --seeds N averages each point over N seeds (init and data order): where a curve is flat near
// its minimum, one seed's argmin can move by a grid step. --params runs one side only (the two
// sides can then run as two processes, one per core).
#include <CLI/CLI.hpp>
#include <kern/kern.hpp>
#include <kern/tools/coord_check.hpp>
#include <kern/optim/optim.hpp>
#include <kern/optim/param_groups.hpp>
#include <kern/param/param.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

namespace nn = kern::nn;
namespace param = kern::param;
namespace optim = kern::optim;
using kern::Tensor;

namespace {

std::shared_ptr<nn::Sequential> mlp(int64_t w) {
  // One statement per layer: the init stream follows the layer order.
  auto l0 = std::make_shared<nn::Linear>(784, w);
  auto l2 = std::make_shared<nn::Linear>(w, w);
  auto l4 = std::make_shared<nn::Linear>(w, 10);
  return std::make_shared<nn::Sequential>(l0, std::make_shared<nn::ReLU>(), l2,
                                          std::make_shared<nn::ReLU>(), l4);
}

struct Config {
  std::string param;  // "SP" or "muP"
  int64_t width;
  double lr;
};

// Mean training loss over the last epoch (NaN if the run diverged).
double train_one(const Config& c, const kern::data::TensorDataset& data, int epochs,
                 int64_t batch_size, int64_t base_width, bool adam, uint64_t seed) {
  kern::manual_seed(seed);
  auto model = mlp(c.width);
  param::apply(*model, c.param == "SP" ? param::Preset::standard()
                                       : param::Preset::mup(c.width, base_width).zero_readout());
  const auto family = adam ? optim::Family::Adam : optim::Family::SGD;
  auto groups = optim::param_groups(*model, {.family = family});
  std::unique_ptr<optim::Optimizer> opt;
  if (adam) opt = std::make_unique<optim::Adam>(groups, optim::AdamOptions{.lr = c.lr});
  else opt = std::make_unique<optim::SGD>(groups, optim::SGDOptions{.lr = c.lr, .momentum = 0.9});
  kern::data::DataLoader loader(data, {.batch_size = batch_size, .shuffle = true, .seed = seed});
  double last = NAN;
  for (int e = 0; e < epochs; ++e) {
    loader.set_epoch(e);
    double sum = 0.0;
    int64_t n = 0;
    for (auto& batch : loader) {
      Tensor loss = kern::cross_entropy((*model)(batch.x), batch.y);
      const double l = loss.item<double>();
      if (!std::isfinite(l) || l > 1e3) return NAN;  // diverged
      opt->zero_grad();
      loss.backward();
      opt->step();
      sum += l;
      ++n;
    }
    last = sum / static_cast<double>(n);
  }
  return last;
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    out.push_back(std::stoll(s.substr(start, end - start)));
    start = end + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"muP learning-rate transfer on Fashion-MNIST (SP vs muP)"};
  std::string widths_s = "128,256,512,1024,2048", out_dir = "run/mup_transfer", data_dir,
              optimizer = "adam";
  int lr_min = -14, lr_max = -4, epochs = 6, threads = 1;
  int64_t subsample = 8000, batch_size = 128, base_width = 128;
  uint64_t seed = 0;
  int seeds = 1;
  std::string params_s = "SP,muP";
  app.add_option("--widths", widths_s, "comma-separated widths");
  app.add_option("--lr-min", lr_min, "smallest lr = 2^lr_min");
  app.add_option("--lr-max", lr_max, "largest lr = 2^lr_max");
  app.add_option("--epochs", epochs, "epochs over the subsample")->check(CLI::Range(1, 1000));
  app.add_option("--subsample", subsample, "training images used (first N of 60000)")
      ->check(CLI::Range(128, 60000));
  app.add_option("--batch-size", batch_size, "batch size")->check(CLI::Range(1, 60000));
  app.add_option("--base-width", base_width, "muP base width")->check(CLI::Range(1, 1 << 20));
  app.add_option("--optimizer", optimizer, "adam or sgd (momentum 0.9)")
      ->check(CLI::IsMember({"adam", "sgd"}));
  app.add_option("--data", data_dir, "Fashion-MNIST directory (default: Debian's)");
  app.add_option("--out", out_dir, "output directory");
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 256));
  app.add_option("--seed", seed, "seed (init and data order)");
  app.add_option("--seeds", seeds, "runs per (width, lr) with seeds seed, seed+1, ...; the score is their mean")
      ->check(CLI::Range(1, 100));
  app.add_option("--params", params_s, "parameterizations: SP, muP or SP,muP")
      ->check(CLI::IsMember({"SP", "muP", "SP,muP", "muP,SP"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    kern::set_num_threads(threads);
    const std::vector<int64_t> widths = parse_list(widths_s);
    KERN_CHECK(lr_min <= lr_max, "--lr-min ", lr_min, " > --lr-max ", lr_max);
    std::vector<double> lrs;
    for (int k = lr_min; k <= lr_max; ++k) lrs.push_back(std::ldexp(1.0, k));

    auto train = kern::data::FashionMNIST::train(data_dir);
    const kern::data::Normalize norm({0.286}, {0.353});
    Tensor x = norm(train.x().narrow(0, 0, subsample)).reshape({subsample, 784}).contiguous();
    Tensor y = train.y().narrow(0, 0, subsample).contiguous();
    kern::data::TensorDataset data(x, y);

    std::filesystem::create_directories(out_dir);
    const std::string jsonl = out_dir + "/transfer.jsonl", png = out_dir + "/transfer.png";
    std::ofstream f(jsonl, std::ios::trunc);
    KERN_CHECK(f.good(), "cannot write ", jsonl);
    fmt::print("Fashion-MNIST subsample: {} images, {} epochs, batch {}, {} ({} lrs 2^{}..2^{}), "
               "widths {}, muP base width {}, {} seed(s) from {}\n",
               subsample, epochs, batch_size, optimizer, lrs.size(), lr_min, lr_max, widths_s,
               base_width, seeds, seed);

    std::vector<std::string> params;
    if (params_s.find("SP") != std::string::npos) params.push_back("SP");
    if (params_s.find("muP") != std::string::npos) params.push_back("muP");

    const auto t0 = std::chrono::steady_clock::now();
    std::map<std::pair<std::string, int64_t>, std::vector<double>> losses;
    for (const std::string& p : params) {
      for (int64_t w : widths) {
        for (double lr : lrs) {
          // Score: the mean over seeds (one seed's optimum is noisy where the curve is flat);
          // NaN if any seed diverged.
          double loss = 0.0;
          for (int k = 0; k < seeds; ++k) {
            const double l = train_one({p, w, lr}, data, epochs, batch_size, base_width,
                                       optimizer == "adam", seed + static_cast<uint64_t>(k));
            if (seeds > 1)
              f << fmt::format(R"({{"kind":"seed","param":"{}","width":{},"lr":{},"seed":{},"loss":{}}})",
                               p, w, lr, seed + k, std::isfinite(l) ? fmt::format("{}", l) : "NaN")
                << std::endl;
            loss += l / seeds;
          }
          losses[{p, w}].push_back(loss);
          f << fmt::format(R"({{"kind":"transfer","param":"{}","width":{},"lr":{},"loss":{}}})",
                           p, w, lr, std::isfinite(loss) ? fmt::format("{}", loss) : "NaN")
            << std::endl;
          const double s =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          fmt::print("{:>4} width {:>5} lr 2^{:<4} loss {:.4f}   [{:.0f} s]\n", p, w,
                     static_cast<int>(std::lround(std::log2(lr))), loss, s);
          std::fflush(stdout);  // progress shows up in logs too
        }
      }
    }

    // Optimum per width: the grid argmin, and the vertex of the parabola through the argmin
    // and its two neighbours in log2(lr) (a sub-grid estimate; the argmin itself when it sits
    // on the edge of the grid or a neighbour diverged).
    fmt::print("\noptimal learning rate (log2) per width:\n{:>12}", "width");
    for (int64_t w : widths) fmt::print(" {:>7}", w);
    fmt::print("   spread (grid steps)\n");
    for (const std::string& p : params) {
      std::vector<int> arg;
      std::vector<double> vertex;
      for (int64_t w : widths) {
        const auto& v = losses[{p, w}];
        size_t best = 0;
        for (size_t i = 1; i < v.size(); ++i)
          if (std::isfinite(v[i]) && (!std::isfinite(v[best]) || v[i] < v[best])) best = i;
        double x = static_cast<double>(best);
        if (best > 0 && best + 1 < v.size() && std::isfinite(v[best - 1]) && std::isfinite(v[best + 1])) {
          const double a = v[best - 1], b = v[best], c = v[best + 1];
          const double den = a - 2 * b + c;
          if (den > 0) x += 0.5 * (a - c) / den;
        }
        arg.push_back(lr_min + static_cast<int>(best));
        vertex.push_back(lr_min + x);
      }
      fmt::print("{:>12}", p + " argmin");
      for (int k : arg) fmt::print(" {:>7}", fmt::format("2^{}", k));
      fmt::print("   {}\n", *std::max_element(arg.begin(), arg.end()) - *std::min_element(arg.begin(), arg.end()));
      fmt::print("{:>12}", p + " vertex");
      for (double k : vertex) fmt::print(" {:>7.2f}", k);
      fmt::print("   {:.2f}\n", *std::max_element(vertex.begin(), vertex.end()) -
                                   *std::min_element(vertex.begin(), vertex.end()));
    }
    f.close();
    const std::string script =
        kern::tools::default_plot_script();
    const std::string cmd = "/usr/bin/python3 '" + script + "' '" + jsonl + "' -o '" + png +
                            "' --title 'Fashion-MNIST MLP, " + optimizer + ": SP vs muP'";
    if (std::filesystem::exists(script) && std::system(cmd.c_str()) == 0)
      fmt::print("wrote {} and {}\n", jsonl, png);
    else
      fmt::print("wrote {} (plotting failed: {})\n", jsonl, cmd);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "mup_transfer: error: {}\n", e.what());
    return 1;
  }
}
