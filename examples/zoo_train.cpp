// Trains any registered zoo model (kern::models::create_model, timm's names) on Fashion-MNIST
// with AdamW and a warmup-cosine schedule, and tracks its training dynamics with the tracker:
// probe loss/accuracy and weight/grad norms every --track-every steps, and optionally the
// Hessian's sharpness (--sharpness-every) and empirical-NTK metrics (--ntk-every) on a fixed
// probe batch. Images are zero-padded from 28x28 to 32x32 so that ConvNeXt / InceptionNeXt's
// stride-32 trunk ends on a 1x1 map; the models get in_chans = 1, num_classes = 10.
//
//   zoo_train --model convnext_atto [--epochs 1] [--subsample 60000] [--batch-size 64]
//             [--lr 2e-3] [--weight-decay 0.05] [--warmup 100] [--drop-path 0.0]
//             [--track-every 50] [--sharpness-every 0] [--sharpness-kind preconditioned|hessian]
//             [--ntk-every 0] [--probe 32]
//             [--threads 2] [--out run/zoo_train]
//   zoo_train --list                 # the registered model names
//   python3 tools/plot_dynamics.py run/zoo_train/dynamics.jsonl
//
// The last line printed is "test accuracy: " and the fraction of the 10k test images right. Outputs in --out: dynamics.jsonl (the
// tracker's records) and last.safetensors (model + optimizer checkpoint).
#include <CLI/CLI.hpp>
#include <kern/kern.hpp>
#include <kern/models/models.hpp>
#include <kern/optim/optim.hpp>
#include <kern/tools/preconditioned.hpp>
#include <kern/tools/tracker.hpp>

#include "zoo_data.hpp"

#include <chrono>
#include <cmath>
#include <filesystem>

namespace nn = kern::nn;
namespace tools = kern::tools;
using kern::Tensor;

using zoo_data::evaluate;
using zoo_data::prepare;

int main(int argc, char** argv) {
  CLI::App app{"Train a kern zoo model on Fashion-MNIST and track its training dynamics"};
  std::string model_name = "convnext_atto", data_dir, out_dir = "run/zoo_train";
  int epochs = 1, threads = 2;
  int64_t subsample = 60000, batch_size = 64, warmup = 100, track_every = 50, sharpness_every = 0,
          ntk_every = 0, probe_size = 32;
  double lr = 2e-3, weight_decay = 0.05, drop_path = 0.0;
  uint64_t seed = 0;
  bool list = false;
  std::string sharpness_kind = "preconditioned";
  app.add_option("--model", model_name, "zoo model name (see --list)");
  app.add_flag("--list", list, "print the registered model names and exit");
  app.add_option("--epochs", epochs, "epochs")->check(CLI::Range(1, 1000));
  app.add_option("--subsample", subsample, "training images used (the first N of 60000)")
      ->check(CLI::Range(1, 60000));
  app.add_option("--batch-size", batch_size, "batch size")->check(CLI::Range(1, 60000));
  app.add_option("--lr", lr, "peak AdamW learning rate")->check(CLI::PositiveNumber);
  app.add_option("--weight-decay", weight_decay, "AdamW decoupled weight decay")->check(CLI::NonNegativeNumber);
  app.add_option("--warmup", warmup, "linear warmup steps")->check(CLI::NonNegativeNumber);
  app.add_option("--drop-path", drop_path, "stochastic depth rate")->check(CLI::Range(0.0, 0.99));
  app.add_option("--track-every", track_every, "tracker record interval (steps)")->check(CLI::Range(1, 1 << 30));
  app.add_option("--sharpness-every", sharpness_every, "Hessian sharpness interval (0: off; a multiple of --track-every)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--sharpness-kind", sharpness_kind,
                 "preconditioned: lambda_max(P^-1 H) with AdamW's P, against its edge 38/lr (the default: "
                 "the stability threshold of Adam); hessian: the plain top eigenvalue (gradient descent's 2/lr "
                 "does not apply to AdamW)")
      ->check(CLI::IsMember({"preconditioned", "hessian"}));
  app.add_option("--ntk-every", ntk_every, "NTK metrics interval (0: off; a multiple of --track-every)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--probe", probe_size, "probe batch size (the first N test images)")->check(CLI::Range(2, 10000));
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 256));
  app.add_option("--data", data_dir, "Fashion-MNIST directory (default: Debian's)");
  app.add_option("--out", out_dir, "output directory");
  app.add_option("--seed", seed, "seed (init, data order, drop path)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (list) {
      for (const auto& name : kern::models::list_models()) fmt::print("{}\n", name);
      return 0;
    }
    KERN_CHECK(sharpness_every % track_every == 0 && ntk_every % track_every == 0,
               "--sharpness-every (", sharpness_every, ") and --ntk-every (", ntk_every,
               ") must be multiples of --track-every (", track_every, ")");
    kern::set_num_threads(threads);
    kern::manual_seed(seed);
    auto train_full = kern::data::FashionMNIST::train(data_dir);
    auto test = kern::data::FashionMNIST::test(data_dir);
    kern::data::TensorDataset train(train_full.x().narrow(0, 0, subsample),
                                    train_full.y().narrow(0, 0, subsample));
    const kern::data::Normalize norm({0.286}, {0.353});
    kern::data::DataLoader loader(train, {.batch_size = batch_size, .shuffle = true, .seed = seed});

    auto model = kern::models::create_model(
        model_name, {.num_classes = 10, .in_chans = 1, .drop_path_rate = drop_path});
    int64_t n_params = 0;
    for (const Tensor& p : model->parameters()) n_params += p.numel();
    const int64_t total_steps = epochs * loader.size();
    fmt::print("{}: {:.2f}M parameters; {} images, {} epochs, {} steps of batch {}, AdamW lr {} wd {}\n",
               model_name, static_cast<double>(n_params) / 1e6, subsample, epochs, total_steps,
               batch_size, lr, weight_decay);

    kern::optim::AdamW opt(model->parameters(), {.lr = lr, .weight_decay = weight_decay});
    kern::optim::WarmupCosine schedule(opt, std::min(warmup, total_steps / 2), total_steps);

    // The probe: a fixed batch of test images, prepared once.
    auto probe_raw = test.batch(0, probe_size);
    kern::data::Batch probe{prepare(probe_raw.x, norm), probe_raw.y};
    std::filesystem::create_directories(out_dir);
    tools::Tracker tracker(out_dir + "/dynamics.jsonl", {.every = track_every, .lr = lr, .label = model_name});
    tracker.track(tools::probe_metrics(*model, probe, tools::mean_cross_entropy));
    tracker.track(tools::norm_metrics(*model));
    if (sharpness_every > 0 && sharpness_kind == "preconditioned")
      tracker.track(tools::preconditioned_sharpness(*model, probe, tools::mean_cross_entropy, opt, {.iters = 20}),
                    sharpness_every);
    else if (sharpness_every > 0)
      tracker.track(tools::sharpness(*model, probe, tools::mean_cross_entropy, {.iters = 20}), sharpness_every);
    if (ntk_every > 0) tracker.track(tools::ntk_metrics(*model, probe), ntk_every);

    double accuracy = 0.0;
    for (int epoch = 0; epoch < epochs; ++epoch) {
      loader.set_epoch(epoch);
      const auto t0 = std::chrono::steady_clock::now();
      double loss_sum = 0.0;
      auto bar = kern::progress(loader, "epoch {}/{}", epoch + 1, epochs);
      for (auto& batch : bar) {
        Tensor loss = kern::cross_entropy((*model)(prepare(batch.x, norm)), batch.y);
        opt.zero_grad();
        loss.backward();
        tracker.set_lr(opt.lr());
        tracker.step(loss);  // after backward: grad norms refer to this step's gradient
        opt.step();
        schedule.step();
        loss_sum += loss.item();
        bar.set_postfix("loss", loss.item());
      }
      bar.bar().finish();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      accuracy = evaluate(*model, test, norm);
      fmt::print("epoch {}: train loss {:.4f}, test accuracy {:.4f}, {:.1f} s (tracker {:.1f} s)\n",
                 epoch + 1, loss_sum / static_cast<double>(loader.size()), accuracy, seconds,
                 tracker.overhead_seconds());
    }
    tracker.record();
    kern::io::save_checkpoint(out_dir + "/last.safetensors", *model, opt, total_steps,
                              {{"model", model_name}});
    fmt::print("wrote {} and {}/last.safetensors\n", tracker.path(), out_dir);
    fmt::print("test accuracy: {:.4f}\n", accuracy);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "zoo_train: error: {}\n", e.what());
    return 1;
  }
}
