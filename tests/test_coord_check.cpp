// Coordinate check (the mup library's pass criteria): MLP 3 -> width -> width -> 10 trained
// with Adam for 3 steps on one fixed batch of random inputs, widths 128..2048.
//   muP (readout zero-initialized, as mup's own coord checks): every layer's |slope| < 0.1
//   and the largest-width ratio in [1/1.2, 1.2] at t = 2 and t = 3.
//   SP (PyTorch defaults) with Adam: the output layer's slope > 0.4 at t = 2 (it blows up).
#include <catch2/catch.hpp>

#include <kern/kern.hpp>
#include <kern/param/param.hpp>
#include <kern/tools/coord_check.hpp>

#include <filesystem>
#include <fstream>

namespace nn = kern::nn;
namespace param = kern::param;
namespace tools = kern::tools;
using kern::Tensor;

namespace {

constexpr int64_t kIn = 256, kOut = 10, kBase = 256, kBatch = 128;
const std::vector<int64_t> kWidths = {128, 256, 512, 1024, 2048};

std::shared_ptr<nn::Sequential> mlp(int64_t w) {
  auto l0 = std::make_shared<nn::Linear>(kIn, w);
  auto l2 = std::make_shared<nn::Linear>(w, w);
  auto l4 = std::make_shared<nn::Linear>(w, kOut);
  return std::make_shared<nn::Sequential>(l0, std::make_shared<nn::ReLU>(), l2,
                                          std::make_shared<nn::ReLU>(), l4);
}

tools::CoordCheckOptions options(std::function<param::Preset(int64_t)> preset, double lr) {
  tools::CoordCheckOptions o;
  o.widths = kWidths;
  o.steps = 3;
  o.make_model = [preset](int64_t w) {
    auto m = mlp(w);
    param::apply(*m, preset(w));
    return std::static_pointer_cast<nn::Module>(m);
  };
  o.make_optimizer = tools::adam_with_records(lr);
  kern::Generator g(123);
  o.x = kern::randn({kBatch, kIn}, kern::DType::Float32, &g);
  o.y = kern::randint(0, kOut, {kBatch}, &g);
  return o;
}

}  // namespace

TEST_CASE("coord_check: muP is flat in width, SP's readout blows up (Adam)", "[coord_check][param]") {
  const double lr = 1e-2;
  auto mu = tools::coord_check(options(
      [](int64_t w) { return param::Preset::mup(w, kBase).zero_readout(); }, lr));
  auto sp = tools::coord_check(options([](int64_t) { return param::Preset::standard(); }, lr));
  fmt::print("coord check, muP (Adam lr {}):\n{}\ncoord check, SP:\n{}\n", lr, mu.table(), sp.table());

  REQUIRE(mu.modules() == std::vector<std::string>{"0", "1", "2", "3", "4"});
  // t = 1: the zero-initialized readout outputs exactly 0 at every width.
  CHECK(mu.verdict("4", 1).zero);
  for (int t : {2, 3}) {
    for (auto& m : mu.modules()) {
      const auto& v = mu.verdict(m, t);
      CAPTURE(m, t, v.slope, v.ratio);
      CHECK(std::abs(v.slope) < 0.1);
      CHECK(v.ratio > 1 / 1.2);
      CHECK(v.ratio < 1.2);
      CHECK(v.pass);
    }
  }
  CHECK(sp.verdict("4", 2).slope > 0.4);
  CHECK_FALSE(sp.verdict("4", 2).pass);

  // JSON lines and a PNG (matplotlib via /usr/bin/python3).
  const auto dir = std::filesystem::temp_directory_path() / "kern_coord_check_test";
  std::filesystem::create_directories(dir);
  const std::string jsonl = (dir / "coord.jsonl").string(), png = (dir / "coord.png").string();
  mu.write_jsonl(jsonl, "muP");
  sp.write_jsonl(jsonl, "SP", /*append=*/true);
  size_t lines = 0;
  {
    std::ifstream f(jsonl);
    for (std::string line; std::getline(f, line);) ++lines;
  }
  CHECK(lines == mu.stats.size() + mu.verdicts.size() + sp.stats.size() + sp.verdicts.size());
  std::filesystem::remove(png);
  if (std::filesystem::exists("/usr/bin/python3")) {
    CHECK(tools::plot_coord_check(jsonl, png, "MLP, Adam"));
    CHECK(std::filesystem::file_size(png) > 10000);
  }
}

TEST_CASE("coord_check: bad options throw", "[coord_check][errors]") {
  auto o = options([](int64_t) { return param::Preset::standard(); }, 1e-3);
  o.widths = {256};
  CHECK_THROWS_AS(tools::coord_check(o), kern::Error);
  o.widths = {512, 256};
  CHECK_THROWS_AS(tools::coord_check(o), kern::Error);
  o.widths = {128, 256};
  o.make_optimizer = nullptr;
  CHECK_THROWS_AS(tools::coord_check(o), kern::Error);
}
