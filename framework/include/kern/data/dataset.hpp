#pragma once
// Datasets: indexable collections of (x, y) examples that can gather a batch.
#include <kern/tensor.hpp>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kern::data {

/// One example or one batch: x and y (structured-binding friendly: auto [x, y] = ...).
struct Example {
  Tensor x;
  Tensor y;
};
using Batch = Example;

class Dataset {
 public:
  virtual ~Dataset() = default;
  /// Number of examples.
  virtual int64_t size() const = 0;
  /// The examples at `indices`, stacked along a new leading dim: x [B, ...], y [B, ...].
  /// Must be safe to call from a background thread (DataLoader prefetch).
  virtual Example get_batch(std::span<const int64_t> indices) const = 0;
  /// One example (no batch dim).
  virtual Example get(int64_t index) const;
};

/// Examples are rows of x and y (equal first dims). Copies of a TensorDataset share data.
class TensorDataset : public Dataset {
 public:
  TensorDataset() = default;
  /// x: [N, ...], y: [N, ...] (any dtypes); both are made contiguous and detached.
  TensorDataset(Tensor x, Tensor y);
  int64_t size() const override { return n_; }
  Example get_batch(std::span<const int64_t> indices) const override;
  Example get(int64_t index) const override;
  /// Rows [start, start + count) as views of the data: x [count, ...], y [count, ...].
  Example batch(int64_t start, int64_t count) const;
  const Tensor& x() const { return x_; }
  const Tensor& y() const { return y_; }

 private:
  Tensor x_, y_;
  int64_t n_ = 0;
};

/// Fashion-MNIST (Zalando): 60000 train / 10000 test 28x28 grey images in 10 classes.
/// x: float32 [N, 1, 28, 28] scaled to [0, 1]; y: int64 [N] in 0..9.
class FashionMNIST : public TensorDataset {
 public:
  /// Where Debian's `dataset-fashion-mnist` package installs the files.
  static constexpr std::string_view kDefaultDir = "/usr/share/datasets/fashion-mnist";
  /// Reads {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz from `dir` (kDefaultDir if empty).
  static FashionMNIST train(std::string dir = "");
  static FashionMNIST test(std::string dir = "");
  /// The class names, by label.
  static const std::array<std::string_view, 10> kClassNames;

 private:
  FashionMNIST(Tensor x, Tensor y) : TensorDataset(std::move(x), std::move(y)) {}
  static FashionMNIST load(std::string dir, std::string_view prefix);
};

}  // namespace kern::data
