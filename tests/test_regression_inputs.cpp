// Regression inputs (tests/data/regression/, made by tests/data/make_regression.py, plus the
// crash inputs the fuzzers of fuzz/ found): every file is fed to its reader, which must throw
// the expected kern::Error naming the file, or load it. A checkpoint that fails to load must
// leave the model, the optimizer and the default generator exactly as they were.
#include <kern/kern.hpp>
#include <kern/optim/optim.hpp>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

using namespace kern;
namespace fs = std::filesystem;

namespace {

const std::string kDir = std::string(KERN_TEST_DATA_DIR) + "/regression";

struct Expected {
  std::string reader, error;
};

std::map<std::string, Expected> regression_files() {
  std::ifstream in(kDir + "/expected.json");
  REQUIRE(in.good());
  const auto j = nlohmann::json::parse(in);
  std::map<std::string, Expected> out;
  for (const auto& [name, v] : j.items())
    out[name] = {v.at("reader").get<std::string>(), v.at("error").get<std::string>()};
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no kern::Error)";
}

// The model of make_regression.py: Sequential(Linear(2, 3), BatchNorm2d(3)) with Adam over
// its parameters, stepped once so that every parameter has Adam state.
struct Trainee {
  std::shared_ptr<nn::Sequential> model =
      std::make_shared<nn::Sequential>(nn::Linear(2, 3), nn::BatchNorm2d(3));
  optim::Adam opt{model->parameters(), {.lr = 0.01}};
  Trainee() {
    for (auto p : model->parameters()) p.set_grad(ones_like(p));
    opt.step();
    opt.zero_grad();
  }
};

// Everything a checkpoint load may change, copied.
struct Snapshot {
  std::vector<std::pair<std::string, Tensor>> model, optim;
  std::string rng;
  explicit Snapshot(const Trainee& t) : rng(default_generator().state()) {
    NoGradGuard ng;
    for (auto& [n, v] : t.model->state_dict()) model.emplace_back(n, v.clone());
    for (auto& [n, v] : t.opt.state_dict()) optim.emplace_back(n, v.clone());
  }
};

void require_same(const std::vector<std::pair<std::string, Tensor>>& a,
                  const std::vector<std::pair<std::string, Tensor>>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    REQUIRE(a[i].first == b[i].first);
    REQUIRE(a[i].second.dtype() == b[i].second.dtype());
    REQUIRE(a[i].second.shape() == b[i].second.shape());
    REQUIRE(max_abs_diff(a[i].second, b[i].second) == 0.0);
  }
}

}  // namespace

TEST_CASE("every regression input gives its expected error or loads", "[regression][errors]") {
  const auto files = regression_files();
  size_t on_disk = 0;
  for (const auto& e : fs::directory_iterator(kDir))
    if (e.path().filename() != "expected.json") {
      INFO(e.path().string());
      REQUIRE(files.count(e.path().filename().string()));  // expected.json lists every file
      ++on_disk;
    }
  REQUIRE(on_disk == files.size());
  size_t by_reader[3] = {0, 0, 0};
  for (const auto& [name, want] : files) {
    const std::string path = kDir + "/" + name;
    INFO(path);
    std::function<void()> read;
    std::optional<Trainee> t;  // outlives `read`
    if (want.reader == "idx") {
      ++by_reader[0];
      read = [&] {
        Tensor t = data::read_idx(path);
        // What crashed before: the first row of a tensor whose numel had wrapped to 0; the
        // last row of an empty tensor with huge sizes (its offset overflowed).
        (void)t.to(DType::Float64).sum().item();  // overflowed the reduced count once
        if (t.dim() > 0 && t.size(0) > 0) {
          (void)t.select(0, 0).to(DType::Float64).sum().item();
          (void)t.select(0, t.size(0) - 1).contiguous();
          (void)flip(t, {0});
        }
      };
    } else if (want.reader == "safetensors") {
      ++by_reader[1];
      read = [&] {
        for (const auto& [n, t] : io::load_safetensors(path).tensors) (void)io::checksum(t);
      };
    } else {
      REQUIRE(want.reader == "checkpoint");
      ++by_reader[2];
      manual_seed(77);
      t.emplace();
      const Snapshot before(*t);
      read = [&] { io::load_checkpoint(path, *t->model, t->opt); };
      if (!want.error.empty()) {
        const std::string msg = error_of(read);
        REQUIRE_THAT(msg, Catch::Contains(want.error) && Catch::Contains(path));
        const Snapshot after(*t);  // all or nothing: nothing changed
        require_same(before.model, after.model);
        require_same(before.optim, after.optim);
        REQUIRE(before.rng == after.rng);
        continue;
      }
    }
    if (want.error.empty()) {
      REQUIRE_NOTHROW(read());
    } else {
      const std::string msg = error_of(read);
      REQUIRE_THAT(msg, Catch::Contains(want.error) && Catch::Contains(path));
    }
  }
  REQUIRE(by_reader[0] >= 2);  // the IDX overflow inputs
  REQUIRE(by_reader[1] >= 1);  // the [2^62, 0] file
  REQUIRE(by_reader[2] >= 10);
}

TEST_CASE("the good regression checkpoint loads every field", "[regression][checkpoint]") {
  const std::string path = kDir + "/ckpt_good.safetensors";
  manual_seed(1);
  Trainee t;
  REQUIRE(io::load_checkpoint(path, *t.model, t.opt) == 5);
  // Values written by make_regression.py: parameter i holds 0.25 * (i + 1).
  const auto params = t.model->parameters();
  REQUIRE(params.size() == 4);
  for (size_t i = 0; i < params.size(); ++i)
    for (float v : params[i].to_vector<float>()) REQUIRE(v == 0.25f * static_cast<float>(i + 1));
  REQUIRE(t.opt.lr() == 0.001);
  for (const auto& [n, v] : t.opt.state_dict()) {
    INFO(n);
    if (n.ends_with(".exp_avg")) REQUIRE(v.to_vector<double>() == std::vector<double>(v.numel(), 0.5));
    if (n.ends_with(".step")) REQUIRE(v.item() == 1.0);
  }
  // The generator state is the file's text, word for word.
  REQUIRE(default_generator().state() ==
          io::load_safetensors(path).metadata.at("kern.rng_state"));
}

TEST_CASE("the IDX overflow inputs fail fast with the file's name", "[regression][sizes]") {
  for (const char* name : {"idx_sizes_2p31_2p31_4.idx", "idx_sizes_2p31_2p31_2.idx"}) {
    const std::string path = kDir + "/" + name;
    INFO(path);
    REQUIRE_THROWS_WITH(data::read_idx(path), Catch::Contains(path) &&
                                                   Catch::Contains("[2147483648, 2147483648") &&
                                                   Catch::Contains("int64"));
  }
  // Sizes at the format's limit with one 0: an empty tensor of that shape, instantly.
  const auto t0 = std::chrono::steady_clock::now();
  Tensor t = data::read_idx(kDir + "/idx_sizes_max_max_0.idx");
  REQUIRE(t.shape() == Shape{4294967295, 4294967295, 0});
  REQUIRE(t.numel() == 0);
  REQUIRE(t.is_contiguous());
  REQUIRE(t.sum().item() == 0.0);
  REQUIRE(t.select(0, 7).numel() == 0);
  REQUIRE(t.permute({2, 0, 1}).contiguous().numel() == 0);
  REQUIRE(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
}
