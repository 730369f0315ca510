// TensorDataset (row gathers by memcpy) and Fashion-MNIST.
#include <kern/autograd.hpp>
#include <kern/data/dataset.hpp>
#include <kern/data/idx.hpp>

#include <cstring>

namespace kern::data {

Example Dataset::get(int64_t index) const {
  const int64_t i[1] = {index};
  Example b = get_batch(i);
  return {b.x.select(0, 0), b.y.select(0, 0)};
}

TensorDataset::TensorDataset(Tensor x, Tensor y) {
  KERN_CHECK(x.defined() && y.defined(), "TensorDataset: x and y must be defined");
  KERN_CHECK(x.dim() >= 1 && y.dim() >= 1, "TensorDataset: x ", x.shape(), " and y ", y.shape(),
             " need a leading example dim");
  KERN_CHECK(x.size(0) == y.size(0), "TensorDataset: x ", x.shape(), " and y ", y.shape(),
             " hold different numbers of examples (", x.size(0), " vs ", y.size(0), ")");
  NoGradGuard ng;
  x_ = x.detach().contiguous();
  y_ = y.detach().contiguous();
  n_ = x.size(0);
}

namespace {
// Rows `indices` of a contiguous t: [N, ...] -> [B, ...].
Tensor gather_rows(const Tensor& t, std::span<const int64_t> indices, int64_t n) {
  Shape shape = t.shape();
  shape[0] = static_cast<int64_t>(indices.size());
  Tensor out = empty(shape, t.dtype());
  const size_t row = static_cast<size_t>(t.numel() / std::max<int64_t>(n, 1)) * dtype_size(t.dtype());
  const auto* src = static_cast<const char*>(t.raw_data());
  auto* dst = static_cast<char*>(out.raw_data());
  for (size_t i = 0; i < indices.size(); ++i)
    std::memcpy(dst + i * row, src + static_cast<size_t>(indices[i]) * row, row);
  return out;
}
}  // namespace

Example TensorDataset::get_batch(std::span<const int64_t> indices) const {
  for (int64_t i : indices)
    KERN_CHECK(i >= 0 && i < n_, "TensorDataset: index ", i, " out of range for ", n_, " examples");
  return {gather_rows(x_, indices, n_), gather_rows(y_, indices, n_)};
}

Example TensorDataset::get(int64_t index) const {
  KERN_CHECK(index >= 0 && index < n_, "TensorDataset: index ", index, " out of range for ", n_,
             " examples");
  return {x_.select(0, index), y_.select(0, index)};
}

Example TensorDataset::batch(int64_t start, int64_t count) const {
  KERN_CHECK(start >= 0 && count >= 0 && start + count <= n_, "TensorDataset: batch(", start, ", ",
             count, ") out of range for ", n_, " examples");
  return {x_.narrow(0, start, count), y_.narrow(0, start, count)};
}

// ---- Fashion-MNIST

const std::array<std::string_view, 10> FashionMNIST::kClassNames = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

FashionMNIST FashionMNIST::train(std::string dir) { return load(std::move(dir), "train"); }
FashionMNIST FashionMNIST::test(std::string dir) { return load(std::move(dir), "t10k"); }

FashionMNIST FashionMNIST::load(std::string dir, std::string_view prefix) {
  if (dir.empty()) dir = kDefaultDir;
  if (dir.back() != '/') dir += '/';
  const std::string images_path = fmt::format("{}{}-images-idx3-ubyte.gz", dir, prefix);
  const std::string labels_path = fmt::format("{}{}-labels-idx1-ubyte.gz", dir, prefix);
  Tensor images = read_idx(images_path);
  Tensor labels = read_idx(labels_path);
  KERN_CHECK(images.dim() == 3 && images.size(1) == 28 && images.size(2) == 28, "FashionMNIST: '",
             images_path, "' holds ", images.shape(), ", expected images [N, 28, 28]");
  KERN_CHECK(labels.dim() == 1, "FashionMNIST: '", labels_path, "' holds ", labels.shape(),
             ", expected labels [N]");
  KERN_CHECK(images.size(0) == labels.size(0), "FashionMNIST: count mismatch: '", images_path,
             "' holds ", images.size(0), " images but '", labels_path, "' holds ", labels.size(0),
             " labels");
  const int64_t* l = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < labels.numel(); ++i)
    KERN_CHECK(l[i] >= 0 && l[i] < 10, "FashionMNIST: '", labels_path, "': label ", l[i],
               " at index ", i, " is outside 0..9");
  // Scale in place (read_idx returned a fresh buffer): [N, 28, 28] 0..255 -> [N, 1, 28, 28] 0..1.
  float* p = images.data_ptr<float>();
  for (int64_t i = 0; i < images.numel(); ++i) p[i] /= 255.0f;
  return FashionMNIST(images.view({images.size(0), 1, 28, 28}), labels);
}

}  // namespace kern::data
