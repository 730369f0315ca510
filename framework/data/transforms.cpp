// Image batch transforms: Normalize, RandomCrop, RandomHorizontalFlip.
#include <kern/autograd.hpp>
#include <kern/data/transforms.hpp>

#include <algorithm>

namespace kern::data {

namespace {

// x: [C, H, W] or [B, C, H, W] -> contiguous [B, C, H, W] (B = 1 for one image).
Tensor as_batch(const Tensor& x, const char* op) {
  KERN_CHECK(x.dim() == 3 || x.dim() == 4, op, ": expected images [B, C, H, W] or [C, H, W], got ",
             x.shape());
  KERN_CHECK(x.dtype() == DType::Float32 || x.dtype() == DType::Float64, op,
             ": expected float32 or float64 images, got ", x.dtype());
  Tensor c = x.detach().contiguous();
  return x.dim() == 3 ? c.unsqueeze(0) : c;
}

template <typename F>
void dispatch(DType dt, F&& f) {
  if (dt == DType::Float32) f.template operator()<float>();
  else if (dt == DType::Float64) f.template operator()<double>();
  else throw Error(fmt::format("transforms: {} images are not supported (float32 or float64)", dt));
}

}  // namespace

Normalize::Normalize(std::vector<double> mean, std::vector<double> std)
    : mean_(std::move(mean)), std_(std::move(std)) {
  KERN_CHECK(!mean_.empty() && mean_.size() == std_.size(), "Normalize: mean (", mean_.size(),
             " values) and std (", std_.size(), " values) must be non-empty and of equal length");
  for (double s : std_) KERN_CHECK(s > 0.0, "Normalize: std values must be > 0, got ", s);
}

Tensor Normalize::operator()(const Tensor& x) const {
  NoGradGuard ng;
  Tensor b = as_batch(x, "Normalize");
  const int64_t B = b.size(0), C = b.size(1), HW = b.size(2) * b.size(3);
  KERN_CHECK(mean_.size() == 1 || static_cast<int64_t>(mean_.size()) == C, "Normalize: ",
             mean_.size(), " mean/std values for images ", x.shape(), " with ", C, " channels");
  Tensor out = empty(b.shape(), b.dtype());
  dispatch(b.dtype(), [&]<typename T>() {
    const T* src = b.data_ptr<T>();
    T* dst = out.data_ptr<T>();
    for (int64_t n = 0; n < B; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const size_t k = mean_.size() == 1 ? 0 : static_cast<size_t>(c);
        const T m = static_cast<T>(mean_[k]), s = static_cast<T>(std_[k]);
        const int64_t base = (n * C + c) * HW;
        for (int64_t i = 0; i < HW; ++i) dst[base + i] = (src[base + i] - m) / s;
      }
  });
  return x.dim() == 3 ? out.squeeze(0) : out;
}

RandomCrop::RandomCrop(int64_t size, int64_t padding) : size_(size), padding_(padding) {
  KERN_CHECK(size > 0, "RandomCrop: size must be > 0, got ", size);
  KERN_CHECK(padding >= 0, "RandomCrop: padding must be >= 0, got ", padding);
}

Tensor RandomCrop::operator()(const Tensor& x, Generator& gen) const {
  NoGradGuard ng;
  Tensor b = as_batch(x, "RandomCrop");
  const int64_t B = b.size(0), C = b.size(1), H = b.size(2), W = b.size(3), p = padding_;
  KERN_CHECK(H + 2 * p >= size_ && W + 2 * p >= size_, "RandomCrop: crop ", size_, "x", size_,
             " does not fit images ", x.shape(), " padded by ", p);
  Tensor out = zeros({B, C, size_, size_}, b.dtype());
  dispatch(b.dtype(), [&]<typename T>() {
    const T* src = b.data_ptr<T>();
    T* dst = out.data_ptr<T>();
    for (int64_t n = 0; n < B; ++n) {
      // Window origin in padded coordinates, uniform over all valid positions (top, then left).
      const int64_t top = static_cast<int64_t>(gen.next_u64() % static_cast<uint64_t>(H + 2 * p - size_ + 1));
      const int64_t left = static_cast<int64_t>(gen.next_u64() % static_cast<uint64_t>(W + 2 * p - size_ + 1));
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < size_; ++i) {
          const int64_t r = top + i - p;  // source row
          if (r < 0 || r >= H) continue;  // padding row: stays 0
          const T* srow = src + ((n * C + c) * H + r) * W;
          T* drow = dst + ((n * C + c) * size_ + i) * size_;
          for (int64_t j = 0; j < size_; ++j) {
            const int64_t col = left + j - p;
            if (col >= 0 && col < W) drow[j] = srow[col];
          }
        }
    }
  });
  return x.dim() == 3 ? out.squeeze(0) : out;
}

RandomHorizontalFlip::RandomHorizontalFlip(double p) : p_(p) {
  KERN_CHECK(p >= 0.0 && p <= 1.0, "RandomHorizontalFlip: p must be in [0, 1], got ", p);
}

Tensor RandomHorizontalFlip::operator()(const Tensor& x, Generator& gen) const {
  NoGradGuard ng;
  Tensor b = as_batch(x, "RandomHorizontalFlip");
  const int64_t B = b.size(0), C = b.size(1), H = b.size(2), W = b.size(3);
  Tensor out = empty(b.shape(), b.dtype());
  out.copy_(b);
  dispatch(b.dtype(), [&]<typename T>() {
    T* d = out.data_ptr<T>();
    for (int64_t n = 0; n < B; ++n) {
      if (!(gen.uniform() < p_)) continue;
      for (int64_t row = 0; row < C * H; ++row) {
        T* r = d + (n * C * H + row) * W;
        std::reverse(r, r + W);
      }
    }
  });
  return x.dim() == 3 ? out.squeeze(0) : out;
}

}  // namespace kern::data
