#pragma once
// kern::limits predictions (neural-tangents' nt.predict): what an infinitely wide network
// trained on (x_train, y_train) outputs, from its kernels alone.
//
// Gradient descent / flow on the MSE loss L = 1/(2 N O) sum (f(x_n)_o - y_no)^2 (N training
// points, O outputs; nt's normalization by y_train.size) with learning rate eta, in the
// infinite-width limit (Jacot et al. 2018, Lee et al. 2019), from a zero-mean initial output:
//   mean_train(t) = (I - e^{-eta Theta t / (N O)}) y
//   mean(x*, t)   = Theta_* Theta^{-1} (I - e^{-eta Theta t / (N O)}) y
//   t = infinity: Theta_* Theta^{-1} y (NTK kernel regression).
// The covariance over initializations (the "NTK-GP", Lee et al. 2019 eq. 16), with NNGP
// kernels K (train-train), K_* (test-train), K_** (test-test) and T = Theta^{-1}(I - e^{...}):
//   cov(t) = K_** + Theta_* T K T Theta_*^T - (Theta_* T K_*^T + K_* T Theta_*^T).
// Theta = V diag(l) V^T (Eigen's SelfAdjointEigenSolver); (1 - e^{-c l t}) / l is evaluated
// with expm1, and equals c t for l -> 0; eigenvalues <= 1e-12 * max are dropped at t = inf
// (a pseudo-inverse). diag_reg adds diag_reg * (mean of Theta's diagonal) to Theta's diagonal
// (nt's diag_reg, relative by default; absolute with diag_reg_absolute).
//
// Plain kernel regression (NNGP/NTK): mean = K_* K^{-1} y, cov = K_** - K_* K^{-1} K_*^T
// (the mean by Cholesky with PredictOptions::cholesky).
// Kernels are [N, N], [M, N], [M, M]; y [N, O]; results [M, O] (means) and [M, M] (cov).
// float64 throughout (inputs are converted).
#include <kern/tensor.hpp>

#include <limits>
#include <vector>

namespace kern::limits {

struct PredictOptions {
  double learning_rate = 1.0;
  double diag_reg = 0.0;
  bool diag_reg_absolute = false;
  /// kernel_regression only: solve (K + reg) alpha = y by a Cholesky factorization (N^3 / 3
  /// flops, blocked) instead of the eigendecomposition's pseudo-inverse (about 10x the flops,
  /// much of it unblocked): what makes N = 10,000 practical. K + reg must be positive
  /// definite (use diag_reg), else kern::Error.
  bool cholesky = false;
};

inline constexpr double kInfinity = std::numeric_limits<double>::infinity();

class GradientDescentMse {
 public:
  GradientDescentMse(const Tensor& ntk_train_train, const Tensor& y_train,
                     const PredictOptions& options = {});
  /// Mean output on the training points at time t ([N, O]).
  Tensor mean_train(double t) const;
  /// Mean output on test points ([M, O]) given Theta(x_test, x_train) [M, N].
  Tensor mean(const Tensor& ntk_test_train, double t) const;
  /// Covariance over initializations of the test outputs (per output; [M, M]).
  Tensor cov(const Tensor& ntk_test_train, const Tensor& nngp_train_train,
             const Tensor& nngp_test_train, const Tensor& nngp_test_test, double t) const;

 private:
  std::vector<double> factor(double t) const;  // (1 - e^{-c l t}) / l per eigenvalue
  int64_t n_ = 0, o_ = 0;
  std::vector<double> evals_, evecs_;  // V column-major [N, N]
  std::vector<double> y_;              // [N, O]
  double rate_ = 1.0;                  // eta / (N O)
};

/// Kernel regression mean K_* (K + reg)^{-1} y: [M, O].
Tensor kernel_regression(const Tensor& k_train_train, const Tensor& y_train,
                         const Tensor& k_test_train, const PredictOptions& options = {});
/// Its posterior covariance K_** - K_* (K + reg)^{-1} K_*^T: [M, M].
Tensor kernel_regression_cov(const Tensor& k_train_train, const Tensor& k_test_train,
                             const Tensor& k_test_test, const PredictOptions& options = {});

}  // namespace kern::limits
