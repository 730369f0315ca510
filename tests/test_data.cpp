// Data: IDX reader (gzip and plain, corrupt files), TensorDataset, Fashion-MNIST, the seeded
// prefetching DataLoader, transforms.
#include <catch2/catch.hpp>
#include <kern/data/data.hpp>
#include <kern/kern.hpp>

#include <dlfcn.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <optional>
#include <thread>

#include <unistd.h>

#include "requirements.hpp"

using namespace kern;
namespace data = kern::data;
namespace fs = std::filesystem;

namespace {

// zlib through dlopen: libkern links zlib privately, the test executable does not link it.
struct Zlib {
  decltype(&gzopen) open = nullptr;
  decltype(&gzwrite) write = nullptr;
  decltype(&gzclose) close = nullptr;
  Zlib() {
    void* h = dlopen("libz.so.1", RTLD_NOW);
    REQUIRE(h != nullptr);
    open = reinterpret_cast<decltype(&gzopen)>(dlsym(h, "gzopen"));
    write = reinterpret_cast<decltype(&gzwrite)>(dlsym(h, "gzwrite"));
    close = reinterpret_cast<decltype(&gzclose)>(dlsym(h, "gzclose"));
    REQUIRE((open && write && close));
  }
};

void write_file(const fs::path& path, const std::string& bytes, bool gzip) {
  if (gzip) {
    static Zlib z;
    gzFile f = z.open(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(z.write(f, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
    REQUIRE(z.close(f) == Z_OK);
  } else {
    std::ofstream(path, std::ios::binary) << bytes;
  }
}

void put_u32(std::string& s, uint32_t v) {
  for (int sh = 24; sh >= 0; sh -= 8) s.push_back(static_cast<char>((v >> sh) & 0xff));
}

// IDX bytes: magic {0, 0, 8, dims.size()}, big-endian dims, then `payload`.
std::string idx_bytes(const std::vector<uint32_t>& dims, const std::vector<uint8_t>& payload) {
  std::string s = {0, 0, 8, static_cast<char>(dims.size())};
  for (auto d : dims) put_u32(s, d);
  s.append(payload.begin(), payload.end());
  return s;
}

std::vector<uint8_t> pattern(size_t n, int mul = 7) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i * mul + 3) % 256);
  return v;
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           fmt::format("kern_test_data_{}_{}", ::getpid(), std::chrono::steady_clock::now().time_since_epoch().count());
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// A Fashion-MNIST-like directory with n_images images and n_labels labels (label i = i % 10).
void write_fake_fashion(const TempDir& dir, const std::string& prefix, uint32_t n_images, uint32_t n_labels) {
  write_file(dir / (prefix + "-images-idx3-ubyte.gz"), idx_bytes({n_images, 28, 28}, pattern(n_images * 784)), true);
  std::vector<uint8_t> labels(n_labels);
  for (uint32_t i = 0; i < n_labels; ++i) labels[i] = static_cast<uint8_t>(i % 10);
  write_file(dir / (prefix + "-labels-idx1-ubyte.gz"), idx_bytes({n_labels}, labels), true);
}

data::TensorDataset counting_dataset(int64_t n) {
  // x[i] = [i, -i] (float32), y[i] = i (int64)
  Tensor idx = arange(0.0, static_cast<double>(n), 1.0, DType::Float32);
  Tensor x = stack({idx, -idx}, 1);
  return data::TensorDataset(x, arange(n));
}

std::vector<std::vector<int64_t>> epoch_labels(data::DataLoader& loader) {
  std::vector<std::vector<int64_t>> out;
  for (auto& [x, y] : loader) out.push_back(y.to_vector<int64_t>());
  return out;
}

}  // namespace

TEST_CASE("read_idx reads gzip and plain IDX images and labels", "[data]") {
  TempDir dir;
  for (bool gz : {true, false}) {
    INFO("gzip " << gz);
    const std::string ext = gz ? ".gz" : "";
    auto img = pattern(3 * 28 * 28);
    write_file(dir / ("img" + ext), idx_bytes({3, 28, 28}, img), gz);
    Tensor t = data::read_idx(dir / ("img" + ext));
    REQUIRE(t.dtype() == DType::Float32);
    REQUIRE(t.shape() == Shape{3, 28, 28});
    auto v = t.to_vector<float>();
    REQUIRE(v.size() == img.size());
    for (size_t i = 0; i < v.size(); ++i) REQUIRE(v[i] == static_cast<float>(img[i]));

    write_file(dir / ("lab" + ext), idx_bytes({5}, {0, 9, 3, 255, 7}), gz);
    Tensor l = data::read_idx(dir / ("lab" + ext));
    REQUIRE(l.dtype() == DType::Int64);
    REQUIRE(l.to_vector<int64_t>() == std::vector<int64_t>{0, 9, 3, 255, 7});

    write_file(dir / ("odd" + ext), idx_bytes({2, 4, 5}, pattern(40)), gz);
    REQUIRE(data::read_idx(dir / ("odd" + ext)).shape() == Shape{2, 4, 5});
    write_file(dir / ("empty" + ext), idx_bytes({0}, {}), gz);
    REQUIRE(data::read_idx(dir / ("empty" + ext)).numel() == 0);
  }
}

TEST_CASE("read_idx errors name the file and the problem", "[data][errors]") {
  TempDir dir;
  const std::string missing = dir / "nope-idx1-ubyte.gz";
  REQUIRE_THROWS_WITH(data::read_idx(missing), Catch::Contains(missing) && Catch::Contains("no such file"));
  for (bool gz : {true, false}) {
    INFO("gzip " << gz);
    const std::string ext = gz ? ".gz" : "";
    std::string bad = idx_bytes({2}, {1, 2});
    bad[2] = 0x0d;  // float data type
    write_file(dir / ("bad" + ext), bad, gz);
    REQUIRE_THROWS_WITH(data::read_idx(dir / ("bad" + ext)),
                        Catch::Contains(dir / ("bad" + ext)) && Catch::Contains("bad magic") && Catch::Contains("00000d01"));
    write_file(dir / ("short" + ext), idx_bytes({5}, {1, 2, 3}), gz);
    REQUIRE_THROWS_WITH(data::read_idx(dir / ("short" + ext)),
                        Catch::Contains(dir / ("short" + ext)) && Catch::Contains("truncated"));
    write_file(dir / ("hdr" + ext), std::string{0, 0, 8, 3, 0, 0}, gz);
    REQUIRE_THROWS_WITH(data::read_idx(dir / ("hdr" + ext)),
                        Catch::Contains(dir / ("hdr" + ext)) && Catch::Contains("truncated"));
    write_file(dir / ("tiny" + ext), std::string{0, 0}, gz);
    REQUIRE_THROWS_WITH(data::read_idx(dir / ("tiny" + ext)), Catch::Contains("truncated"));
    write_file(dir / ("long" + ext), idx_bytes({2}, {1, 2, 3}), gz);
    REQUIRE_THROWS_WITH(data::read_idx(dir / ("long" + ext)),
                        Catch::Contains(dir / ("long" + ext)) && Catch::Contains("size mismatch"));
    // A header claiming 2^32-1 labels with 3 bytes of data: an error, not a 4 GB allocation.
    write_file(dir / ("huge" + ext), idx_bytes({0xffffffffu}, {1, 2, 3}), gz);
    REQUIRE_THROWS_WITH(data::read_idx(dir / ("huge" + ext)), Catch::Contains("truncated"));
  }
  // A gzip stream cut in the middle.
  write_file(dir / "cut.gz", idx_bytes({4, 28, 28}, pattern(4 * 784, 131)), true);
  fs::resize_file(dir / "cut.gz", fs::file_size(dir / "cut.gz") / 2);
  REQUIRE_THROWS_WITH(data::read_idx(dir / "cut.gz"), Catch::Contains(dir / "cut.gz") && Catch::Contains("truncated"));
  REQUIRE_THROWS_WITH(data::read_idx(dir.path.string()), Catch::Contains("directory"));
}

TEST_CASE("FashionMNIST reads a directory; count mismatch names both files", "[data][errors]") {
  TempDir dir;
  write_fake_fashion(dir, "train", 12, 12);
  write_fake_fashion(dir, "t10k", 3, 4);
  auto train = data::FashionMNIST::train(dir.path.string());
  REQUIRE(train.size() == 12);
  REQUIRE(train.x().shape() == Shape{12, 1, 28, 28});
  REQUIRE(train.x().dtype() == DType::Float32);
  REQUIRE(train.y().dtype() == DType::Int64);
  auto px = pattern(12 * 784);
  auto xs = train.x().to_vector<float>();
  for (size_t i = 0; i < xs.size(); i += 97) REQUIRE(xs[i] == Approx(px[i] / 255.0f));
  auto [bx, by] = train.batch(2, 3);
  REQUIRE(bx.shape() == Shape{3, 1, 28, 28});
  REQUIRE(by.to_vector<int64_t>() == std::vector<int64_t>{2, 3, 4});
  auto one = train.get(11);
  REQUIRE(one.x.shape() == Shape{1, 28, 28});
  REQUIRE(one.y.item() == 1.0);
  REQUIRE_THROWS_WITH(data::FashionMNIST::test(dir.path.string()),
                      Catch::Contains("t10k-images-idx3-ubyte.gz") && Catch::Contains("t10k-labels-idx1-ubyte.gz") &&
                          Catch::Contains("3 images") && Catch::Contains("4 labels"));
  REQUIRE_THROWS_WITH(data::FashionMNIST::train((dir.path / "absent").string()),
                      Catch::Contains("train-images-idx3-ubyte.gz") && Catch::Contains("no such file"));
  REQUIRE_THROWS_WITH(data::TensorDataset(zeros({3, 2}), arange(4)), Catch::Contains("[3, 2]") && Catch::Contains("[4]"));
  REQUIRE_THROWS_WITH(train.batch(10, 5), Catch::Contains("out of range"));
}

TEST_CASE("Fashion-MNIST from the Debian package", "[data]") {
  const std::string dir(data::FashionMNIST::kDefaultDir);
  if (!fs::exists(fs::path(dir) / "train-images-idx3-ubyte.gz")) {
    testing::requirement_missing(dir + "/train-images-idx3-ubyte.gz is absent", "dataset-fashion-mnist");
    return;
  }
  auto train = data::FashionMNIST::train();
  auto test = data::FashionMNIST::test();
  REQUIRE(train.size() == 60000);
  REQUIRE(test.size() == 10000);
  REQUIRE(train.x().shape() == Shape{60000, 1, 28, 28});
  REQUIRE(test.x().shape() == Shape{10000, 1, 28, 28});
  for (auto* ds : {&train, &test}) {
    auto labels = ds->y().to_vector<int64_t>();
    REQUIRE(*std::min_element(labels.begin(), labels.end()) == 0);
    REQUIRE(*std::max_element(labels.begin(), labels.end()) == 9);
    auto pixels = ds->x().to_vector<float>();
    REQUIRE(*std::min_element(pixels.begin(), pixels.end()) == 0.0f);
    REQUIRE(*std::max_element(pixels.begin(), pixels.end()) == 1.0f);
    // Fashion-MNIST is balanced: every class has N/10 examples.
    Tensor counts = one_hot(ds->y(), 10, DType::Float64).sum({0});
    for (double c : counts.to_vector<double>()) REQUIRE(c == ds->size() / 10);
  }
  data::DataLoader loader(train, {.batch_size = 1000, .shuffle = true, .seed = 1});
  REQUIRE(loader.size() == 60);
  int64_t seen = 0;
  for (auto& [x, y] : loader) {
    REQUIRE(x.shape() == Shape{1000, 1, 28, 28});
    seen += y.numel();
  }
  REQUIRE(seen == 60000);
}

TEST_CASE("DataLoader visits every sample exactly once per epoch; size and drop_last", "[data]") {
  auto ds = counting_dataset(103);
  for (bool drop_last : {false, true})
    for (bool prefetch : {false, true})
      for (bool shuffle : {false, true}) {
        INFO("drop_last " << drop_last << " prefetch " << prefetch << " shuffle " << shuffle);
        data::DataLoader loader(ds, {.batch_size = 10, .shuffle = shuffle, .drop_last = drop_last, .prefetch = prefetch});
        REQUIRE(loader.size() == (drop_last ? 10 : 11));
        for (int epoch = 0; epoch < 2; ++epoch) {
          std::multiset<int64_t> seen;
          int64_t batches = 0;
          for (auto& [x, y] : loader) {
            ++batches;
            const bool last = batches == loader.size();
            REQUIRE(y.numel() == (last && !drop_last ? 3 : 10));
            REQUIRE(x.shape() == Shape{y.numel(), 2});
            auto xv = x.to_vector<float>();
            auto yv = y.to_vector<int64_t>();
            for (size_t i = 0; i < yv.size(); ++i) {
              REQUIRE(xv[2 * i] == static_cast<float>(yv[i]));  // x and y stay paired
              seen.insert(yv[i]);
            }
          }
          REQUIRE(batches == loader.size());
          if (drop_last) {
            REQUIRE(seen.size() == 100);
          } else {
            REQUIRE(seen.size() == 103);
          }
          REQUIRE(std::set<int64_t>(seen.begin(), seen.end()).size() == seen.size());  // no repeats
          if (!shuffle) REQUIRE(*seen.begin() == 0);
        }
        REQUIRE(loader.next_epoch() == 2);
      }
  data::DataLoader ordered(ds, {.batch_size = 50, .shuffle = false});
  auto first = (*ordered.begin()).y.to_vector<int64_t>();
  REQUIRE(first.front() == 0);
  REQUIRE(first.back() == 49);
  REQUIRE_THROWS_WITH(data::DataLoader(ds, {.batch_size = 0}), Catch::Contains("batch_size"));
}

TEST_CASE("DataLoader order: same seed same order, different seed or epoch differs", "[data]") {
  auto ds = counting_dataset(64);
  data::DataLoader a(ds, {.batch_size = 16, .seed = 5});
  data::DataLoader b(ds, {.batch_size = 16, .seed = 5});
  data::DataLoader c(ds, {.batch_size = 16, .seed = 6});
  auto a0 = epoch_labels(a), b0 = epoch_labels(b), c0 = epoch_labels(c);
  REQUIRE(a0 == b0);
  REQUIRE(a0 != c0);
  auto a1 = epoch_labels(a);
  REQUIRE(a1 != a0);  // the next epoch reshuffles
  // Restartable: set_epoch(1) on a fresh loader replays epoch 1; epoch(e) does too.
  data::DataLoader d(ds, {.batch_size = 16, .seed = 5});
  d.set_epoch(1);
  REQUIRE(epoch_labels(d) == a1);
  std::vector<std::vector<int64_t>> e0;
  for (auto& batch : d.epoch(0)) e0.push_back(batch.y.to_vector<int64_t>());
  REQUIRE(e0 == a0);
  REQUIRE(d.next_epoch() == 2);
  REQUIRE(d.order(0) == d.order(0));
  REQUIRE(d.get(1, 2).y.to_vector<int64_t>() == a1[2]);
}

TEST_CASE("DataLoader prefetch gives exactly the batches of no prefetch", "[data]") {
  auto ds = counting_dataset(257);
  data::Transform tf = [](data::Batch b, Generator& g) {
    b.x = b.x + rand(b.x.shape(), DType::Float32, &g);  // random, from the per-batch generator
    return b;
  };
  for (int64_t depth : {1, 2, 5}) {
    data::DataLoader with(ds, {.batch_size = 32, .seed = 3, .prefetch = true, .transform = tf, .prefetch_depth = depth});
    data::DataLoader without(ds, {.batch_size = 32, .seed = 3, .prefetch = false, .transform = tf});
    for (int epoch = 0; epoch < 2; ++epoch) {
      std::vector<data::Batch> bw, bo;
      for (auto& b : with) bw.push_back(b);
      for (auto& b : without) bo.push_back(b);
      REQUIRE(bw.size() == 9);
      REQUIRE(bw.size() == bo.size());
      for (size_t i = 0; i < bw.size(); ++i) {
        REQUIRE(max_abs_diff(bw[i].x, bo[i].x) == 0.0);
        REQUIRE(bw[i].y.to_vector<int64_t>() == bo[i].y.to_vector<int64_t>());
      }
      REQUIRE(max_abs_diff(bw[0].x.select(1, 0) - bw[0].y.to(DType::Float32), zeros({32})) > 0.0);
    }
  }
}

TEST_CASE("DataLoader: early break, destroyed loader and failing transform do not hang", "[data]") {
  auto ds = counting_dataset(1000);
  std::atomic<int> made{0};
  data::Transform slow = [&made](data::Batch b, Generator&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ++made;
    return b;
  };
  const auto t0 = std::chrono::steady_clock::now();
  {
    data::DataLoader loader(ds, {.batch_size = 10, .transform = slow, .prefetch_depth = 2});
    int n = 0;
    for (auto& [x, y] : loader) {
      REQUIRE(y.numel() == 10);
      if (++n == 2) break;
    }
    // The worker stopped after a few batches ahead, not after all 100.
    REQUIRE(made.load() <= 2 + 2 + 1);
    // An iterator outliving its loader keeps working (it owns the epoch and the dataset).
    std::optional<data::DataLoader::Iterator> it;
    {
      data::DataLoader other(ds, {.batch_size = 100, .shuffle = false});
      it = other.begin();
    }
    ++*it;
    REQUIRE((**it).y.to_vector<int64_t>().front() == 100);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(secs < 2.0);  // 100 batches * 20 ms would be 2 s

  // An exception in the transform reaches the iterating thread at that batch.
  data::Transform failing = [](data::Batch b, Generator&) {
    if (b.y.to_vector<int64_t>().front() >= 30) throw Error("transform failed on purpose");
    return b;
  };
  for (bool prefetch : {true, false}) {
    data::DataLoader loader(ds, {.batch_size = 10, .shuffle = false, .prefetch = prefetch, .transform = failing});
    int n = 0;
    auto run = [&] {
      for (auto& b : loader) {
        (void)b;
        ++n;
      }
    };
    REQUIRE_THROWS_WITH(run(), Catch::Contains("on purpose"));
    REQUIRE(n == 3);
  }
}

TEST_CASE("transforms: Normalize, RandomCrop, RandomHorizontalFlip", "[data]") {
  Tensor x = arange(0.0, 2 * 2 * 3 * 4, 1.0, DType::Float32).reshape({2, 2, 3, 4});
  Tensor n = data::Normalize({1.0, 2.0}, {2.0, 4.0})(x);
  auto nv = n.to_vector<float>();
  REQUIRE(nv[0] == Approx((0 - 1.0) / 2.0));
  REQUIRE(nv[12] == Approx((12 - 2.0) / 4.0));   // sample 0, channel 1
  REQUIRE(nv[24] == Approx((24 - 1.0) / 2.0));   // sample 1, channel 0
  REQUIRE(data::Normalize({0.5}, {0.25})(x.select(0, 0)).shape() == Shape{2, 3, 4});
  REQUIRE_THROWS_WITH(data::Normalize({1.0, 2.0, 3.0}, {1.0, 1.0, 1.0})(x), Catch::Contains("Normalize"));
  REQUIRE_THROWS_WITH(data::Normalize({0.0}, {0.0}), Catch::Contains("std"));

  Generator g0(0);
  REQUIRE(max_abs_diff(data::RandomCrop(3)(x.narrow(3, 0, 3), g0), x.narrow(3, 0, 3)) == 0.0);
  // Padded crops: each output is a window of the zero-padded input.
  Tensor img = arange(1.0, 1.0 + 5 * 5, 1.0, DType::Float64).reshape({1, 1, 5, 5}).expand({64, 1, 5, 5}).contiguous();
  Generator g(42);
  Tensor crops = data::RandomCrop(5, 2)(img, g);
  REQUIRE(crops.shape() == Shape{64, 1, 5, 5});
  Tensor padded = pad(img, {2, 2, 2, 2});
  std::set<std::pair<int, int>> offsets;
  for (int64_t s = 0; s < 64; ++s) {
    Tensor c = crops.select(0, s).select(0, 0);
    bool found = false;
    for (int top = 0; top <= 4 && !found; ++top)
      for (int left = 0; left <= 4 && !found; ++left)
        if (max_abs_diff(c, padded.select(0, s).select(0, 0).narrow(0, top, 5).narrow(1, left, 5)) == 0.0) {
          found = true;
          offsets.insert({top, left});
        }
    REQUIRE(found);
  }
  REQUIRE(offsets.size() > 10);  // the windows vary
  Generator g2(42);
  REQUIRE(max_abs_diff(data::RandomCrop(5, 2)(img, g2), crops) == 0.0);  // same seed, same crops
  REQUIRE_THROWS_WITH(data::RandomCrop(9)(img, g2), Catch::Contains("RandomCrop"));

  Generator g3(1);
  Tensor flipped = data::RandomHorizontalFlip(1.0)(x, g3);
  REQUIRE(flipped.select(0, 1).select(0, 1).select(0, 2).to_vector<float>() ==
          std::vector<float>{47, 46, 45, 44});
  REQUIRE(max_abs_diff(data::RandomHorizontalFlip(0.0)(x, g3), x) == 0.0);
  Tensor half = data::RandomHorizontalFlip(0.5)(img, g3);
  int nflip = 0;
  for (int64_t s = 0; s < 64; ++s) nflip += max_abs_diff(half.select(0, s), img.select(0, s)) > 0;
  REQUIRE(nflip > 16);
  REQUIRE(nflip < 48);
}
