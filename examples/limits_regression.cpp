// Infinite-width regression on Fashion-MNIST: test accuracy of NNGP and NTK kernel regression
// (kern::limits) against the training-set size, for an MLP kernel and a CNN-GAP kernel.
//
//   MLP:     Dense(1.5, 0.05) Relu Dense(1.5, 0.05) Relu Dense(1.5, 0.05) on the flattened
//            28x28 images
//   CNN-GAP: Conv3x3 SAME(1.5, 0.05) Relu Conv3x3 SAME(1.5, 0.05) Relu GlobalAvgPool
//            Dense(1.5, 0.05) on the images average-pooled 4x4 to 7x7 (a 28x28 CNTK costs
//            ~15 ms of CPU per pair of images: the full 784x784 pixel covariances)
// Images are standardized per image (zero mean, unit variance over pixels); targets are
// one-hot minus 0.1 (zero mean over classes); the training sets are the first n images of
// the training set (prefixes, so one kernel serves every n), the test set the first
// --test images of the test set; kernel regression with diag_reg 1e-4 (relative to the mean
// diagonal), solved by Cholesky (PredictOptions::cholesky; the eigendecomposition's cost
// made n = 10,000 impractical), prediction = argmax. float64 throughout. Each kernel's time
// and its cost per pair of images are printed, and each solve's time.
//
//   limits_regression [--mlp-sizes 100,300,1000,3000] [--cnn-sizes 100,200,400] [--test 1000]
//                     [--cnn-test 500] [--threads 2] [--only mlp|cnn] [--mlp-batch 128]
//                     [--cnn-batch 32]
//                     [--json run/limits_regression.json]
//   plot: python3 tools/plot_limits_regression.py run/limits_regression.json
//             -o docs/figures/limits_regression.png
#include <CLI/CLI.hpp>
#include <kern/kern.hpp>
#include <kern/tools/limits/limits.hpp>
#include <kern/tools/limits/predict.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>

namespace L = kern::limits;
using kern::Tensor;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Tensor standardize(const Tensor& x) {  // per image over its pixels
  Tensor x64 = x.to(kern::DType::Float64);
  Tensor c = x64 - kern::mean(x64, {1, 2, 3}, true);
  return c / kern::sqrt(kern::mean(c * c, {1, 2, 3}, true));
}

Tensor targets(const Tensor& labels) {  // one-hot - 0.1, [N, 10]
  return kern::one_hot(labels, 10).to(kern::DType::Float64) - 0.1;
}

double accuracy(const Tensor& pred, const Tensor& labels) {
  Tensor am = kern::argmax(pred, 1).contiguous();
  Tensor lb = labels.contiguous();
  const int64_t* a = am.data_ptr<int64_t>();
  const int64_t* b = lb.data_ptr<int64_t>();
  int64_t ok = 0;
  for (int64_t i = 0; i < labels.size(0); ++i) ok += a[i] == b[i];
  return static_cast<double>(ok) / labels.size(0);
}

struct Row {
  std::string kernel;
  int64_t n;
  double nngp, ntk, seconds;
};

void run(const std::string& name, const L::Layer& net, const Tensor& xtr, const Tensor& ytr,
         const Tensor& xte, const Tensor& yte, const std::vector<int64_t>& sizes, int64_t batch,
         std::vector<Row>& rows) {
  const int64_t n = sizes.back(), m_test = xte.size(0);
  auto t0 = std::chrono::steady_clock::now();
  Tensor xn = xtr.narrow(0, 0, n);
  L::Kernels ktt = net.kernel(xn, {}, {.batch_size = batch});
  const double t_tt = seconds_since(t0);
  L::Kernels kst = net.kernel(xte, xn, {.batch_size = batch});
  const double t_st = seconds_since(t0) - t_tt;
  // K(x, x) computes the pairs on and below the diagonal only
  const double pairs = static_cast<double>(n) * (n + 1) / 2 + static_cast<double>(m_test) * n;
  fmt::print("{}: kernels [{}x{}] in {:.1f} s and [{}x{}] in {:.1f} s ({:.3g} ms per pair of images)\n", name, n, n,
             t_tt, m_test, n, t_st, 1e3 * (t_tt + t_st) / pairs);
  for (int64_t m : sizes) {
    Tensor y = targets(ytr.narrow(0, 0, m));
    double acc[2];
    auto ts = std::chrono::steady_clock::now();
    for (int k = 0; k < 2; ++k) {
      const Tensor& tt = k == 0 ? ktt.nngp : ktt.ntk;
      const Tensor& st = k == 0 ? kst.nngp : kst.ntk;
      Tensor pred = L::kernel_regression(tt.narrow(0, 0, m).narrow(1, 0, m).contiguous(), y,
                                         st.narrow(1, 0, m).contiguous(), {.diag_reg = 1e-4, .cholesky = true});
      acc[k] = accuracy(pred, yte);
    }
    const double solve = seconds_since(ts);
    rows.push_back({name, m, acc[0], acc[1], solve});
    fmt::print("| {} | {} | {:.4f} | {:.4f} |  (two solves {:.1f} s)\n", name, m, acc[0], acc[1], solve);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"limits_regression: NNGP/NTK kernel regression on Fashion-MNIST"};
  std::vector<int64_t> mlp_sizes{100, 300, 1000, 3000}, cnn_sizes{100, 200, 400};
  int64_t n_test = 1000, n_cnn_test = 500;
  int threads = 2;
  // images per block side: the CNN's blocks carry 2401 covariance entries per pair, so 32x32
  // pairs (40 MB) stay near the caches while every layer sweeps them (128: 630 MB, 1.7x slower)
  int64_t mlp_batch = 128, cnn_batch = 32;
  std::string json = "run/limits_regression.json", only;
  app.add_option("--mlp-sizes", mlp_sizes)->delimiter(',');
  app.add_option("--cnn-sizes", cnn_sizes)->delimiter(',');
  app.add_option("--test", n_test)->check(CLI::Range(10, 10000));
  app.add_option("--cnn-test", n_cnn_test)->check(CLI::Range(10, 10000));
  app.add_option("--threads", threads)->check(CLI::Range(1, 256));
  app.add_option("--mlp-batch", mlp_batch, "images per kernel block side (MLP)")->check(CLI::Range(1, 100000));
  app.add_option("--cnn-batch", cnn_batch, "images per kernel block side (CNN-GAP)")->check(CLI::Range(1, 100000));
  app.add_option("--json", json, "results (for tools/plot_limits_regression.py)");
  app.add_option("--only", only, "run one kernel: mlp or cnn")->check(CLI::IsMember({"mlp", "cnn"}));
  CLI11_PARSE(app, argc, argv);
  kern::set_num_threads(threads);
  if (only == "cnn") mlp_sizes.clear();
  if (only == "mlp") cnn_sizes.clear();
  std::sort(mlp_sizes.begin(), mlp_sizes.end());
  std::sort(cnn_sizes.begin(), cnn_sizes.end());

  auto train = kern::data::FashionMNIST::train();
  auto test = kern::data::FashionMNIST::test();
  const int64_t n_max = std::max(mlp_sizes.empty() ? 0 : mlp_sizes.back(), cnn_sizes.empty() ? 0 : cnn_sizes.back());
  auto tr = train.batch(0, n_max);
  auto te = test.batch(0, std::max(n_test, n_cnn_test));
  Tensor xtr = standardize(tr.x), xte = standardize(te.x);

  const L::DenseOptions d{.W_std = 1.5, .b_std = 0.05};
  const L::ConvOptions c{.W_std = 1.5, .b_std = 0.05};
  // the MLP sees the flattened images [N, 784] (the same kernel as Flatten() on [N, 1, 28, 28],
  // without carrying 784 pixel variances per pair into the Flatten)
  auto mlp = L::serial({L::Dense(d), L::Relu(), L::Dense(d), L::Relu(), L::Dense(d)});
  auto cnn = L::serial({L::Conv(3, c), L::Relu(), L::Conv(3, c), L::Relu(), L::GlobalAvgPool(),
                        L::Dense(d)});
  fmt::print("| kernel | train size | NNGP accuracy | NTK accuracy |\n|---|---|---|---|\n");
  auto flat = [](const Tensor& x) { return x.reshape({x.size(0), -1}).contiguous(); };
  std::vector<Row> rows;
  if (!mlp_sizes.empty())
    run("MLP", mlp, flat(xtr), tr.y, flat(xte.narrow(0, 0, n_test)), te.y.narrow(0, 0, n_test), mlp_sizes,
        mlp_batch, rows);
  auto pool = [](const Tensor& x) {
    return kern::avg_pool2d(x, kern::Pool2dParams{.kernel = {4, 4}, .stride = {4, 4}});
  };
  if (!cnn_sizes.empty())
    run("CNN-GAP (7x7)", cnn, pool(xtr), tr.y, pool(xte.narrow(0, 0, n_cnn_test)), te.y.narrow(0, 0, n_cnn_test),
        cnn_sizes, cnn_batch, rows);
  if (!json.empty()) {
    const auto dir = std::filesystem::path(json).parent_path();
    if (!dir.empty()) std::filesystem::create_directories(dir);
    std::ofstream f(json);
    f << "{\"test\": " << n_test << ", \"cnn_test\": " << n_cnn_test << ", \"rows\": [";
    for (size_t i = 0; i < rows.size(); ++i)
      f << (i ? ", " : "") << fmt::format("{{\"kernel\": \"{}\", \"n\": {}, \"nngp\": {}, \"ntk\": {}, \"seconds\": {}}}",
                                          rows[i].kernel, rows[i].n, rows[i].nngp, rows[i].ntk, rows[i].seconds);
    f << "]}\n";
    fmt::print("wrote {}\n", json);
  }
  return 0;
}
