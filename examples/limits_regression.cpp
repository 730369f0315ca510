// Infinite-width regression on Fashion-MNIST: test accuracy of NNGP and NTK kernel regression
// (kern::limits) against the training-set size, for an MLP kernel and a CNN-GAP kernel.
//
//   MLP:     Dense(1.5, 0.05) Relu Dense(1.5, 0.05) Relu Dense(1.5, 0.05) on the flattened
//            28x28 images
//   CNN-GAP: Conv3x3 SAME(1.5, 0.05) Relu Conv3x3 SAME(1.5, 0.05) Relu GlobalAvgPool
//            Dense(1.5, 0.05) on the images average-pooled 4x4 to 7x7 (a 28x28 CNTK costs
//            ~0.1 s of CPU per pair of images: the full 784x784 pixel covariances)
// Images are standardized per image (zero mean, unit variance over pixels); targets are
// one-hot minus 0.1 (zero mean over classes); the training sets are the first n images of
// the training set (prefixes, so one kernel serves every n), the test set the first
// --test images of the test set; kernel regression with diag_reg 1e-4 (relative to the mean
// diagonal), prediction = argmax. float64 throughout.
//
//   limits_regression [--mlp-sizes 100,300,1000,3000] [--cnn-sizes 100,200,400] [--test 1000]
//                     [--cnn-test 500] [--threads 2]
#include <CLI/CLI.hpp>
#include <kern/kern.hpp>
#include <kern/tools/limits/limits.hpp>
#include <kern/tools/limits/predict.hpp>

#include <chrono>

namespace L = kern::limits;
using kern::Tensor;

namespace {

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

void run(const std::string& name, const L::Layer& net, const Tensor& xtr, const Tensor& ytr,
         const Tensor& xte, const Tensor& yte, const std::vector<int64_t>& sizes) {
  const int64_t n = sizes.back();
  auto t0 = std::chrono::steady_clock::now();
  Tensor xn = xtr.narrow(0, 0, n);
  L::Kernels ktt = net.kernel(xn, {}, {.batch_size = 128});
  L::Kernels kst = net.kernel(xte, xn, {.batch_size = 128});
  fmt::print("{}: kernels [{}x{}] and [{}x{}] in {:.1f} s\n", name, n, n, xte.size(0), n,
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  for (int64_t m : sizes) {
    Tensor y = targets(ytr.narrow(0, 0, m));
    double acc[2];
    for (int k = 0; k < 2; ++k) {
      const Tensor& tt = k == 0 ? ktt.nngp : ktt.ntk;
      const Tensor& st = k == 0 ? kst.nngp : kst.ntk;
      Tensor pred = L::kernel_regression(tt.narrow(0, 0, m).narrow(1, 0, m).contiguous(), y,
                                         st.narrow(1, 0, m).contiguous(), {.diag_reg = 1e-4});
      acc[k] = accuracy(pred, yte);
    }
    fmt::print("| {} | {} | {:.4f} | {:.4f} |\n", name, m, acc[0], acc[1]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"limits_regression: NNGP/NTK kernel regression on Fashion-MNIST"};
  std::vector<int64_t> mlp_sizes{100, 300, 1000, 3000}, cnn_sizes{100, 200, 400};
  int64_t n_test = 1000, n_cnn_test = 500;
  int threads = 2;
  app.add_option("--mlp-sizes", mlp_sizes)->delimiter(',');
  app.add_option("--cnn-sizes", cnn_sizes)->delimiter(',');
  app.add_option("--test", n_test)->check(CLI::Range(10, 10000));
  app.add_option("--cnn-test", n_cnn_test)->check(CLI::Range(10, 10000));
  app.add_option("--threads", threads)->check(CLI::Range(1, 256));
  CLI11_PARSE(app, argc, argv);
  kern::set_num_threads(threads);
  std::sort(mlp_sizes.begin(), mlp_sizes.end());
  std::sort(cnn_sizes.begin(), cnn_sizes.end());

  auto train = kern::data::FashionMNIST::train();
  auto test = kern::data::FashionMNIST::test();
  const int64_t n_max = std::max(mlp_sizes.back(), cnn_sizes.back());
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
  run("MLP", mlp, flat(xtr), tr.y, flat(xte.narrow(0, 0, n_test)), te.y.narrow(0, 0, n_test), mlp_sizes);
  auto pool = [](const Tensor& x) {
    return kern::avg_pool2d(x, kern::Pool2dParams{.kernel = {4, 4}, .stride = {4, 4}});
  };
  run("CNN-GAP (7x7)", cnn, pool(xtr), tr.y, pool(xte.narrow(0, 0, n_cnn_test)),
      te.y.narrow(0, 0, n_cnn_test), cnn_sizes);
  return 0;
}
