// A two-layer tanh MLP learns a random teacher network by full-batch gradient descent,
// written with kern's ops and autograd only (no nn/optim): the smallest real training run.
#include <kern/kern.hpp>

using namespace kern;

int main() {
  manual_seed(0);
  const int64_t n = 512, d = 16, h = 64;
  // Teacher: y = sin(x W1^T) w2 with fixed random weights.
  Tensor x = randn({n, d});
  Tensor y = matmul(sin(matmul(x, randn({d, 8}))), randn({8, 1})) * 0.5;
  // Student parameters (leaves), PyTorch-like uniform init.
  auto init = [](Shape s, double bound) { return rand(s, DType::Float32, nullptr, -bound, bound).requires_grad_(); };
  std::vector<Tensor> params{init({h, d}, 1 / std::sqrt(double(d))), init({h}, 1 / std::sqrt(double(d))),
                             init({1, h}, 1 / std::sqrt(double(h))), init({1}, 1 / std::sqrt(double(h)))};
  const double lr = 0.1;
  double first = 0, last = 0;
  for (int step = 0; step <= 500; ++step) {
    Tensor pred = linear(tanh(linear(x, params[0], params[1])), params[2], params[3]);
    Tensor diff = pred - y;
    Tensor loss = mean(diff * diff);
    auto grads = grad({loss}, params);
    {
      NoGradGuard ng;
      for (size_t i = 0; i < params.size(); ++i) params[i].copy_(params[i] - grads[i] * lr);
    }
    if (step == 0) first = loss.item();
    last = loss.item();
    if (step % 100 == 0) fmt::print("step {:4d}  mse {:.5f}\n", step, last);
  }
  fmt::print("mse went from {:.4f} to {:.4f}\n", first, last);
  return last < first ? 0 : 1;
}
