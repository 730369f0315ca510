// safetensors with every dtype: a file built by hand (not by kern's writer) with F16, BF16,
// F32, F64, I8, I16, I32, I64, U8 and BOOL tensors, a scalar and an empty tensor sharing its
// offset; its values, its byte-for-byte round trip through kern's writer, `kern inspect` on
// it, and loading a BF16 checkpoint into a float32 model.
#include <catch2/catch.hpp>
#include <cmath>
#include <array>
#include <cstring>
#include <kern/io/checkpoint.hpp>
#include <kern/io/safetensors.hpp>
#include <kern/kern.hpp>

#include "io_test_util.hpp"

using namespace kern;
using namespace kern::test;

namespace {

/// Little-endian bytes of `values` as type T.
template <typename T>
std::string le(std::initializer_list<T> values) {
  std::string out;
  for (T v : values) {
    unsigned char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // the host is little-endian (kern static_asserts it)
    out.append(reinterpret_cast<const char*>(b), sizeof(T));
  }
  return out;
}

/// The file: header JSON written out by hand in the canonical layout of kern's writer (keys
/// sorted, compact, padded with spaces to a multiple of 8; data grouped by element size 8, 4,
/// 2, 1, by name within a group). "empty" ([0, 3], F32) has data_offsets [32, 32], the start
/// of "f32".
std::string hand_made_file() {
  std::string header =
      R"({"__metadata__":{"format":"pt","note":"hand made"},)"
      R"("bf16":{"data_offsets":[64,70],"dtype":"BF16","shape":[3]},)"
      R"("bool":{"data_offsets":[82,85],"dtype":"BOOL","shape":[3]},)"
      R"("empty":{"data_offsets":[32,32],"dtype":"F32","shape":[0,3]},)"
      R"("f16":{"data_offsets":[70,78],"dtype":"F16","shape":[2,2]},)"
      R"("f32":{"data_offsets":[32,48],"dtype":"F32","shape":[2,2]},)"
      R"("f64":{"data_offsets":[0,16],"dtype":"F64","shape":[2]},)"
      R"("i16":{"data_offsets":[78,82],"dtype":"I16","shape":[2]},)"
      R"("i32":{"data_offsets":[48,60],"dtype":"I32","shape":[3]},)"
      R"("i64":{"data_offsets":[16,32],"dtype":"I64","shape":[2]},)"
      R"("i8":{"data_offsets":[85,88],"dtype":"I8","shape":[3]},)"
      R"("scalar":{"data_offsets":[60,64],"dtype":"F32","shape":[]},)"
      R"("u8":{"data_offsets":[88,90],"dtype":"U8","shape":[2]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string data;
  data += le<double>({1.5, -0.25});                                   // f64   [0, 16)
  data += le<int64_t>({-5, int64_t{1} << 40});                        // i64   [16, 32)
  data += le<float>({1.0f, -2.0f, 0.5f, 3.25f});                      // f32   [32, 48)
  data += le<int32_t>({-7, 2147483647, -2147483647 - 1});             // i32   [48, 60)
  data += le<float>({42.5f});                                         // scalar [60, 64)
  data += le<uint16_t>({0x3F80, 0xC0A0, 0x3EAB});                     // bf16  [64, 70)
  data += le<uint16_t>({0x3C00, 0xC500, 0x0001, 0x7BFF});             // f16   [70, 78)
  data += le<int16_t>({-300, 32767});                                 // i16   [78, 82)
  data += le<uint8_t>({1, 0, 1});                                     // bool  [82, 85)
  data += le<int8_t>({-128, 0, 127});                                 // i8    [85, 88)
  data += le<uint8_t>({0, 255});                                      // u8    [88, 90)
  REQUIRE(data.size() == 90);
  std::string out = le<uint64_t>({header.size()});
  return out + header + data;
}

/// Values of 16-bit float bit patterns from the formats' definitions (not kern's decoders).
double bf16_value(uint16_t b) {
  const int e = (b >> 7) & 0xFF, m = b & 0x7F;
  const double s = (b & 0x8000) ? -1 : 1;
  return e == 0 ? s * std::ldexp(m, -133) : s * std::ldexp(128 + m, e - 127 - 7);  // finite only
}

/// The line of `kern inspect` output for tensor `name` (starts with two spaces and the name).
std::string inspect_line(const std::string& out, const std::string& name) {
  const size_t at = out.find("\n  " + name + " ");
  if (at == std::string::npos) return "(no line for " + name + ")";
  return out.substr(at + 1, out.find('\n', at + 1) - at - 1);
}
double f16_value(uint16_t h) {
  const int e = (h >> 10) & 0x1F, m = h & 0x3FF;
  const double s = (h & 0x8000) ? -1 : 1;
  return e == 0 ? s * std::ldexp(m, -24) : s * std::ldexp(1024 + m, e - 25);
}

}  // namespace

TEST_CASE("a hand-made safetensors file of every dtype reads, round-trips and inspects",
          "[safetensors][dtype]") {
  TempDir dir;
  const std::string path = dir.file("all_dtypes.safetensors");
  const std::string bytes = hand_made_file();
  write_bytes(path, bytes);

  for (bool copy : {false, true}) {
    const io::SafetensorsFile f = io::load_safetensors(path, {.copy = copy});
    REQUIRE(f.tensors.size() == 12);
    REQUIRE(f.metadata.at("note") == "hand made");
    auto check = [&](const std::string& name, DType dt, const Shape& shape, const std::vector<double>& want) {
      INFO(name);
      const Tensor t = f.get(name);
      REQUIRE(t.dtype() == dt);
      REQUIRE(t.shape() == shape);
      REQUIRE(t.to_vector<double>() == want);
    };
    check("f64", DType::Float64, {2}, {1.5, -0.25});
    check("i64", DType::Int64, {2}, {-5, 1099511627776.0});
    check("f32", DType::Float32, {2, 2}, {1, -2, 0.5, 3.25});
    check("i32", DType::Int32, {3}, {-7, 2147483647, -2147483648.0});
    check("scalar", DType::Float32, {}, {42.5});
    check("empty", DType::Float32, {0, 3}, {});
    check("bf16", DType::BFloat16, {3}, {bf16_value(0x3F80), bf16_value(0xC0A0), bf16_value(0x3EAB)});
    check("bf16", DType::BFloat16, {3}, {1.0, -5.0, 171.0 / 512});
    check("f16", DType::Float16, {2, 2}, {f16_value(0x3C00), f16_value(0xC500), f16_value(0x0001), f16_value(0x7BFF)});
    check("f16", DType::Float16, {2, 2}, {1.0, -5.0, std::ldexp(1.0, -24), 65504.0});
    check("i16", DType::Int16, {2}, {-300, 32767});
    check("bool", DType::Bool, {3}, {1, 0, 1});
    check("i8", DType::Int8, {3}, {-128, 0, 127});
    check("u8", DType::UInt8, {2}, {0, 255});
    REQUIRE(f.get("i64").to_vector<int64_t>()[1] == int64_t{1} << 40);

    // Byte for byte through kern's writer (tensors in name order, as loaded).
    REQUIRE(io::save_safetensors_to_bytes(f.tensors, f.metadata) == bytes);
    const std::string again = dir.file(copy ? "again_copy.safetensors" : "again.safetensors");
    io::save_safetensors(again, f.tensors, f.metadata);
    REQUIRE(read_bytes(again) == bytes);
  }

  // Converting on request: floating tensors to float32, integer and bool ones kept.
  io::LoadOptions to_f32;
  to_f32.float_dtype = DType::Float32;
  const io::SafetensorsFile g = io::load_safetensors(path, to_f32);
  REQUIRE(g.get("bf16").dtype() == DType::Float32);
  REQUIRE(g.get("bf16").to_vector<double>() == std::vector<double>{1.0, -5.0, 171.0 / 512});
  REQUIRE(g.get("f64").dtype() == DType::Float32);
  REQUIRE(g.get("f16").to_vector<double>()[3] == 65504.0);
  REQUIRE(g.get("i8").dtype() == DType::Int8);
  REQUIRE(g.get("bool").dtype() == DType::Bool);

  // kern inspect lists every tensor with its dtype and shape, and exits 0.
  const RunResult r = run_program({kKern, "inspect", path}, dir);
  INFO(r.out << r.err);
  REQUIRE(r.exited);
  REQUIRE(r.status == 0);
  REQUIRE_THAT(r.out, Catch::Contains("tensors: 12 (90 bytes of data)") && Catch::Contains("note: hand made"));
  const std::vector<std::array<std::string, 3>> rows = {
      {"bf16", "bfloat16", "[3]"},   {"bool", "bool", "[3]"},    {"empty", "float32", "[0, 3]"},
      {"f16", "float16", "[2, 2]"},  {"f32", "float32", "[2, 2]"}, {"f64", "float64", "[2]"},
      {"i16", "int16", "[2]"},       {"i32", "int32", "[3]"},    {"i64", "int64", "[2]"},
      {"i8", "int8", "[3]"},         {"scalar", "float32", "[]"}, {"u8", "uint8", "[2]"}};
  for (const auto& [name, dtype, shape] : rows)
    REQUIRE_THAT(inspect_line(r.out, name), Catch::Contains(" " + dtype + " ") && Catch::Contains(" " + shape + " ") &&
                                                Catch::Contains("crc32="));
  // Checksums of the converted values: bf16 sums 1 - 5 + 171/512; bool sums to 2.
  REQUIRE_THAT(r.out, Catch::Contains("sum=-3.666015625 ") && Catch::Contains("abs_sum=6.333984375 "));
  REQUIRE_THAT(r.out, Catch::Contains("sum=2 "));
}

TEST_CASE("kern inspect lists dtypes kern cannot hold; load_safetensors names them",
          "[safetensors][dtype]") {
  TempDir dir;
  // C64 (complex64: 8 bytes), an unknown future dtype "F17", and a U16 that kern stores raw.
  std::string header =
      R"({"c":{"data_offsets":[0,8],"dtype":"C64","shape":[1]},)"
      R"("new":{"data_offsets":[8,11],"dtype":"F17","shape":[3, 1]},)"
      R"("u":{"data_offsets":[11,15],"dtype":"U16","shape":[2]}})";
  std::string data = le<float>({1.0f, 2.0f}) + std::string("abc") + le<uint16_t>({65535, 7});
  const std::string path = dir.file("odd.safetensors");
  write_bytes(path, le<uint64_t>({header.size()}) + header + data);

  const RunResult r = run_program({kKern, "inspect", path}, dir);
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  REQUIRE_THAT(inspect_line(r.out, "c"), Catch::Contains(" C64 ") && Catch::Contains("8 bytes; dtype not supported"));
  REQUIRE_THAT(inspect_line(r.out, "new"), Catch::Contains(" F17 ") && Catch::Contains(" [3, 1] ") &&
                                               Catch::Contains("3 bytes; dtype not supported by kern"));
  REQUIRE_THAT(inspect_line(r.out, "u"), Catch::Contains(" uint16 ") && Catch::Contains("sum=65542 "));
  // Loading rejects the file, naming the tensor and the dtype (as before).
  REQUIRE_THROWS_WITH(io::load_safetensors(path), Catch::Contains("tensor 'c'") && Catch::Contains("C64"));
  // The listing still validates everything else: a hole in the data is an error.
  std::string holey = R"({"new":{"data_offsets":[1,3],"dtype":"F17","shape":[2]}})";
  const std::string bad = dir.file("bad.safetensors");
  write_bytes(bad, le<uint64_t>({holey.size()}) + holey + std::string("abc"));
  REQUIRE_THROWS_WITH(io::list_safetensors(bad), Catch::Contains("hole"));
  REQUIRE(run_program({kKern, "inspect", bad}, dir).status == 2);
}

TEST_CASE("a BF16 checkpoint loads into a float32 model in one call", "[safetensors][dtype]") {
  TempDir dir;
  Generator gen(3);
  nn::Linear src(4, 3);
  io::NamedTensors bf;
  for (const auto& [name, t] : src.state_dict()) bf.emplace_back(name, t.to(DType::BFloat16));
  const std::string path = dir.file("bf16.safetensors");
  io::save_safetensors(path, bf);
  REQUIRE(io::load_safetensors(path).get("weight").dtype() == DType::BFloat16);

  // Module::load_state_dict copies into each parameter's dtype (as torch's copy_).
  nn::Linear a(4, 3);
  a.load_state_dict(io::load_safetensors(path).tensors, true);
  // And the file-level loader does the same in one call.
  nn::Linear b(4, 3);
  io::load_state_dict(path, b, io::RecordsPolicy::Ignore);
  for (nn::Linear* m : {&a, &b})
    for (const auto& [name, t] : m->state_dict()) {
      INFO(name);
      REQUIRE(t.dtype() == DType::Float32);
      // Expected: each float32 value rounded to bf16 by the formula of the format, in double.
      const auto orig = src.state_dict();
      std::vector<double> want;
      for (const auto& [n2, o] : orig)
        if (n2 == name)
          for (float v : o.to_vector<float>()) {
            uint32_t x;
            std::memcpy(&x, &v, 4);
            want.push_back(bf16_value(static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16)));
          }
      REQUIRE(t.to_vector<double>() == want);
    }
}
