#pragma once
// Fashion-MNIST as the zoo examples (zoo_train, ntk_nas) feed it: normalized and zero-padded
// from 28x28 to 32x32, so that ConvNeXt / InceptionNeXt's stride-32 trunk ends on a 1x1 map.
#include <kern/kern.hpp>

#include <algorithm>

namespace zoo_data {

/// [N, 1, 28, 28] raw pixels -> normalized and zero-padded to [N, 1, 32, 32].
inline kern::Tensor prepare(const kern::Tensor& x, const kern::data::Normalize& norm) {
  return kern::pad(norm(x), {2, 2, 2, 2});
}

/// Fraction of `test` classified right, in eval mode and batches of 500; leaves the model
/// in training mode.
inline double evaluate(kern::nn::Module& model, const kern::data::TensorDataset& test,
                       const kern::data::Normalize& norm) {
  kern::NoGradGuard no_grad;
  model.eval();
  int64_t correct = 0;
  const int64_t n = test.size();
  for (int64_t start = 0; start < n; start += 500) {
    auto batch = test.batch(start, std::min<int64_t>(500, n - start));
    kern::Tensor pred = kern::argmax(model(prepare(batch.x, norm)), 1);
    correct += static_cast<int64_t>(kern::sum(kern::eq(pred, batch.y)).item());
  }
  model.train();
  return static_cast<double>(correct) / static_cast<double>(n);
}

}  // namespace zoo_data
