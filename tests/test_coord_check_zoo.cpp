// muP on the zoo: the mup library's coordinate check (tools::coord_check) on small members of
// each family, widths spanning 8x, 3 Adam steps on one fixed batch. Under muP (base shapes from
// the model at the smallest width, readout zero-initialized as in mup's checks) every block's
// output and the logits stay flat in width (|slope of log mean|x| against log width| < 0.1 at
// t = 1..3); under SP with the same Adam lr the logits grow with width (slope > 0.4 at t = 2),
// which is the failure muP fixes.
#include <catch2/catch.hpp>

#include <kern/kern.hpp>
#include <kern/models/models.hpp>
#include <kern/tools/coord_check.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

namespace nn = kern::nn;
namespace models = kern::models;
namespace tools = kern::tools;
using kern::Tensor;

namespace {

using Build = std::function<std::shared_ptr<nn::Module>(int64_t width)>;

tools::CoordCheckResult run(const Build& build, const std::string& scheme, const std::vector<int64_t>& widths,
                            const Tensor& x, const Tensor& y, int nseeds) {
  tools::CoordCheckOptions o;
  o.widths = widths;
  o.steps = 3;
  o.nseeds = nseeds;
  o.make_model = tools::parameterized(build, scheme, widths.front(), /*zero_readout=*/true);
  o.make_optimizer = tools::adam_with_records(1e-3);
  o.x = x;
  o.y = y;
  o.filter = tools::blocks_and_output;
  return tools::coord_check(o);
}

// A residual block of the family: "<prefix><n>" with nothing after the block index
// (stages.0.blocks.1 for prefix "blocks.", layers.2 for "layers.").
bool is_block(const std::string& m, const std::string& prefix) {
  const size_t at = m.rfind(prefix);
  if (at == std::string::npos || (at > 0 && m[at - 1] != '.')) return false;
  const std::string index = m.substr(at + prefix.size());
  return !index.empty() && std::all_of(index.begin(), index.end(), [](char c) { return c >= '0' && c <= '9'; });
}

void check_family(const std::string& family, const Build& build, const std::vector<int64_t>& widths,
                  const Tensor& x, const Tensor& y, const std::string& block_prefix, int nseeds = 1) {
  kern::set_num_threads(2);
  const auto mu = run(build, "mup", widths, x, y, nseeds);
  INFO(family << " muP:\n" << mu.table());
  int blocks = 0;
  for (const auto& v : mu.verdicts) {
    const bool block = is_block(v.module, block_prefix);
    if (!block && v.module != "") continue;  // blocks and the logits
    blocks += block;
    CAPTURE(v.module, v.t, v.slope);
    CHECK(std::abs(v.slope) < 0.1);
  }
  CHECK(blocks >= 3 * 3);  // at least 3 blocks at each of the 3 steps
  const auto sp = run(build, "sp", widths, x, y, nseeds);
  INFO(family << " SP:\n" << sp.table());
  CHECK(sp.verdict("", 2).slope > 0.4);
}

}  // namespace

TEST_CASE("coord_check on the zoo: ConvNeXt under muP is flat in width, SP's logits grow", "[coord_check][models][param]") {
  kern::Generator g(1);
  const Tensor x = kern::randn({4, 1, 32, 32}, kern::DType::Float32, &g);
  const Tensor y = kern::randint(0, 10, {4}, &g);
  check_family("convnext", [](int64_t w) {
    return std::make_shared<models::ConvNeXt>(models::ConvNeXtOptions{
        .depths = {1, 1, 2, 1}, .dims = {w, 2 * w, 4 * w, 8 * w}, .num_classes = 10, .in_chans = 1});
  }, {8, 16, 32, 64}, x, y, "blocks.");
}

TEST_CASE("coord_check on the zoo: InceptionNeXt under muP is flat in width, SP's logits grow", "[coord_check][models][param]") {
  kern::Generator g(2);
  const Tensor x = kern::randn({4, 1, 32, 32}, kern::DType::Float32, &g);
  const Tensor y = kern::randint(0, 10, {4}, &g);
  check_family("inception_next", [](int64_t w) {
    return std::make_shared<models::InceptionNeXt>(models::InceptionNeXtOptions{
        .depths = {1, 1, 2, 1}, .dims = {w, 2 * w, 4 * w, 8 * w}, .num_classes = 10, .in_chans = 1});
  }, {8, 16, 32, 64}, x, y, "blocks.");
}

TEST_CASE("coord_check on the zoo: p4cnn under muP is flat in width, SP's logits grow", "[coord_check][models][param][equivariant]") {
  kern::Generator g(3);
  const Tensor x = kern::randn({8, 1, 12, 12}, kern::DType::Float32, &g);
  const Tensor y = kern::randint(0, 10, {8}, &g);
  // Through the registry: p4cnn's channels scaled by width_mult.
  check_family("p4cnn", [](int64_t w) {
    return models::create_model_at_width("p4cnn", w, {.num_classes = 10, .in_chans = 1});
  }, {4, 8, 16, 32}, x, y, "blocks.", 2);
}

TEST_CASE("coord_check on the zoo: a long-conv model under muP is flat in width, SP's logits grow", "[coord_check][models][param][longconv]") {
  kern::Generator g(4);
  const Tensor x = kern::randn({16, 64, 1}, kern::DType::Float32, &g);
  const Tensor y = kern::randint(0, 10, {16}, &g);
  check_family("longconv", [](int64_t w) {
    return std::make_shared<models::LongConvModel>(models::LongConvModelOptions{
        .d_input = 1, .d_model = w, .n_layers = 3, .l_max = 64, .num_classes = 10});
  }, {16, 32, 64, 128}, x, y, "layers.", 2);
}
