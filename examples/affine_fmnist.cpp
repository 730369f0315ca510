// Affine Fashion-MNIST (issue 17; affNIST's recipe): train on images centred in a 40x40 canvas,
// test on the clean test set and on the test set under random affine maps (rotation within
// +-20 degrees, shear within +-0.2, scale 0.8-1.2 per axis, translation up to +-6 pixels, the
// room a 28x28 object has in the canvas at scale 1), drawn by data::RandomAffine from a fixed
// seed per test batch, so the affine test set is reproducible without files.
//
//   build/examples/affine_fmnist --model affconv_gl2 --epochs 1 --subsample 5000
//   build/examples/affine_fmnist --model cnn --bench      # forward + backward time, batch 32
//
// Models: the four of the README table, parameter-matched (within 1.2x of each other; every run
// prints all four counts): affconv_gl2, affconv_sl2 (zoo defaults), p4cnn (the zoo's P4CNN with
// 14 channels instead of 10 and a 2x2 max pool after layer 1: P4CNNOptions, not the zoo
// default) and cnn (a plain CNN of width 16); any other zoo name is built with its defaults.
// --out FILE appends one JSON line per epoch (model, parameters, seconds, accuracies) for
// tools/plot_affine_fmnist.py.
#include <CLI/CLI.hpp>
#include <kern/kern.hpp>
#include <kern/models/affine_conv.hpp>
#include <kern/models/models.hpp>
#include <kern/optim/optim.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <cmath>
#include <numbers>
#include <vector>

namespace nn = kern::nn;
using kern::Tensor;

namespace {

// [N, 1, 28, 28] raw pixels in [0, 1] -> [N, 1, 40, 40] centred on a zero canvas.
Tensor canvas(const Tensor& x) { return kern::pad(x, {6, 6, 6, 6}); }

kern::data::RandomAffine affine_test_transform() {
  const double shear = std::atan(0.2) * 180 / std::numbers::pi;  // shear factor 0.2, in degrees
  return kern::data::RandomAffine({.degrees = {-20, 20}, .translate = {6.0 / 40, 6.0 / 40}, .scale = {0.8, 1.2},
                                   .scale_per_axis = true, .shear_x = {-shear, shear}, .shear_y = {-shear, shear}});
}

std::shared_ptr<nn::Module> plain_cnn(int64_t width) {
  return std::make_shared<nn::Sequential>(
      nn::Conv2d(nn::Conv2dOptions(1, width, 5).padding(2)), nn::ReLU(), nn::MaxPool2d(2),
      nn::Conv2d(nn::Conv2dOptions(width, 2 * width, 5).padding(2)), nn::ReLU(), nn::MaxPool2d(2),
      nn::Conv2d(nn::Conv2dOptions(2 * width, 2 * width, 5).padding(2)), nn::ReLU(),
      nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(2 * width, 10));
}

// The p4cnn of the table: 14 channels (7 layers of 3x3, 216 c^2 weights ~ affconv's 41k), a 2x2
// max pool after layer 1 (so its later layers run on 20x20, as the affine nets' blocks do).
std::shared_ptr<nn::Module> p4cnn_matched() {
  return std::make_shared<kern::models::P4CNN>(
      kern::models::P4CNNOptions{.group = "p4", .in_chans = 1, .num_classes = 10, .channels = 14, .max_pool_after = 1});
}

std::shared_ptr<nn::Module> build(const std::string& name, int64_t cnn_width) {
  if (name == "cnn") return plain_cnn(cnn_width);
  if (name == "p4cnn") return p4cnn_matched();
  return kern::models::create_model(name, {.num_classes = 10, .in_chans = 1});
}

int64_t count_params(nn::Module& m) {
  int64_t n = 0;
  for (auto& p : m.parameters()) n += p.numel();
  return n;
}

double accuracy(nn::Module& model, const kern::data::TensorDataset& test, const kern::data::Normalize& norm,
                bool affine, uint64_t seed) {
  kern::NoGradGuard ng;
  model.eval();
  const auto aff = affine_test_transform();
  int64_t correct = 0;
  const int64_t n = test.size(), bs = 250;
  for (int64_t start = 0; start < n; start += bs) {
    auto b = test.batch(start, std::min(bs, n - start));
    Tensor x = canvas(b.x);
    if (affine) {
      kern::Generator gen(seed * 1000003 + static_cast<uint64_t>(start / bs));  // one seed per batch
      x = aff(x, gen);
    }
    const Tensor pred = kern::argmax(model(norm(x)), 1);
    correct += static_cast<int64_t>(kern::sum(kern::eq(pred, b.y)).item());
  }
  model.train();
  return static_cast<double>(correct) / static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train on centred Fashion-MNIST (40x40), test clean and under random affine maps"};
  std::string model_name = "affconv_gl2", data_dir, out_path;
  int epochs = 1, threads = 2;
  int64_t subsample = 60000, test_subsample = 10000, batch_size = 32, cnn_width = 16;
  double lr = 1e-3;
  uint64_t seed = 0, test_seed = 17;
  bool bench = false;
  app.add_option("--model", model_name, "zoo model name or 'cnn'");
  app.add_option("--epochs", epochs, "epochs")->check(CLI::Range(1, 1000));
  app.add_option("--subsample", subsample, "training images (the first N)")->check(CLI::Range(1, 60000));
  app.add_option("--test-subsample", test_subsample, "test images (the first N)")->check(CLI::Range(1, 10000));
  app.add_option("--batch-size", batch_size, "batch size")->check(CLI::Range(1, 60000));
  app.add_option("--cnn-width", cnn_width, "first-layer channels of 'cnn'")->check(CLI::Range(1, 1024));
  app.add_option("--lr", lr, "AdamW learning rate")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 256));
  app.add_option("--data", data_dir, "Fashion-MNIST directory (default: Debian's)");
  app.add_option("--seed", seed, "seed (init, data order, training samples)");
  app.add_option("--test-seed", test_seed, "seed of the affine test maps");
  app.add_option("--out", out_path, "append one JSON line per epoch to this file");
  app.add_flag("--bench", bench, "time forward + backward at --batch-size on random 40x40 input and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    kern::set_num_threads(threads);
    kern::manual_seed(seed);
    {  // the parameter-matched four
      int64_t lo = INT64_MAX, hi = 0;
      std::string counts;
      for (const char* n : {"affconv_gl2", "affconv_sl2", "p4cnn", "cnn"}) {
        const int64_t c = count_params(*build(n, cnn_width));
        lo = std::min(lo, c), hi = std::max(hi, c);
        counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", n, c);
      }
      fmt::print("parameters: {} (max / min {:.3f})\n", counts, double(hi) / double(lo));
    }
    kern::manual_seed(seed);
    auto model = build(model_name, cnn_width);
    const int64_t params = count_params(*model);
    if (bench) {
      kern::Generator gen(seed);
      const Tensor x = kern::randn({batch_size, 1, 40, 40}, kern::DType::Float32, &gen);
      const Tensor y = kern::randint(0, 10, {batch_size}, &gen);
      std::vector<double> ms;
      for (int i = 0; i < 6; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        Tensor loss = kern::cross_entropy((*model)(x), y);
        loss.backward();
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      ms.erase(ms.begin());  // warm-up
      std::sort(ms.begin(), ms.end());
      fmt::print("{}: {} parameters; forward+backward at batch {} on 40x40: median {:.1f} ms (min {:.1f}, {} runs, "
                 "{} threads)\n",
                 model_name, params, batch_size, ms[ms.size() / 2], ms[0], ms.size(), threads);
      return 0;
    }
    auto train_full = kern::data::FashionMNIST::train(data_dir);
    auto test_full = kern::data::FashionMNIST::test(data_dir);
    auto tb = train_full.batch(0, subsample);
    kern::data::TensorDataset train(tb.x, tb.y);
    auto sb = test_full.batch(0, test_subsample);
    kern::data::TensorDataset test(sb.x, sb.y);
    kern::data::Normalize norm({0.2860}, {0.3530});
    kern::data::DataLoader loader(train, {.batch_size = batch_size, .shuffle = true, .seed = seed});
    kern::optim::AdamW opt(model->parameters(), {.lr = lr, .weight_decay = 0.01});
    fmt::print("{}: {} parameters; {} training images, {} epochs of batch {}\n", model_name, params, subsample,
               epochs, batch_size);
    for (int epoch = 0; epoch < epochs; ++epoch) {
      const auto t0 = std::chrono::steady_clock::now();
      int64_t step = 0;
      double loss_sum = 0;
      for (auto& batch : loader) {
        Tensor loss = kern::cross_entropy((*model)(norm(canvas(batch.x))), batch.y);
        opt.zero_grad();
        loss.backward();
        opt.step();
        loss_sum += loss.item();
        if (++step % 25 == 0) {  // progress: long runs on a shared machine
          fmt::print("  step {}: {:.1f} s, mean loss {:.4f}\n", step,
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), loss_sum / 25);
          std::fflush(stdout);
          loss_sum = 0;
        }
      }
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double clean = accuracy(*model, test, norm, false, test_seed);
      const double aff = accuracy(*model, test, norm, true, test_seed);
      fmt::print("epoch {}: {:.1f} s; clean test accuracy {:.4f}, affine test accuracy {:.4f}\n", epoch, secs, clean,
                 aff);
      std::fflush(stdout);
      if (!out_path.empty()) {
        std::ofstream f(out_path, std::ios::app);
        f << fmt::format(
            "{{\"model\": \"{}\", \"params\": {}, \"epoch\": {}, \"epoch_s\": {:.2f}, \"clean\": {:.4f}, "
            "\"affine\": {:.4f}, \"train_images\": {}, \"test_images\": {}, \"batch\": {}, \"threads\": {}}}\n",
            model_name, params, epoch + 1, secs, clean, aff, subsample, test_subsample, batch_size, threads);
      }
    }
  } catch (const kern::Error& e) {
    fmt::print(stderr, "affine_fmnist: {}\n", e.what());
    return 1;
  }
  return 0;
}
