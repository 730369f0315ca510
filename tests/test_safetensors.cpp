// safetensors: round trips, the PyTorch fixture, atomic save, the malformed-file corpus
// (tests/data/malformed/, made by tests/data/make_malformed.py) and the `kern inspect` tool.
#include <catch2/catch.hpp>
#include <cstring>
#include <kern/io/safetensors.hpp>
#include <kern/kern.hpp>
#include <nlohmann/json.hpp>

#include "io_test_util.hpp"

using namespace kern;
using namespace kern::test;

namespace {

const std::string kData = KERN_TEST_DATA_DIR;
const std::string kMalformed = kData + "/malformed";

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("expected a kern::Error");
  return {};
}

/// malformed/expected.json: file name -> substring its error message must contain.
std::map<std::string, std::string> malformed_corpus() {
  const auto j = nlohmann::json::parse(read_bytes(kMalformed + "/expected.json"));
  return j.get<std::map<std::string, std::string>>();
}

/// A safetensors file image with a hand-written header whose data starts at byte
/// 8 + header.size() (so tests can place data at any alignment).
std::string file_image(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}


}  // namespace

TEST_CASE("safetensors round-trips float32, float64, int64, strided, 0-dim and empty tensors",
          "[safetensors]") {
  Generator gen(7);
  const Tensor f32 = randn({3, 4}, DType::Float32, &gen);
  const Tensor f64 = randn({2, 3, 5}, DType::Float64, &gen);
  const Tensor i64 = randint(-1000, 1000, {7}, &gen);
  const Tensor transposed = randn({4, 5}, DType::Float64, &gen).t();         // strides [1, 5]
  const Tensor expanded = tensor({1, 2, 3}).reshape({3, 1}).expand({3, 4});  // stride 0
  const Tensor narrowed = arange(0.0, 24.0, 1.0, DType::Float32).reshape({4, 6}).narrow(1, 1, 3);
  const Tensor scalar = scalar_tensor(-2.5, DType::Float64);
  const Tensor empty_rows = zeros({0, 3}, DType::Float32);
  const Tensor empty_i64 = zeros({0}, DType::Int64);
  REQUIRE_FALSE(transposed.is_contiguous());
  REQUIRE_FALSE(expanded.is_contiguous());
  REQUIRE_FALSE(narrowed.is_contiguous());
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"w.f32", f32},          {"w.f64", f64},
      {"labels", i64},         {"transposed", transposed},
      {"expanded", expanded},  {"narrowed", narrowed},
      {"scalar", scalar},      {"empty_rows", empty_rows},
      {"empty_i64", empty_i64}};
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"note", "multi\nline, unicode: \u00e9\u4e2d"}, {"empty", ""}};

  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  io::save_safetensors(path, tensors, metadata);

  auto check = [&](const io::SafetensorsFile& f) {
    REQUIRE(f.metadata == metadata);
    REQUIRE(f.tensors.size() == tensors.size());
    for (const auto& [name, t] : tensors) {
      INFO(name);
      REQUIRE(f.contains(name));
      const Tensor g = f.get(name);
      REQUIRE(g.dtype() == t.dtype());
      REQUIRE(g.shape() == t.shape());
      REQUIRE(g.is_contiguous());
      REQUIRE(reinterpret_cast<uintptr_t>(g.raw_data()) % dtype_size(g.dtype()) == 0);
      if (t.numel() > 0) REQUIRE(max_abs_diff(g, t) == 0.0);  // bit-exact
    }
    REQUIRE(f.get("scalar").dim() == 0);
    REQUIRE(f.get("scalar").item() == -2.5);
    REQUIRE(f.get("labels").to_vector<int64_t>() == i64.to_vector<int64_t>());
  };
  const io::SafetensorsFile loaded = io::load_safetensors(path);
  check(loaded);
  check(io::load_safetensors_from_bytes(read_bytes(path)));
  REQUIRE(read_bytes(path) == io::save_safetensors_to_bytes(tensors, metadata));

  // Zero-copy: the mmap'ed tensors are views of one mapping, kept alive by their storages.
  const Tensor a = loaded.get("w.f32"), b = loaded.get("w.f64");
  REQUIRE(a.impl().storage->keepalive == b.impl().storage->keepalive);
  REQUIRE(a.impl().storage->keepalive.get() != a.impl().storage->data);

  // A file without tensors or metadata is valid too.
  io::save_safetensors(dir.file("nothing.safetensors"), {});
  const auto nothing = io::load_safetensors(dir.file("nothing.safetensors"));
  REQUIRE(nothing.tensors.empty());
  REQUIRE(nothing.metadata.empty());
}

TEST_CASE("loaded tensors outlive their file and in-place updates never reach it",
          "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  io::save_safetensors(path, {{"w", full({64, 64}, 1.0, DType::Float32)}});
  io::SafetensorsFile first = io::load_safetensors(path);
  Tensor w = first.get("w");
  first = {};  // the tensor alone keeps the mapping alive

  // Replacing the file (atomic rename) leaves the mapped old data intact.
  io::save_safetensors(path, {{"w", full({64, 64}, 2.0, DType::Float32)}});
  REQUIRE(w.sum().item() == Approx(64.0 * 64.0));
  // An in-place update of a mapped tensor goes to private pages, not to the file.
  {
    NoGradGuard ng;
    w.fill_(5.0);
  }
  REQUIRE(w.sum().item() == Approx(5.0 * 64 * 64));
  REQUIRE(io::load_safetensors(path).get("w").sum().item() == Approx(2.0 * 64 * 64));
  fs::remove(path);
  REQUIRE(w.sum().item() == Approx(5.0 * 64 * 64));
}

TEST_CASE("safetensors data that is not aligned to its element size is copied", "[safetensors]") {
  // Python's writer pads the header to 8 bytes, but the format does not require it: place
  // F64 and F32 data at addresses 4 and 2 bytes off alignment.
  const std::vector<double> d = {1.5, -2.25, 3.0};
  const std::vector<float> s = {0.5f, 4.0f};
  std::string header = R"({"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]},)"
                       R"("s":{"dtype":"F32","shape":[2],"data_offsets":[24,32]}})";
  while ((8 + header.size()) % 8 != 4) header += ' ';
  const std::string image = file_image(header, bytes_of(d) + bytes_of(s));
  TempDir dir;
  write_bytes(dir.file("odd.safetensors"), image);
  for (const auto& f : {io::load_safetensors(dir.file("odd.safetensors")),
                        io::load_safetensors_from_bytes(image)}) {
    const Tensor td = f.get("d"), ts = f.get("s");
    REQUIRE(reinterpret_cast<uintptr_t>(td.raw_data()) % 8 == 0);
    REQUIRE(reinterpret_cast<uintptr_t>(ts.raw_data()) % 4 == 0);
    REQUIRE(td.to_vector<double>() == d);
    REQUIRE(ts.to_vector<float>() == s);
  }
}

TEST_CASE("safetensors reads the PyTorch fixture mlp_tanh.safetensors", "[safetensors]") {
  const auto f = io::load_safetensors(kData + "/mlp_tanh.safetensors");
  REQUIRE(f.metadata.count("model"));
  REQUIRE(f.metadata.at("model").find("Linear(6,16)") != std::string::npos);
  REQUIRE(f.get("param.0.weight").dtype() == DType::Float64);
  REQUIRE(f.get("param.0.weight").shape() == Shape{16, 6});
  REQUIRE(f.get("x").shape() == Shape{8, 6});
  REQUIRE(f.get("ntk").shape() == Shape{4, 3, 4, 3});
  REQUIRE(f.get("labels").dtype() == DType::Int64);
  REQUIRE(f.get("labels").shape() == Shape{8});
  // Values and checksums computed by Python (struct + zlib) from the same bytes.
  const Tensor x = f.get("x");
  REQUIRE(x.to_vector<double>()[1] == 2.4327110670410956);
  const io::TensorChecksum cx = io::checksum(x);
  REQUIRE(cx.sum == Approx(15.213532004861227).epsilon(1e-14));
  REQUIRE(cx.abs_sum == Approx(40.540154247804004).epsilon(1e-14));
  REQUIRE(cx.crc32 == 0xdeb8e921u);
  const io::TensorChecksum cl = io::checksum(f.get("labels"));
  REQUIRE(cl.sum == 7.0);
  REQUIRE(cl.crc32 == 0x95f2f16du);
  // The checksum is of the row-major values, whatever the strides.
  REQUIRE(io::checksum(x.t().contiguous().t()).crc32 == cx.crc32);
  const auto timm = io::load_safetensors(kData + "/timm_convnext_k7.safetensors");
  REQUIRE_FALSE(timm.tensors.empty());
}

TEST_CASE("SafetensorsFile::get names the missing key and close names", "[safetensors][errors]") {
  const auto f = io::load_safetensors(kData + "/mlp_tanh.safetensors");
  REQUIRE(f.contains("param.0.weight"));
  REQUIRE_FALSE(f.contains("param.0.weigth"));
  const std::string msg = error_of([&] { f.get("param.0.weigth"); });
  REQUIRE_THAT(msg, Catch::Contains("'param.0.weigth'"));
  REQUIRE_THAT(msg, Catch::Contains("'param.0.weight'"));
  REQUIRE_THAT(error_of([&] { f.get("weight"); }), Catch::Contains("'param.2.weight'"));
}

TEST_CASE("save_safetensors is atomic: a failed save leaves the previous file untouched",
          "[safetensors][errors]") {
  TempDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  const Tensor old = arange(0.0, 6.0, 1.0, DType::Float64).reshape({2, 3});
  io::save_safetensors(path, {{"w", old}}, {{"step", "1"}});
  const std::string old_bytes = read_bytes(path);
  auto only_the_checkpoint_remains = [&] {
    REQUIRE(read_bytes(path) == old_bytes);
    REQUIRE(io::load_safetensors(path).get("w").to_vector<double>() == old.to_vector<double>());
    size_t files = 0;
    for (const auto& e : fs::directory_iterator(dir.path)) {
      INFO(e.path().string());
      REQUIRE(e.path().filename().string().find(".tmp") == std::string::npos);
      ++files;
    }
    REQUIRE(files == 1);
  };

  const Tensor fresh = ones({4}, DType::Float32);
  REQUIRE_THAT(error_of([&] {
                 io::save_safetensors(path, {{"w", fresh}, {"bad", Tensor()}});
               }),
               Catch::Contains("'bad'") && Catch::Contains("undefined"));
  only_the_checkpoint_remains();
  REQUIRE_THAT(error_of([&] {
                 io::save_safetensors(path, {{"w", fresh}, {"w", fresh}});
               }),
               Catch::Contains("more than once"));
  REQUIRE_THAT(error_of([&] {
                 io::save_safetensors(path, {{"__metadata__", fresh}});
               }),
               Catch::Contains("reserved"));
  REQUIRE_THAT(error_of([&] {
                 io::save_safetensors(path, {{"", fresh}});
               }),
               Catch::Contains("empty name"));
  REQUIRE_THAT(error_of([&] {
                 io::save_safetensors(path, {{"w\xff", fresh}});
               }),
               Catch::Contains("UTF-8"));
  only_the_checkpoint_remains();

  // A failure after the data is written (rename onto a non-empty directory) removes the
  // temporary file.
  fs::create_directory(dir.path / "taken");
  write_bytes(dir.file("taken/x"), "x");
  REQUIRE_THAT(error_of([&] {
                 io::save_safetensors(dir.file("taken"), {{"w", fresh}});
               }),
               Catch::Contains("cannot rename"));
  fs::remove_all(dir.path / "taken");
  only_the_checkpoint_remains();

  // A directory we may not write to (meaningless for root, who may write anywhere).
  if (::geteuid() != 0) {
    fs::permissions(dir.path, fs::perms::owner_read | fs::perms::owner_exec);
    REQUIRE_THROWS_AS(io::save_safetensors(path, {{"w", fresh}}), Error);
    fs::permissions(dir.path, fs::perms::owner_all);
    only_the_checkpoint_remains();
  }

  // And a successful save replaces the file.
  io::save_safetensors(path, {{"w", fresh}});
  REQUIRE(io::load_safetensors(path).get("w").shape() == Shape{4});
}

TEST_CASE("load_safetensors rejects every file of the malformed corpus", "[safetensors][errors]") {
  const auto corpus = malformed_corpus();
  REQUIRE(corpus.size() >= 15);
  size_t on_disk = 0;
  for (const auto& e : fs::directory_iterator(kMalformed))
    if (e.path().extension() == ".safetensors") {
      INFO(e.path().string());
      REQUIRE(corpus.count(e.path().filename().string()));  // expected.json lists every file
      ++on_disk;
    }
  REQUIRE(on_disk == corpus.size());
  for (const auto& [file, expected] : corpus) {
    const std::string path = kMalformed + "/" + file;
    INFO(path);
    const std::string msg = error_of([&] { io::load_safetensors(path); });
    REQUIRE_THAT(msg, Catch::Contains(expected));
    REQUIRE_THAT(msg, Catch::Contains(path));
    REQUIRE_THAT(error_of([&, file = file] { io::load_safetensors_from_bytes(read_bytes(path), file); }),
                 Catch::Contains(expected));
  }
  // Messages name the tensor as well as the problem.
  REQUIRE_THAT(error_of([&] { io::load_safetensors(kMalformed + "/overlapping.safetensors"); }),
               Catch::Contains("tensor 'b'") && Catch::Contains("tensor 'a'"));
  REQUIRE_THAT(
      error_of([&] { io::load_safetensors(kMalformed + "/unsupported_dtype_c64.safetensors"); }),
      Catch::Contains("tensor 'a'") && Catch::Contains("C64"));
  REQUIRE_THAT(error_of([&] { io::load_safetensors(kMalformed + "/negative_shape.safetensors"); }),
               Catch::Contains("tensor 'a'") && Catch::Contains("-1"));
  // Not a file at all.
  REQUIRE_THAT(error_of([&] { io::load_safetensors(kMalformed + "/does_not_exist.safetensors"); }),
               Catch::Contains("cannot open"));
  REQUIRE_THAT(error_of([&] { io::load_safetensors(kMalformed); }),
               Catch::Contains("not a regular file"));
}

TEST_CASE("load_safetensors never crashes on truncated or corrupted bytes",
          "[safetensors][errors]") {
  const std::string good =
      io::save_safetensors_to_bytes({{"a", arange(0.0, 5.0, 1.0, DType::Float32)},
                                     {"b", ones({2, 2}, DType::Float64)},
                                     {"c", arange(3)}},
                                    {{"k", "v"}});
  REQUIRE(io::load_safetensors_from_bytes(good).tensors.size() == 3);
  // Every truncation is rejected (the tensors must cover the data section exactly).
  for (size_t n = 0; n < good.size(); ++n) {
    INFO("truncated to " << n);
    REQUIRE_THROWS_AS(io::load_safetensors_from_bytes(std::string_view(good).substr(0, n)), Error);
  }
  // Every single-byte corruption of the prefix and header is loaded or rejected, nothing else.
  uint64_t header_len;
  std::memcpy(&header_len, good.data(), 8);
  size_t rejected = 0;
  for (size_t i = 0; i < 8 + header_len; ++i)
    for (unsigned char v : {0x00, 0x22, 0x2d, 0x39, 0x5b, 0x7d, 0x80, 0xff}) {
      std::string bad = good;
      bad[i] = static_cast<char>(v);
      try {
        io::load_safetensors_from_bytes(bad);
      } catch (const Error&) {
        ++rejected;
      }
    }
  REQUIRE(rejected > 0);
}

TEST_CASE("kern inspect prints metadata, tensors and checksums of a good file", "[safetensors]") {
  TempDir dir;
  const std::string fixture = kData + "/mlp_tanh.safetensors";
  const RunResult r = run_program({kKern, "inspect", fixture}, dir);
  INFO(r.err);
  REQUIRE(r.exited);
  REQUIRE(r.status == 0);
  REQUIRE(r.err.empty());
  for (const char* s : {"param.0.weight", "\n  ntk ", "\n  x ", "labels", "[16, 6]", "[4, 3, 4, 3]",
                        "float64", "int64", "model: Linear(6,16)", "deb8e921", "95f2f16d"})
    REQUIRE_THAT(r.out, Catch::Contains(s));

  // A file kern wrote itself, with metadata.
  const std::string path = dir.file("small.safetensors");
  io::save_safetensors(path, {{"w", ones({2, 3}, DType::Float32)}}, {{"epoch", "3"}});
  const RunResult s = run_program({kKern, "inspect", path}, dir);
  REQUIRE(s.status == 0);
  REQUIRE_THAT(s.out, Catch::Contains("epoch: 3") && Catch::Contains("float32") &&
                          Catch::Contains("[2, 3]") && Catch::Contains("sum=6 "));
}

TEST_CASE("kern inspect exits 2 on every malformed file and 1 on usage errors",
          "[safetensors][errors]") {
  TempDir dir;
  for (const auto& [file, expected] : malformed_corpus()) {
    const std::string path = kMalformed + "/" + file;
    const RunResult r = run_program({kKern, "inspect", path}, dir);
    INFO(path << "\nstdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(r.signal == 0);
    REQUIRE(r.exited);
    // A valid file whose only fault for loading is a dtype kern cannot hold: listed.
    if (expected == "unknown dtype" || expected.find("is not supported") != std::string::npos) {
      REQUIRE(r.status == 0);
      REQUIRE_THAT(r.out, Catch::Contains("dtype not supported by kern"));
      continue;
    }
    REQUIRE(r.status == 2);
    REQUIRE(r.err.rfind("kern inspect: ", 0) == 0);
    REQUIRE_THAT(r.err, Catch::Contains(expected));
  }
  const RunResult missing = run_program({kKern, "inspect", dir.file("nope.safetensors")}, dir);
  REQUIRE(missing.status == 2);
  REQUIRE_THAT(missing.err, Catch::Contains("cannot open"));
  REQUIRE(run_program({kKern}, dir).status == 1);
  REQUIRE(run_program({kKern, "inspect"}, dir).status == 1);
  REQUIRE(run_program({kKern, "frobnicate"}, dir).status == 1);
  REQUIRE(run_program({kKern, "inspect", "--help"}, dir).status == 0);
}
