// kern::limits predictions: NTK gradient flow (mean and covariance at time t) and kernel
// regression, through one eigendecomposition of the train-train kernel (predict.hpp).
#include <kern/autograd.hpp>
#include <kern/error.hpp>
#include <kern/tools/limits/predict.hpp>

#include <Eigen/Dense>

#include <cmath>

namespace kern::limits {
namespace {

using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Mat to_mat(const Tensor& t, const char* what, int64_t rows, int64_t cols) {
  KERN_CHECK(t.defined() && t.dim() == 2, "limits::predict: ", what, " must be a 2-D kernel, got ",
             t.defined() ? fmt::format("{}", t.shape()) : std::string("undefined"));
  KERN_CHECK((rows < 0 || t.size(0) == rows) && (cols < 0 || t.size(1) == cols),
             "limits::predict: ", what, " has shape ", t.shape(), ", expected [",
             rows < 0 ? std::string("*") : std::to_string(rows), ", ",
             cols < 0 ? std::string("*") : std::to_string(cols), "]");
  NoGradGuard guard;
  Tensor c = t.to(DType::Float64).contiguous();
  return Eigen::Map<const Mat>(c.data_ptr<double>(), t.size(0), t.size(1));
}

Tensor to_tensor(const Mat& m) {
  std::vector<double> v(m.data(), m.data() + m.size());
  return from_vector(v, Shape{m.rows(), m.cols()});
}

void regularize(Mat& k, const PredictOptions& o) {
  if (o.diag_reg == 0.0) return;
  const double scale = o.diag_reg_absolute ? 1.0 : k.diagonal().mean();
  k.diagonal().array() += o.diag_reg * scale;
}

Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigh(const Mat& k, const char* what) {
  KERN_CHECK(k.rows() == k.cols(), "limits::predict: ", what, " must be square, got ", k.rows(),
             "x", k.cols());
  const double asym = (k - k.transpose()).cwiseAbs().maxCoeff();
  KERN_CHECK(asym <= 1e-8 * (1.0 + k.cwiseAbs().maxCoeff()), "limits::predict: ", what,
             " is not symmetric (max |K - K^T| = ", asym, ")");
  return Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(Eigen::MatrixXd(k));
}

}  // namespace

GradientDescentMse::GradientDescentMse(const Tensor& ntk_train_train, const Tensor& y_train,
                                       const PredictOptions& options) {
  KERN_CHECK(y_train.defined() && (y_train.dim() == 2 || y_train.dim() == 1),
             "limits::GradientDescentMse: y_train must be [N, O] or [N]");
  n_ = y_train.size(0);
  o_ = y_train.dim() == 2 ? y_train.size(1) : 1;
  Mat k = to_mat(ntk_train_train, "ntk_train_train", n_, n_);
  regularize(k, options);
  auto es = eigh(k, "ntk_train_train");
  evals_.assign(es.eigenvalues().data(), es.eigenvalues().data() + n_);
  evecs_.assign(es.eigenvectors().data(), es.eigenvectors().data() + n_ * n_);
  Mat y = to_mat(y_train.reshape({n_, o_}), "y_train", n_, o_);
  y_.assign(y.data(), y.data() + y.size());
  KERN_CHECK(options.learning_rate > 0, "limits::GradientDescentMse: learning_rate must be > 0");
  rate_ = options.learning_rate / static_cast<double>(n_ * o_);
}

std::vector<double> GradientDescentMse::factor(double t) const {
  KERN_CHECK(t >= 0, "limits::GradientDescentMse: time t must be >= 0, got ", t);
  const double lmax = std::abs(evals_.back());
  std::vector<double> f(evals_.size());
  for (size_t i = 0; i < f.size(); ++i) {
    const double l = std::max(evals_[i], 0.0);
    if (std::isinf(t)) {
      f[i] = l > 1e-12 * lmax ? 1.0 / l : 0.0;
    } else {
      const double x = rate_ * l * t;
      f[i] = x < 1e-300 ? rate_ * t : -std::expm1(-x) / l;
    }
  }
  return f;
}

namespace {
// T = V diag(f) V^T
Mat t_matrix(const std::vector<double>& evecs, const std::vector<double>& f, int64_t n) {
  Eigen::Map<const Eigen::MatrixXd> V(evecs.data(), n, n);
  Eigen::VectorXd fv = Eigen::Map<const Eigen::VectorXd>(f.data(), n);
  return V * fv.asDiagonal() * V.transpose();
}
}  // namespace

Tensor GradientDescentMse::mean_train(double t) const {
  // (I - e^{-c Theta t}) y = Theta T y = V diag(l f) V^T y
  std::vector<double> f = factor(t);
  for (size_t i = 0; i < f.size(); ++i) f[i] *= std::max(evals_[i], 0.0);
  if (std::isinf(t))
    for (size_t i = 0; i < f.size(); ++i) f[i] = evals_[i] > 1e-12 * std::abs(evals_.back()) ? 1.0 : 0.0;
  Eigen::Map<const Mat> y(y_.data(), n_, o_);
  return to_tensor(t_matrix(evecs_, f, n_) * y);
}

Tensor GradientDescentMse::mean(const Tensor& ntk_test_train, double t) const {
  Mat ks = to_mat(ntk_test_train, "ntk_test_train", -1, n_);
  Eigen::Map<const Mat> y(y_.data(), n_, o_);
  return to_tensor(ks * (t_matrix(evecs_, factor(t), n_) * y));
}

Tensor GradientDescentMse::cov(const Tensor& ntk_test_train, const Tensor& nngp_train_train,
                               const Tensor& nngp_test_train, const Tensor& nngp_test_test,
                               double t) const {
  Mat ts = to_mat(ntk_test_train, "ntk_test_train", -1, n_);
  const int64_t m = ts.rows();
  Mat k = to_mat(nngp_train_train, "nngp_train_train", n_, n_);
  Mat ks = to_mat(nngp_test_train, "nngp_test_train", m, n_);
  Mat kss = to_mat(nngp_test_test, "nngp_test_test", m, m);
  Mat A = ts * t_matrix(evecs_, factor(t), n_);  // Theta_* T  [M, N]
  Mat cross = A * ks.transpose();
  Mat c = kss + A * k * A.transpose() - cross - cross.transpose();
  return to_tensor(c);
}

Tensor kernel_regression(const Tensor& k_train_train, const Tensor& y_train,
                         const Tensor& k_test_train, const PredictOptions& options) {
  KERN_CHECK(y_train.defined() && (y_train.dim() == 2 || y_train.dim() == 1),
             "limits::kernel_regression: y_train must be [N, O] or [N]");
  const int64_t n = y_train.size(0), o = y_train.dim() == 2 ? y_train.size(1) : 1;
  Mat k = to_mat(k_train_train, "k_train_train", n, n);
  regularize(k, options);
  Mat y = to_mat(y_train.reshape({n, o}), "y_train", n, o);
  Mat ks = to_mat(k_test_train, "k_test_train", -1, n);
  if (options.cholesky) {
    KERN_CHECK(k.rows() == n, "limits::kernel_regression: k_train_train must be square");
    Eigen::LLT<Eigen::MatrixXd> llt{Eigen::MatrixXd(k)};
    KERN_CHECK(llt.info() == Eigen::Success, "limits::kernel_regression: k_train_train [", n, ", ", n,
               "] (+ diag_reg ", options.diag_reg, ") is not positive definite: Cholesky failed; raise diag_reg "
               "or use the eigendecomposition (cholesky = false)");
    Mat alpha = llt.solve(Eigen::MatrixXd(y));
    return to_tensor(ks * alpha);
  }
  auto es = eigh(k, "k_train_train");
  const Eigen::VectorXd& l = es.eigenvalues();
  const double lmax = std::abs(l(n - 1));
  Eigen::VectorXd inv(n);
  for (int64_t i = 0; i < n; ++i) inv(i) = l(i) > 1e-12 * lmax ? 1.0 / l(i) : 0.0;
  const Eigen::MatrixXd& V = es.eigenvectors();
  Mat alpha = V * (inv.asDiagonal() * (V.transpose() * y));
  return to_tensor(ks * alpha);
}

Tensor kernel_regression_cov(const Tensor& k_train_train, const Tensor& k_test_train,
                             const Tensor& k_test_test, const PredictOptions& options) {
  Mat k = to_mat(k_train_train, "k_train_train", -1, -1);
  const int64_t n = k.rows();
  regularize(k, options);
  Mat ks = to_mat(k_test_train, "k_test_train", -1, n);
  Mat kss = to_mat(k_test_test, "k_test_test", ks.rows(), ks.rows());
  auto es = eigh(k, "k_train_train");
  const Eigen::VectorXd& l = es.eigenvalues();
  const double lmax = std::abs(l(n - 1));
  Eigen::VectorXd inv(n);
  for (int64_t i = 0; i < n; ++i) inv(i) = l(i) > 1e-12 * lmax ? 1.0 / l(i) : 0.0;
  const Eigen::MatrixXd& V = es.eigenvectors();
  Mat b = ks * V;  // [M, N]
  return to_tensor(kss - b * inv.asDiagonal() * b.transpose());
}

}  // namespace kern::limits
