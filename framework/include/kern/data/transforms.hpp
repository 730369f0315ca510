#pragma once
// Batch transforms for images x: [B, C, H, W] (or one image [C, H, W]), float32/float64.
// Random transforms draw from the Generator they are given, in a fixed order (sample by
// sample), so the same generator state gives the same result. The DataLoader hands its
// transform a generator seeded from (seed, epoch, batch index).
#include <kern/generator.hpp>
#include <kern/tensor.hpp>

#include <vector>

namespace kern::data {

/// (x - mean[c]) / std[c] per channel (one value = all channels). torchvision's Normalize.
class Normalize {
 public:
  Normalize(std::vector<double> mean, std::vector<double> std);
  Tensor operator()(const Tensor& x) const;

 private:
  std::vector<double> mean_, std_;
};

/// Zero-pads each side by `padding`, then crops a random size x size window per sample
/// (torchvision's RandomCrop with constant padding).
class RandomCrop {
 public:
  explicit RandomCrop(int64_t size, int64_t padding = 0);
  Tensor operator()(const Tensor& x, Generator& gen) const;

 private:
  int64_t size_, padding_;
};

/// Mirrors each sample left-right with probability p.
class RandomHorizontalFlip {
 public:
  explicit RandomHorizontalFlip(double p = 0.5);
  Tensor operator()(const Tensor& x, Generator& gen) const;

 private:
  double p_;
};

}  // namespace kern::data
