// Trains a small CNN on Fashion-MNIST (from the Debian package dataset-fashion-mnist, or
// --data DIR) with SGD + momentum and a per-step cosine learning rate, evaluates on the
// 10k test images after every epoch, checkpoints, and can resume bit-identically.
//
//   Conv5x5(1->32) ReLU MaxPool2 Conv5x5(32->64) ReLU MaxPool2 Linear(1024->128) ReLU Linear(128->10)
//
// The last line printed is "test accuracy: 0.XXXX".
//
// --ddp (when kern was built with MPI): data-parallel over the ranks of
//   OMP_NUM_THREADS=1 mpirun -np 2 build/examples/fashion_mnist --ddp
// The global batch stays --batch-size (each rank takes batch_size / ranks examples of its
// data::DistributedSampler shard); gradients are averaged by nn::DistributedDataParallel;
// rank 0 prints, evaluates and writes the checkpoint, every rank reads --resume. One
// thread per rank unless --threads is given.
//
// --bf16: mixed precision, the forward and the loss under kern::AutocastGuard(BFloat16): the
// convolutions and Linears run in bf16 on oneDNN (float32 accumulation), parameters, optimizer
// and gradients stay float32 (`make demo DEMO_ARGS=--bf16`).
#include <CLI/CLI.hpp>
#include <kern/autocast.hpp>
#include <kern/kern.hpp>
#include <kern/optim/optim.hpp>

#include "ddp_setup.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>

namespace nn = kern::nn;
using kern::Tensor;

namespace {

std::shared_ptr<nn::Sequential> make_model() {
  return std::make_shared<nn::Sequential>(
      nn::Conv2d(nn::Conv2dOptions(1, 32, 5)), nn::ReLU(), nn::MaxPool2d(2),   // [N,32,12,12]
      nn::Conv2d(nn::Conv2dOptions(32, 64, 5)), nn::ReLU(), nn::MaxPool2d(2),  // [N,64,4,4]
      nn::Flatten(), nn::Linear(1024, 128), nn::ReLU(), nn::Linear(128, 10));
}

// Throws unless `dir` exists (created if needed) and a file can be created in it: found
// before training starts, not when the first epoch's checkpoint is saved.
void check_writable_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  KERN_CHECK(!ec, "--out '", dir, "': cannot create the directory: ", ec.message());
  const std::string probe = fmt::format("{}/.fashion_mnist-write-test-{}", dir, ::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  KERN_CHECK(fd >= 0, "--out '", dir, "': the directory is not writable (", std::strerror(errno), ")");
  ::close(fd);
  ::unlink(probe.c_str());
}

// Fraction of correctly classified test images (eval mode, no graph).
double evaluate(nn::Module& model, const kern::data::TensorDataset& test, const kern::data::Normalize& norm) {
  kern::NoGradGuard no_grad;
  model.eval();
  int64_t correct = 0;
  const int64_t n = test.size();
  KERN_CHECK(n > 0, "evaluate: the test set is empty");
  for (int64_t start = 0; start < n; start += 1000) {
    auto batch = test.batch(start, std::min<int64_t>(1000, n - start));
    Tensor pred = kern::argmax(model(norm(batch.x)), 1);
    correct += static_cast<int64_t>(kern::sum(kern::eq(pred, batch.y)).item());
  }
  model.train();
  return static_cast<double>(correct) / static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train a CNN on Fashion-MNIST with kern"};
  int epochs = 5, threads = 2;
  int64_t batch_size = 128;
  double lr = 0.05, momentum = 0.9, weight_decay = 5e-4;
  uint64_t seed = 0;
  std::string data_dir, resume, out_dir = "run/fashion_mnist";
  app.add_option("--epochs", epochs, "training epochs")->check(CLI::Range(1, 1000));
  app.add_option("--batch-size", batch_size, "batch size")->check(CLI::Range(1, 60000));
  // CLI::PositiveNumber reports a non-number as "not in range 0 to 1.8e308"; say what is wrong.
  const CLI::Validator positive_number(
      [](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || *end != '\0' || !std::isfinite(v) || v <= 0) return "expected a positive number, got '" + s + "'";
        return {};
      },
      "POSITIVE");
  app.add_option("--lr", lr, "peak learning rate (cosine decay per step)")->check(positive_number);
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 256));
  app.add_option("--data", data_dir, "directory with the four Fashion-MNIST .gz files (default: Debian's)");
  app.add_option("--resume", resume, "checkpoint to resume from");
  app.add_option("--out", out_dir, "output directory (checkpoints)");
  app.add_option("--seed", seed, "random seed");
  bool ddp = false, bf16 = false;
  app.add_flag("--ddp", ddp, "data-parallel over the MPI ranks (run under mpirun)");
  app.add_flag("--bf16", bf16, "bf16 autocast around the forward (oneDNN bf16 convolutions and matmuls)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  examples::Ranks job;
  if (!examples::start_ranks("fashion_mnist", ddp, app.count("--threads") > 0, argc, argv, threads, job)) return 1;
  const int rank = job.rank, ranks = job.world;
  try {
    check_writable_dir(out_dir);
    KERN_CHECK(batch_size % ranks == 0, "--batch-size ", batch_size, " is not divisible by the ", ranks, " ranks");
    kern::set_num_threads(threads);
    kern::manual_seed(seed);
    auto train = kern::data::FashionMNIST::train(data_dir);
    auto test = kern::data::FashionMNIST::test(data_dir);
    const std::string where = data_dir.empty() ? std::string(kern::data::FashionMNIST::kDefaultDir) : data_dir;
    KERN_CHECK(train.size() > 0, "the training set in '", where, "' has 0 images: nothing to train on");
    KERN_CHECK(test.size() > 0, "the test set in '", where, "' has 0 images: nothing to evaluate on");
    const kern::data::Normalize norm({0.286}, {0.353});
    kern::data::DataLoader loader(train, {.batch_size = batch_size, .shuffle = true, .seed = seed});

    auto model = make_model();
    std::shared_ptr<nn::Module> net = model;  // what forward runs: the model, or DDP around it
    kern::optim::SGD opt(model->parameters(), {.lr = lr, .momentum = momentum, .weight_decay = weight_decay});
    // --ddp: this rank's shard of each epoch, in batches of batch_size / ranks
    kern::data::DistributedSampler sampler(train.size(), {.num_replicas = ranks, .rank = rank, .seed = seed});
    net = examples::wrap_ddp(job, model);
    const int64_t steps_per_epoch =
        ddp ? static_cast<int64_t>(sampler.batches(batch_size / ranks).size()) : loader.size();
    kern::optim::CosineAnnealingLR schedule(opt, epochs * steps_per_epoch);

    int64_t step = 0;
    if (!resume.empty()) {
      step = kern::io::load_checkpoint(resume, *model, opt);
      KERN_CHECK(step % steps_per_epoch == 0, "--resume: ", resume, " was saved at step ", step,
                 ", not at an epoch boundary (", steps_per_epoch, " steps per epoch)");
      schedule.set_step(step);
      if (rank == 0) fmt::print("resumed from {} at step {} (epoch {})\n", resume, step, step / steps_per_epoch);
    }
    if (bf16 && rank == 0) fmt::print("bf16 autocast: {}\n", kern::autocast_isa());
    double accuracy = -1.0;
    for (int64_t epoch = step / steps_per_epoch; epoch < epochs; ++epoch) {
      loader.set_epoch(epoch);
      const auto t0 = std::chrono::steady_clock::now();
      double loss_sum = 0.0;
      auto train_step = [&](const Tensor& x, const Tensor& y) {
        Tensor loss;
        {
          kern::AutocastGuard autocast(kern::DType::BFloat16, bf16);  // off unless --bf16
          loss = kern::cross_entropy((*net)(norm(x)), y);
        }
        opt.zero_grad();
        loss.backward();
        opt.step();
        schedule.step();
        ++step;
        loss_sum += loss.item();
        return loss.item();
      };
      if (ddp) {
        sampler.set_epoch(epoch);
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
      if (rank != 0) continue;  // every rank holds the same model; rank 0 reports and saves
      accuracy = evaluate(*model, test, norm);
      fmt::print("epoch {}: train loss {:.4f}{}, test accuracy {:.4f}, {:.1f} s\n", epoch + 1,
                 loss_sum / steps_per_epoch, ddp ? " (rank 0's shard)" : "", accuracy, seconds);
      kern::io::save_checkpoint(out_dir + "/last.safetensors", *model, opt, step,
                                {{"epoch", std::to_string(epoch + 1)}});
    }
    if (rank != 0) return 0;
    if (accuracy < 0) accuracy = evaluate(*model, test, norm);  // resumed after the last epoch
    fmt::print("test accuracy: {:.4f}\n", accuracy);
    return 0;
  } catch (const std::exception& e) {
    return examples::fail("fashion_mnist", job, e);
  }
}
