// The zoo registry: create_model by name, wildcard listing, errors that name the problem.
#include <catch2/catch.hpp>
#include <kern/kern.hpp>
#include <kern/models/models.hpp>

using namespace kern;
namespace models = kern::models;

namespace {
// A test-only family: Linear(in_chans, num_classes), so the options visibly reach the factory.
KERN_REGISTER_MODEL("test_registry_linear", [](const models::ModelOptions& o) {
  return std::static_pointer_cast<nn::Module>(std::make_shared<nn::Linear>(o.in_chans, o.num_classes));
});
KERN_REGISTER_MODEL("test_registry_linear_wide", [](const models::ModelOptions& o) {
  return std::static_pointer_cast<nn::Module>(std::make_shared<nn::Linear>(o.in_chans, 2 * o.num_classes));
});
}  // namespace

TEST_CASE("create_model builds a registered model with the given options", "[models][registry]") {
  REQUIRE(models::has_model("test_registry_linear"));
  auto m = models::create_model("test_registry_linear", {.num_classes = 7, .in_chans = 5});
  REQUIRE(m->get_parameter("weight").shape() == Shape{7, 5});
  auto w = models::create_model("test_registry_linear_wide", {.num_classes = 3, .in_chans = 2});
  REQUIRE(w->get_parameter("weight").shape() == Shape{6, 2});
}

TEST_CASE("list_models filters with '*' wildcards and sorts", "[models][registry]") {
  auto both = models::list_models("test_registry_*");
  REQUIRE(both == std::vector<std::string>{"test_registry_linear", "test_registry_linear_wide"});
  REQUIRE(models::list_models("*_wide") == std::vector<std::string>{"test_registry_linear_wide"});
  REQUIRE(models::list_models("test_registry_linear") == std::vector<std::string>{"test_registry_linear"});
  REQUIRE(models::list_models("no_such_family_*").empty());
  auto all = models::list_models();
  REQUIRE(std::is_sorted(all.begin(), all.end()));
  REQUIRE(all.size() >= 2);
}

TEST_CASE("create_model rejects unknown names and bad options", "[models][registry][errors]") {
  try {
    models::create_model("test_registry_lineer");
    FAIL("expected kern::Error");
  } catch (const Error& e) {
    const std::string msg = e.what();
    REQUIRE(msg.find("unknown model 'test_registry_lineer'") != std::string::npos);
    REQUIRE(msg.find("closest: test_registry_linear") != std::string::npos);
  }
  REQUIRE_THROWS_WITH(models::create_model("test_registry_linear", {.num_classes = -1}),
                      Catch::Contains("num_classes must be >= 0"));
  REQUIRE_THROWS_WITH(models::create_model("test_registry_linear", {.drop_path_rate = 1.0}),
                      Catch::Contains("drop_path_rate must be in [0, 1)"));
  REQUIRE_THROWS_WITH(models::register_model("test_registry_linear", [](const models::ModelOptions&) {
                        return std::shared_ptr<nn::Module>();
                      }),
                      Catch::Contains("already registered"));
}
