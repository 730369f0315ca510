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
//   OMP_NUM_THREADS=1 mpirun -np 2 zoo_train --ddp ...   # data-parallel (kern built with MPI)
//
// --ddp: nn::DistributedDataParallel over the MPI ranks; the global batch stays --batch-size
// (each rank takes batch_size / ranks examples of its data::DistributedSampler shard), one
// thread per rank unless --threads is given. The tracker lives on rank 0 only (it records
// the global mean loss, all-reduced every step, and runs its probe metrics on rank 0's copy
// of the model, which every rank shares); rank 0 prints, evaluates and writes the outputs.
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

#include "ddp_setup.hpp"
#include "zoo_data.hpp"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <optional>


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
  bool ddp = false;
  app.add_flag("--ddp", ddp, "data-parallel over the MPI ranks (run under mpirun)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  examples::Ranks job;
  if (!examples::start_ranks("zoo_train", ddp, app.count("--threads") > 0, argc, argv, threads, job)) return 1;
  const int rank = job.rank, ranks = job.world;
  try {
    if (list) {
      for (const auto& name : kern::models::list_models()) fmt::print("{}\n", name);
      return 0;
    }
    KERN_CHECK(sharpness_every % track_every == 0 && ntk_every % track_every == 0,
               "--sharpness-every (", sharpness_every, ") and --ntk-every (", ntk_every,
               ") must be multiples of --track-every (", track_every, ")");
    KERN_CHECK(batch_size % ranks == 0, "--batch-size ", batch_size, " is not divisible by the ", ranks, " ranks");
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
    std::shared_ptr<nn::Module> net = model;  // what training forwards run: the model, or DDP around it
    // --ddp: this rank's shard of each epoch, in batches of batch_size / ranks
    kern::data::DistributedSampler sampler(train.size(), {.num_replicas = ranks, .rank = rank, .seed = seed});
    net = examples::wrap_ddp(job, model);                                   // rank 0's initial weights
    if (ddp) kern::manual_seed(seed + 7919 * static_cast<uint64_t>(rank));  // per-rank drop-path masks
    const int64_t steps_per_epoch =
        ddp ? static_cast<int64_t>(sampler.batches(batch_size / ranks).size()) : loader.size();
    const int64_t total_steps = epochs * steps_per_epoch;
    if (rank == 0) fmt::print("{}: {:.2f}M parameters; {} images, {} epochs, {} steps of batch {}, AdamW lr {} wd {}\n",
               model_name, static_cast<double>(n_params) / 1e6, subsample, epochs, total_steps,
               batch_size, lr, weight_decay);
    if (ddp && rank == 0) fmt::print("--ddp: {} ranks x {} threads, {} examples per rank and step\n", ranks, threads, batch_size / ranks);

    kern::optim::AdamW opt(model->parameters(), {.lr = lr, .weight_decay = weight_decay});
    kern::optim::WarmupCosine schedule(opt, std::min(warmup, total_steps / 2), total_steps);

    // The probe: a fixed batch of test images, prepared once.
    auto probe_raw = test.batch(0, probe_size);
    kern::data::Batch probe{prepare(probe_raw.x, norm), probe_raw.y};
    // rank 0 only: the tracker's metrics run on rank 0's copy of the model (the same on every rank)
    std::optional<tools::Tracker> tracker_storage;
    if (rank == 0) {
      std::filesystem::create_directories(out_dir);
      tracker_storage.emplace(out_dir + "/dynamics.jsonl", tools::TrackerOptions{.every = track_every, .lr = lr, .label = model_name});
      auto& tracker = *tracker_storage;
      tracker.track(tools::probe_metrics(*model, probe, tools::mean_cross_entropy));
      tracker.track(tools::norm_metrics(*model));
      if (sharpness_every > 0 && sharpness_kind == "preconditioned")
        tracker.track(tools::preconditioned_sharpness(*model, probe, tools::mean_cross_entropy, opt, {.iters = 20}),
                      sharpness_every);
      else if (sharpness_every > 0)
        tracker.track(tools::sharpness(*model, probe, tools::mean_cross_entropy, {.iters = 20}), sharpness_every);
      if (ntk_every > 0) tracker.track(tools::ntk_metrics(*model, probe), ntk_every);
    }

    double accuracy = 0.0;
    for (int epoch = 0; epoch < epochs; ++epoch) {
      loader.set_epoch(epoch);
      sampler.set_epoch(epoch);
      const auto t0 = std::chrono::steady_clock::now();
      double loss_sum = 0.0;
      auto train_step = [&](const Tensor& x, const Tensor& y) {
        Tensor loss = kern::cross_entropy((*net)(prepare(x, norm)), y);
        opt.zero_grad();
        loss.backward();
        Tensor recorded = examples::mean_over_ranks(job, loss.detach());  // the global batch's mean loss
        if (tracker_storage) {
          tracker_storage->set_lr(opt.lr());
          tracker_storage->step(recorded);  // after backward: grad norms refer to this step's gradient
        }
        opt.step();
        schedule.step();
        const double l = recorded.item();
        loss_sum += l;
        return l;
      };
      if (ddp) {
        for (auto& idx : sampler.batches(batch_size / ranks)) {
          auto batch = train.get_batch(idx);
          train_step(batch.x, batch.y);
        }
      } else {
        auto bar = kern::progress(loader, "epoch {}/{}", epoch + 1, epochs);
        for (auto& batch : bar) bar.set_postfix("loss", train_step(batch.x, batch.y));
        bar.bar().finish();
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (rank != 0) continue;  // every rank holds the same model; rank 0 reports
      accuracy = evaluate(*model, test, norm);
      fmt::print("epoch {}: train loss {:.4f}, test accuracy {:.4f}, {:.1f} s (tracker {:.1f} s)\n",
                 epoch + 1, loss_sum / static_cast<double>(steps_per_epoch), accuracy, seconds,
                 tracker_storage->overhead_seconds());
    }
    if (rank != 0) return 0;
    auto& tracker = *tracker_storage;
    tracker.record();
    kern::io::save_checkpoint(out_dir + "/last.safetensors", *model, opt, total_steps,
                              {{"model", model_name}});
    fmt::print("wrote {} and {}/last.safetensors\n", tracker.path(), out_dir);
    fmt::print("test accuracy: {:.4f}\n", accuracy);
    return 0;
  } catch (const std::exception& e) {
    return examples::fail("zoo_train", job, e);
  }
}
