// Parameterization records travel with the weights: JSON round trip, comparison that names
// what differs, and re-applying stored records without re-initializing.
#include <catch2/catch.hpp>

#include <kern/kern.hpp>
#include <kern/param/param.hpp>

namespace nn = kern::nn;
namespace param = kern::param;
using kern::Tensor;

namespace {

std::shared_ptr<nn::Sequential> mlp(int64_t w) {
  return std::make_shared<nn::Sequential>(nn::Linear(6, w), nn::ReLU(), nn::Linear(w, w), nn::ReLU(),
                                          nn::Linear(w, 3));
}

}  // namespace

TEST_CASE("param records: JSON round trip keeps every field", "[param][records]") {
  auto m = mlp(64);
  auto base = mlp(16), delta = mlp(32);
  const param::Records recs = param::apply(*m, param::Preset::mup(*base, *delta).zero_readout());
  const std::string text = param::to_json(recs);
  CHECK(text.find("\"scheme\":\"mup\"") != std::string::npos);
  const param::Records back = param::from_json(text, "test.safetensors");
  REQUIRE(back.size() == recs.size());
  for (size_t i = 0; i < recs.size(); ++i) {
    CAPTURE(recs[i].first);
    CHECK(back[i].first == recs[i].first);
    const auto &a = recs[i].second, &b = back[i].second;
    CHECK(a.scheme == b.scheme);
    CHECK(a.role == b.role);
    CHECK(a.fan_in == b.fan_in);
    CHECK(a.fan_out == b.fan_out);
    CHECK(a.base_fan_in == b.base_fan_in);
    CHECK(a.base_fan_out == b.base_fan_out);
    CHECK(a.base_shape == b.base_shape);
    CHECK(a.init == b.init);
    CHECK(a.init_std == b.init_std);
    CHECK(a.multiplier == b.multiplier);
    CHECK(a.depth_mult == b.depth_mult);
    CHECK(a.lr_mult_sgd == b.lr_mult_sgd);
    CHECK(a.lr_mult_adam == b.lr_mult_adam);
    CHECK(a.wd_mult_sgd == b.wd_mult_sgd);
    CHECK(a.wd_mult_adam == b.wd_mult_adam);
  }
  CHECK(param::compare(back, recs).empty());
}

TEST_CASE("param records: compare names the parameter and the field", "[param][records]") {
  auto a = mlp(64), b = mlp(64);
  auto base = mlp(16), delta = mlp(32);
  const auto mup = param::apply(*a, param::Preset::mup(*base, *delta));
  const auto ntk = param::apply(*b, param::Preset::ntk());
  const auto diff = param::compare(mup, ntk);
  REQUIRE(!diff.empty());
  bool readout = false;
  for (const auto& line : diff)
    if (line.rfind("4.weight:", 0) == 0) {
      readout = true;
      CHECK(line.find("scheme mup in the file, ntk in the model") != std::string::npos);
      CHECK(line.find("multiplier") != std::string::npos);
    }
  CHECK(readout);
  // Records on one side only.
  const auto none = param::compare(mup, {});
  CHECK(none.size() == mup.size());
  CHECK(none.front().find("the model has no record") != std::string::npos);
  CHECK(param::compare({}, ntk).front().find("the file has none") != std::string::npos);
}

TEST_CASE("param records: set_records re-applies stored records without touching the weights", "[param][records]") {
  auto a = mlp(64), b = mlp(64);
  auto base = mlp(16), delta = mlp(32);
  const auto recs = param::apply(*a, param::Preset::mup(*base, *delta));
  b->load_state_dict(a->state_dict());
  const Tensor before = b->at<nn::Linear>(4)->weight.tensor().clone();
  param::set_records(*b, param::from_json(param::to_json(recs)));
  CHECK(kern::max_abs_diff(b->at<nn::Linear>(4)->weight.tensor(), before) == 0.0);
  CHECK(param::compare(param::records(*b), recs).empty());
  const Tensor x = kern::randn({5, 6});
  CHECK(kern::max_abs_diff((*a)(x), (*b)(x)) == 0.0);  // same multipliers, same function
  CHECK_THROWS_WITH(param::set_records(*b, {{"nope.weight", param::ParamRecord{}}}),
                    Catch::Contains("has no parameter 'nope.weight'"));
}

TEST_CASE("param records: malformed metadata names the file, parameter and field", "[param][records][errors]") {
  CHECK_THROWS_WITH(param::from_json("not json", "f.safetensors"),
                    Catch::Contains("f.safetensors") && Catch::Contains("not a JSON object"));
  CHECK_THROWS_WITH(param::from_json(R"({"params": {"w": {"scheme": "mup"}}})", "f.safetensors"),
                    Catch::Contains("record of 'w' has no field 'role'"));
  CHECK_THROWS_WITH(param::from_json(R"({"params": {"w": {"scheme": "bogus"}}})", "f.safetensors"),
                    Catch::Contains("unknown scheme 'bogus'"));
  auto m = mlp(8);
  std::string good = param::to_json(param::apply(*m, param::Preset::ntk()));
  const std::string bad = good.replace(good.find("\"multiplier\":"), 13, "\"multiplier\":\"x\",\"_\":");
  CHECK_THROWS_WITH(param::from_json(bad, "f.safetensors"), Catch::Contains("'multiplier' must be a finite number"));
}
