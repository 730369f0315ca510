// Wide networks evolve as linear models (Lee et al. 2019, "Wide neural networks of any depth
// evolve as linear models under gradient descent"). Claims checked:
//   (1) a wide network and its linearization around the initial parameters (tools::linearize),
//       trained with the same gradient descent, give the same outputs and loss curves;
//   (2) their difference shrinks with width (Theorem 2.1: sup_t ||f_t - f_t^lin|| = O(n^-1/2));
//   (3) the mean output of an ensemble of trained networks follows the infinite-width
//       prediction (limits::GradientDescentMse, analytic NTK of the same architecture).
//
// Setup: the first --train Fashion-MNIST training images (standardized per image, flattened
// to 784), one-hot targets, MSE (kern::mse_loss, the mean over N*10), full-batch SGD with
// learning rate lr for --steps steps on the raw parameters. The network is the finite twin of
//   limits: Dense(W_std 1.5, b_std 0.05) Relu Dense(1.5, 0.05) Relu Dense(1.5, 0.05)
// (--activation erf: Erf in place of Relu, neural-tangents' cookbook network)
// (784 -> w -> w -> 10, NTK parameterization, float32). Outputs are compared on the first
// --test test images. lr is --lr-fraction * (N O) / (2 lambda_max) with lambda_max the top
// eigenvalue of the analytic train NTK, so the stiffest mode shrinks by 1 - lr-fraction per
// step (gradient flow: e^-lr-fraction). GradientDescentMse predicts gradient flow
// (kern::mse_loss = 2 L of predict.hpp: learning_rate 2 lr, t = steps); the discrete steps
// differ from the flow only in the few stiffest modes, and only for the first few steps.
//   (1) width --width (2048): net and linearized net from the same init; the relative test
//       output difference ||f_t - f_t^lin||_F / ||f_t||_F at checkpoints, train losses.
//   (2) the same at every width of --widths; log-log slope of the final difference.
//   (3) --seeds networks of width --ens-width (not linearized): at each checkpoint t, the
//       ensemble mean of the test outputs against the predicted mean mu_t (zero-mean initial
//       output): raw relative error ||mean_s f_t - mu_t|| / ||mu_t||, with the sampling error
//       expected from the predicted covariance (sqrt(O tr cov_t / S) / ||mu_t||: the initial
//       outputs are O(1) random, so few seeds leave a large sampling error); and, per network,
//       the prediction with its own initial outputs,
//       pred_t = f_0(x*) + Theta_* Theta^-1 (I - e^{-eta Theta t / (N O)})(y - f_0(X)),
//       as the RMS over seeds of ||f_t - pred_t|| / ||pred_t - f_0||: the error of the
//       predicted change of output, with the initial-output noise removed (what is left is
//       the finite-width NTK's deviation from the analytic one, and its motion). Also printed:
//       the ensemble mean with each network's prediction as a control variate,
//       ||mean_s (f_t - pred_t)|| / ||mu_t|| (E pred_t = mu_t, so it estimates the same mean).
// Verdict: PASS if (1) the difference stays below 0.1 at width --width, (2) the slope is below
// -0.35, and (3) at every checkpoint t > 0 the per-network error is below 0.15 and the
// ensemble's raw error below 3x its expected sampling error.
//
//   linearized_training [--train 256] [--test 128] [--steps 300] [--width 2048]
//       [--widths 128,256,512,1024,2048] [--seeds 8] [--ens-width 1024] [--lr-fraction 1.0]
//       [--activation relu|erf] [--threads 2] [--out run/linearized_training]
//   -> run/linearized_training/linearized_training.json; plot:
//      python3 tools/plot_linearized_training.py run/linearized_training/linearized_training.json
//          -o docs/figures/linearized_training.png
#include <CLI/CLI.hpp>
#include <kern/kern.hpp>
#include <kern/optim/optim.hpp>
#include <kern/tools/limits/limits.hpp>
#include <kern/tools/limits/predict.hpp>
#include <kern/tools/linearize.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

namespace L = kern::limits;
namespace nn = kern::nn;
using kern::Tensor;

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<double> vec(const Tensor& t) {
  Tensor c = t.detach().to(kern::DType::Float64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

double norm(const std::vector<double>& a) {
  double s = 0;
  for (double v : a) s += v * v;
  return std::sqrt(s);
}

double rel_diff(const std::vector<double>& a, const std::vector<double>& ref) {
  std::vector<double> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - ref[i];
  return norm(d) / norm(ref);
}

double loglog_slope(const std::vector<double>& x, const std::vector<double>& y) {
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += std::log(x[i]) / x.size(), my += std::log(y[i]) / y.size();
  double sxy = 0, sxx = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (std::log(x[i]) - mx) * (std::log(y[i]) - my);
    sxx += (std::log(x[i]) - mx) * (std::log(x[i]) - mx);
  }
  return sxy / sxx;
}

// Top eigenvalue of a symmetric PSD [n, n] matrix by power iteration.
double top_eigenvalue(const std::vector<double>& k, int64_t n) {
  std::vector<double> v(n, 1.0), w(n);
  double lambda = 0;
  for (int it = 0; it < 200; ++it) {
    for (int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (int64_t j = 0; j < n; ++j) s += k[i * n + j] * v[j];
      w[i] = s;
    }
    lambda = norm(w) / norm(v);
    const double nw = norm(w);
    for (int64_t i = 0; i < n; ++i) v[i] = w[i] / nw;
  }
  return lambda;
}

struct Data {
  Tensor xtr, ytr, xte;  // [N, 784] f32, one-hot [N, 10] f32, [M, 784] f32
};

Tensor standardize_flat(const Tensor& x) {
  Tensor x64 = x.to(kern::DType::Float64).reshape({x.size(0), -1});
  Tensor c = x64 - kern::mean(x64, {1}, true);
  return (c / kern::sqrt(kern::mean(c * c, {1}, true))).to(kern::DType::Float32).contiguous();
}

// One training run: the loss at every step, the test outputs at the checkpoints.
struct Trace {
  std::vector<double> loss;
  std::vector<std::vector<double>> test_out;  // per checkpoint, [M * 10]
  double seconds = 0;
};

Trace train(nn::Module& m, const Data& d, double lr, int steps, const std::vector<int>& checkpoints) {
  Trace tr;
  kern::optim::SGD opt(m.parameters(), {.lr = lr});
  size_t next = 0;
  auto t0 = Clock::now();
  for (int step = 0; step <= steps; ++step) {
    if (next < checkpoints.size() && checkpoints[next] == step) {
      kern::NoGradGuard ng;
      tr.test_out.push_back(vec(m(d.xte)));
      ++next;
    }
    if (step == steps) break;
    Tensor loss = kern::mse_loss(m(d.xtr), d.ytr);
    tr.loss.push_back(loss.item());
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  tr.seconds = since(t0);
  return tr;
}

struct WidthResult {
  int64_t width;
  Trace net, lin;
  std::vector<double> rel;  // per checkpoint
};

WidthResult net_vs_lin(const L::Layer& arch, const Data& d, int64_t width, double lr, int steps,
                       const std::vector<int>& cps) {
  kern::Generator g(width);
  auto net = arch.twin(784, width, 10, {0, 0}, &g);
  net->to(kern::DType::Float32);
  auto lin = kern::tools::linearize(net);  // theta0 = the net's initial parameters (copied)
  WidthResult r{width, {}, {}, {}};
  r.lin = train(*lin, d, lr, steps, cps);  // first: the net's parameters are theta0 now
  r.net = train(*net, d, lr, steps, cps);
  for (size_t c = 0; c < cps.size(); ++c)
    r.rel.push_back(cps[c] == 0 ? 0.0 : rel_diff(r.lin.test_out[c], r.net.test_out[c]));
  fmt::print("width {:5d}: rel. test output difference |f - f_lin| / |f| at steps {}: {:.2e}; final train loss "
             "net {:.5f} lin {:.5f}  (net {:.1f} s, lin {:.1f} s)\n",
             width, fmt::join(cps, ","), fmt::join(r.rel, ", "), r.net.loss.back(), r.lin.loss.back(), r.net.seconds,
             r.lin.seconds);
  return r;
}

std::string json_array(const std::vector<double>& v) { return fmt::format("[{}]", fmt::join(v, ", ")); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"linearized_training: wide networks evolve as linear models (Lee et al. 2019)"};
  int64_t n_train = 256, n_test = 128, width = 2048, ens_width = 1024;
  int steps = 300, seeds = 8, threads = 2;
  double lr_fraction = 1.0;
  std::vector<int64_t> widths{128, 256, 512, 1024, 2048};
  std::string out = "run/linearized_training", activation = "relu";
  app.add_option("--activation", activation, "relu, or erf (neural-tangents' cookbook network)")
      ->check(CLI::IsMember({"relu", "erf"}));
  app.add_option("--train", n_train)->check(CLI::Range(10, 60000));
  app.add_option("--test", n_test)->check(CLI::Range(10, 10000));
  app.add_option("--steps", steps)->check(CLI::Range(10, 1000000));
  app.add_option("--width", width)->check(CLI::Range(8, 1 << 16));
  app.add_option("--widths", widths)->delimiter(',');
  app.add_option("--seeds", seeds)->check(CLI::Range(2, 1000));
  app.add_option("--ens-width", ens_width)->check(CLI::Range(8, 1 << 16));
  app.add_option("--lr-fraction", lr_fraction)->check(CLI::Range(0.01, 1.9));
  app.add_option("--threads", threads)->check(CLI::Range(1, 256));
  app.add_option("--out", out);
  CLI11_PARSE(app, argc, argv);
  // the main width is one of the widths of (2)
  if (std::find(widths.begin(), widths.end(), width) == widths.end()) widths.push_back(width);
  std::sort(widths.begin(), widths.end());
  widths.erase(std::unique(widths.begin(), widths.end()), widths.end());
  if (widths.size() < 2 || widths.front() < 8) {
    fmt::print(stderr, "linearized_training: --widths needs two or more widths >= 8 for the slope of (2), got {}\n",
               fmt::join(widths, ","));
    return 2;
  }
  kern::set_num_threads(threads);
  auto t_start = Clock::now();

  auto trs = kern::data::FashionMNIST::train().batch(0, n_train);
  auto tes = kern::data::FashionMNIST::test().batch(0, n_test);
  Data d{standardize_flat(trs.x), kern::one_hot(trs.y, 10).to(kern::DType::Float32), standardize_flat(tes.x)};

  const L::DenseOptions dense{.W_std = 1.5, .b_std = 0.05};
  auto act = [&] { return activation == "erf" ? L::Erf() : L::Relu(); };
  auto arch = L::serial({L::Dense(dense), act(), L::Dense(dense), act(), L::Dense(dense)});

  // analytic kernels (float64)
  Tensor xtr64 = d.xtr.to(kern::DType::Float64), xte64 = d.xte.to(kern::DType::Float64);
  L::Kernels ktt = arch.kernel(xtr64), kst = arch.kernel(xte64, xtr64), kss = arch.kernel(xte64);
  const double lambda_max = top_eigenvalue(vec(ktt.ntk), n_train);
  const double no = static_cast<double>(n_train) * 10.0;
  const double lr = lr_fraction * no / (2.0 * lambda_max);
  fmt::print("analytic NTK: lambda_max {:.2f} (N O = {}): lr = {:.4f}\n", lambda_max, no, lr);

  std::vector<int> cps;
  for (int c : {0, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000})
    if (c < steps) cps.push_back(c);
  cps.push_back(steps);

  // (1) + (2): net vs linearized net, per width (the main width included)
  std::vector<WidthResult> per_width;
  for (int64_t w : widths) per_width.push_back(net_vs_lin(arch, d, w, lr, steps, cps));
  std::vector<double> wx, final_rel, sup_rel;
  const WidthResult* main_run = nullptr;
  for (auto& r : per_width) {
    wx.push_back(static_cast<double>(r.width));
    final_rel.push_back(r.rel.back());
    sup_rel.push_back(*std::max_element(r.rel.begin(), r.rel.end()));
    if (r.width == width) main_run = &r;
  }
  const double slope = loglog_slope(wx, sup_rel);
  const double main_sup = *std::max_element(main_run->rel.begin(), main_run->rel.end());
  const bool pass1 = main_sup < 0.1, pass2 = slope < -0.35;
  fmt::print("(1) width {}: max over checkpoints of |f - f_lin| / |f| = {:.2e} -> {}\n", width, main_sup,
             pass1 ? "PASS" : "FAIL");
  fmt::print("(2) sup_t difference vs width: log-log slope {:.3f} (final-step slope {:.3f}) -> {}\n", slope,
             loglog_slope(wx, final_rel), pass2 ? "PASS" : "FAIL");

  // (3) the ensemble mean against the infinite-width prediction
  L::GradientDescentMse gd(ktt.ntk, d.ytr.to(kern::DType::Float64), {.learning_rate = 2.0 * lr});
  std::vector<std::vector<double>> ens_mean(cps.size());
  std::vector<double> dev2(cps.size(), 0.0), change2(cps.size(), 0.0);  // sum_s |f_t - pred_t|^2, |pred_t - f_0|^2
  std::vector<std::vector<double>> dev_mean(cps.size());                 // mean_s (f_t - pred_t)
  for (int s = 0; s < seeds; ++s) {
    kern::Generator g(100000 + s);
    auto net = arch.twin(784, ens_width, 10, {0, 0}, &g);
    net->to(kern::DType::Float32);
    Tensor f0_train, f0_test;
    {
      kern::NoGradGuard ng;
      f0_train = (*net)(d.xtr).to(kern::DType::Float64);
      f0_test = (*net)(d.xte).to(kern::DType::Float64);
    }
    // this network's linear prediction with the analytic NTK: f_0(x*) + the predicted change
    // for the residual targets y - f_0(X)
    L::GradientDescentMse gd_s(ktt.ntk, d.ytr.to(kern::DType::Float64) - f0_train, {.learning_rate = 2.0 * lr});
    Trace tr = train(*net, d, lr, steps, cps);
    std::vector<double> per_cp;
    for (size_t c = 0; c < cps.size(); ++c) {
      const auto change = vec(gd_s.mean(kst.ntk, cps[c]));
      const auto f0 = vec(f0_test);
      if (s == 0) ens_mean[c].assign(change.size(), 0.0), dev_mean[c].assign(change.size(), 0.0);
      double e2 = 0, c2 = 0;
      for (size_t i = 0; i < change.size(); ++i) {
        ens_mean[c][i] += tr.test_out[c][i] / seeds;
        const double dev = tr.test_out[c][i] - (f0[i] + change[i]);
        e2 += dev * dev;
        dev_mean[c][i] += dev / seeds;
        c2 += change[i] * change[i];
      }
      dev2[c] += e2, change2[c] += c2;
      if (cps[c] > 0) per_cp.push_back(std::sqrt(e2 / c2));
    }
    fmt::print("ensemble seed {} (width {}): final train loss {:.5f}; |f_t - prediction| / |predicted change| at "
               "t > 0: {:.3f} ({:.1f} s)\n",
               s, ens_width, tr.loss.back(), fmt::join(per_cp, ", "), tr.seconds);
  }
  std::vector<double> raw_err, expected_err, corr_err, cv_err, pred_times;
  std::vector<std::vector<double>> ens_sd(cps.size());  // predicted std of each test output's ensemble mean
  // output (test image 0, its class), (test image 1, its class), (test image 2, class 0)
  const int64_t coords[3] = {0 * 10 + static_cast<int64_t>(tes.y.select(0, 0).item()),
                             1 * 10 + static_cast<int64_t>(tes.y.select(0, 1).item()), 2 * 10 + 0};
  std::vector<std::vector<double>> cv_pts(3);  // the figure's outputs: mu_t + mean_s (f_t - pred_t)
  bool pass3 = true;
  for (size_t c = 0; c < cps.size(); ++c) {
    auto m = vec(gd.mean(kst.ntk, cps[c]));
    for (int k = 0; k < 3; ++k) cv_pts[k].push_back(m[coords[k]] + dev_mean[c][coords[k]]);
    auto cv = vec(gd.cov(kst.ntk, ktt.nngp, kst.nngp, kss.nngp, cps[c]));  // [M, M], every output
    double tr_cov = 0;
    for (int64_t i = 0; i < n_test; ++i) {
      tr_cov += cv[i * n_test + i];
      for (int o = 0; o < 10; ++o) ens_sd[c].push_back(std::sqrt(std::max(cv[i * n_test + i], 0.0) / seeds));
    }
    if (cps[c] == 0) continue;
    const double nm = norm(m);
    raw_err.push_back(rel_diff(ens_mean[c], m));
    expected_err.push_back(std::sqrt(10.0 * std::max(tr_cov, 0.0) / seeds) / nm);
    corr_err.push_back(std::sqrt(dev2[c] / change2[c]));
    cv_err.push_back(norm(dev_mean[c]) / nm);  // control variate: mu_t + mean_s (f_t - pred_t) vs mu_t
    pred_times.push_back(cps[c]);
    const bool ok = corr_err.back() < 0.15 && raw_err.back() < 3.0 * expected_err.back();
    pass3 = pass3 && ok;
    fmt::print("(3) t = {:5d}: |mean_s f_t - mu_t| / |mu_t| = {:.3f} (sampling error expected from the NTK-GP "
               "covariance: {:.3f}); with each net's prediction as control variate {:.3f}; per-network "
               "|f_t - prediction| / |predicted change| = {:.4f} -> {}\n",
               cps[c], raw_err.back(), expected_err.back(), cv_err.back(), corr_err.back(), ok ? "ok" : "FAIL");
  }

  // the predicted mean on a dense time grid for three test outputs (the figure's curves)
  std::vector<double> grid;
  for (int i = 0; i <= 60; ++i) grid.push_back(std::pow(10.0, std::log10(std::max(steps, 2)) * i / 60.0));
  std::vector<std::vector<double>> curve(3), ens_pts(3), ens_err(3);
  for (double t : grid) {
    auto m = vec(gd.mean(kst.ntk, t));
    for (int k = 0; k < 3; ++k) curve[k].push_back(m[coords[k]]);
  }
  for (size_t c = 0; c < cps.size(); ++c)
    for (int k = 0; k < 3; ++k) ens_pts[k].push_back(ens_mean[c][coords[k]]), ens_err[k].push_back(ens_sd[c][coords[k]]);

  const bool pass = pass1 && pass2 && pass3;
  std::filesystem::create_directories(out);
  const std::string path = out + "/linearized_training.json";
  std::ofstream f(path);
  f << "{\"activation\": \"" << activation << "\", \"train\": " << n_train << ", \"test\": " << n_test << ", \"lr\": " << lr << ", \"width\": " << width
    << ", \"ens_width\": " << ens_width << ", \"seeds\": " << seeds << ", \"slope\": " << slope
    << ", \"checkpoints\": " << fmt::format("[{}]", fmt::join(cps, ", "))
    << ", \"loss_net\": " << json_array(main_run->net.loss) << ", \"loss_lin\": " << json_array(main_run->lin.loss)
    << ", \"widths\": " << json_array(wx) << ", \"sup_rel\": " << json_array(sup_rel)
    << ", \"final_rel\": " << json_array(final_rel) << ", \"rel_by_width\": [";
  for (size_t i = 0; i < per_width.size(); ++i) f << (i ? ", " : "") << json_array(per_width[i].rel);
  f << "], \"pred_times\": " << json_array(pred_times) << ", \"raw_err\": " << json_array(raw_err)
    << ", \"expected_err\": " << json_array(expected_err) << ", \"corr_err\": " << json_array(corr_err)
    << ", \"cv_err\": " << json_array(cv_err)
    << ", \"grid\": " << json_array(grid) << ", \"coords\": [" << coords[0] << ", " << coords[1] << ", "
    << coords[2] << "], \"curves\": [";
  for (int k = 0; k < 3; ++k) f << (k ? ", " : "") << json_array(curve[k]);
  f << "], \"ens_points\": [";
  for (int k = 0; k < 3; ++k) f << (k ? ", " : "") << json_array(ens_pts[k]);
  f << "], \"ens_sd\": [";
  for (int k = 0; k < 3; ++k) f << (k ? ", " : "") << json_array(ens_err[k]);
  f << "], \"cv_points\": [";
  for (int k = 0; k < 3; ++k) f << (k ? ", " : "") << json_array(cv_pts[k]);
  f << "], \"pass\": " << (pass ? "true" : "false") << "}\n";
  fmt::print("verdict: {} ((1) {}, (2) slope {:.3f}, (3) {}); {:.0f} s; wrote {}\n", pass ? "PASS" : "FAIL",
             pass1 ? "PASS" : "FAIL", slope, pass3 ? "PASS" : "FAIL", since(t_start), path);
  return pass ? 0 : 3;
}
