// Parameterization records are saved with the weights (metadata "kern.param") and checked
// when loading: a muP checkpoint does not load silently into a model built without muP (it
// would compute other logits), RecordsPolicy::Apply takes the file's records, and a failed
// load changes nothing. Same for the model-only files of io::save_state_dict / io::load_state_dict.
#include <catch2/catch.hpp>

#include <kern/io/checkpoint.hpp>
#include <kern/kern.hpp>
#include <kern/optim/adam.hpp>
#include <kern/optim/param_groups.hpp>
#include <kern/optim/sgd.hpp>
#include <kern/param/param.hpp>

#include "io_test_util.hpp"

namespace nn = kern::nn;
namespace io = kern::io;
namespace param = kern::param;
namespace optim = kern::optim;
using kern::Tensor;

namespace {

std::shared_ptr<nn::Sequential> mlp(int64_t w) {
  return std::make_shared<nn::Sequential>(nn::Linear(6, w), nn::ReLU(), nn::Linear(w, w), nn::ReLU(),
                                          nn::Linear(w, 3));
}

// A width-64 MLP under muP (base 16, delta 32): readout multiplier 16/64, Adam lr 1/4 on the
// hidden and readout weights.
std::shared_ptr<nn::Sequential> mup_mlp() {
  auto m = mlp(64);
  auto base = mlp(16), delta = mlp(32);
  param::apply(*m, param::Preset::mup(*base, *delta));
  return m;
}

std::vector<Tensor> values(const nn::Module& m) {
  std::vector<Tensor> out;
  for (const auto& [n, t] : m.state_dict()) out.push_back(t.clone());
  return out;
}

bool same_values(const nn::Module& m, const std::vector<Tensor>& before) {
  const auto sd = m.state_dict();
  for (size_t i = 0; i < sd.size(); ++i)
    if (kern::max_abs_diff(sd[i].second, before[i]) != 0.0) return false;
  return true;
}

// One AdamW step on a fixed batch, so the checkpoint carries optimizer state.
void train_step(nn::Module& m, optim::AdamW& opt) {
  kern::Generator g(7);
  const Tensor x = kern::randn({8, 6}, kern::DType::Float32, &g);
  const Tensor y = kern::randn({8, 3}, kern::DType::Float32, &g);
  opt.zero_grad();
  kern::mse_loss(m.forward(x), y).backward();
  opt.step();
}

}  // namespace

TEST_CASE("checkpoint records: a muP checkpoint does not load into a model without muP", "[checkpoint][records]") {
  kern::test::TempDir dir;
  const std::string path = dir.file("mup.safetensors");
  auto saved = mup_mlp();
  optim::AdamW opt(optim::param_groups(*saved, {.family = optim::Family::Adam}), {.lr = 1e-3});
  train_step(*saved, opt);
  io::save_checkpoint(path, *saved, opt, 1);
  REQUIRE(io::read_checkpoint(path).records.has_value());
  REQUIRE(io::read_checkpoint(path).records->size() == param::records(*saved).size());

  auto fresh = mlp(64);  // what create_model gives: no records
  optim::AdamW opt_fresh(fresh->parameters(), {.lr = 1e-3});
  const auto before = values(*fresh);
  const size_t opt_entries = opt_fresh.state_dict().size();
  kern::default_generator().manual_seed(12345);
  const std::string rng_marked = kern::default_generator().state();
  CHECK_THROWS_WITH(io::load_checkpoint(path, *fresh, opt_fresh),
                    Catch::Contains(path) && Catch::Contains("parameterization records") &&
                        Catch::Contains("4.weight: the file records mup / output") &&
                        Catch::Contains("RecordsPolicy::Apply"));
  // Nothing changed: weights, records, optimizer state, generator.
  CHECK(same_values(*fresh, before));
  CHECK(param::records(*fresh).empty());
  CHECK(opt_fresh.state_dict().size() == opt_entries);
  CHECK(kern::default_generator().state() == rng_marked);

  // Why the check exists: the same values without the records compute other logits.
  const Tensor x = kern::randn({4, 6});
  const Tensor want = (*saved)(x);
  auto ignored = mlp(64);
  optim::AdamW opt_ignored(ignored->parameters(), {.lr = 1e-3});
  io::load_checkpoint(path, *ignored, opt_ignored, {.records = io::RecordsPolicy::Ignore});
  CHECK(param::records(*ignored).empty());
  CHECK(kern::max_abs_diff((*ignored)(x), want) > 1e-3);

  // Apply: the model takes the file's records and computes exactly what was saved.
  auto applied = mlp(64);
  optim::AdamW opt_applied(applied->parameters(), {.lr = 1e-3});
  REQUIRE(io::load_checkpoint(path, *applied, opt_applied, {.records = io::RecordsPolicy::Apply}) == 1);
  CHECK(param::compare(param::records(*applied), param::records(*saved)).empty());
  CHECK(kern::max_abs_diff((*applied)(x), want) == 0.0);

  // A model given the same parameterization (other initial values) loads under Check.
  auto same = mup_mlp();
  optim::AdamW opt_same(optim::param_groups(*same, {.family = optim::Family::Adam}), {.lr = 1e-3});
  REQUIRE(io::load_checkpoint(path, *same, opt_same) == 1);
  CHECK(kern::max_abs_diff((*same)(x), want) == 0.0);
}

TEST_CASE("checkpoint records: the check compares behaviour, in both directions", "[checkpoint][records]") {
  kern::test::TempDir dir;
  // SP records change nothing: an SP checkpoint loads into a model without records.
  auto sp = mlp(32);
  param::apply(*sp, param::Preset::standard());
  optim::SGD sgd(sp->parameters(), {.lr = 0.1});
  const std::string sp_path = dir.file("sp.safetensors");
  io::save_checkpoint(sp_path, *sp, sgd);
  auto plain = mlp(32);
  optim::SGD sgd_plain(plain->parameters(), {.lr = 0.1});
  CHECK_NOTHROW(io::load_checkpoint(sp_path, *plain, sgd_plain));

  // A checkpoint without records into a muP model: the model's records are not in the file.
  const std::string plain_path = dir.file("plain.safetensors");
  auto plain64 = mlp(64);
  io::save_checkpoint(plain_path, *plain64, optim::SGD(plain64->parameters(), {.lr = 0.1}));
  CHECK_FALSE(io::read_checkpoint(plain_path).records.has_value());
  auto m = mup_mlp();
  optim::SGD sgd_m(m->parameters(), {.lr = 0.1});
  CHECK_THROWS_WITH(io::load_checkpoint(plain_path, *m, sgd_m), Catch::Contains("the file has none"));
  // Apply with a file that has no records clears the model's.
  io::load_checkpoint(plain_path, *m, sgd_m, {.records = io::RecordsPolicy::Apply});
  CHECK(param::records(*m).empty());

  // NTK vs muP: every differing parameter named with the differing field.
  auto ntk = mlp(64);
  param::apply(*ntk, param::Preset::ntk());
  const std::string ntk_path = dir.file("ntk.safetensors");
  io::save_state_dict(ntk_path, *ntk);
  auto mup = mup_mlp();
  const auto before = values(*mup);
  CHECK_THROWS_WITH(io::load_state_dict(ntk_path, *mup),
                    Catch::Contains("scheme ntk in the file, mup in the model") && Catch::Contains("multiplier"));
  CHECK(same_values(*mup, before));
}

TEST_CASE("checkpoint records: save_state_dict / load_state_dict (state_dict files)", "[checkpoint][records]") {
  kern::test::TempDir dir;
  auto saved = mup_mlp();
  const std::string path = dir.file("model.safetensors");
  io::save_state_dict(path, *saved, {{"note", "width 64"}});
  const io::SafetensorsFile f = io::load_safetensors(path);
  CHECK(f.contains("4.weight"));  // keys as in the state_dict, as PyTorch's save_file writes
  CHECK(f.metadata.at("note") == "width 64");
  REQUIRE(f.metadata.count(param::kMetadataKey) == 1);

  const Tensor x = kern::randn({3, 6});
  auto fresh = mlp(64);
  CHECK_THROWS_WITH(io::load_state_dict(path, *fresh), Catch::Contains(path) && Catch::Contains("4.weight"));
  io::load_state_dict(path, *fresh, io::RecordsPolicy::Apply);
  CHECK(kern::max_abs_diff((*fresh)(x), (*saved)(x)) == 0.0);

  // A shape mismatch after the records passed: still nothing changes (records included).
  auto narrow = mup_mlp();
  io::save_state_dict(dir.file("narrow.safetensors"), *mlp(32));
  const auto before = values(*narrow);
  const auto records_before = param::records(*narrow);
  CHECK_THROWS(io::load_state_dict(dir.file("narrow.safetensors"), *narrow, io::RecordsPolicy::Apply));
  CHECK(same_values(*narrow, before));
  CHECK(param::compare(param::records(*narrow), records_before).empty());

  // A record for a parameter the model does not have is an error under Apply.
  auto other = std::make_shared<nn::Sequential>(nn::Linear(6, 64), nn::ReLU(), nn::Linear(64, 3));
  CHECK_THROWS_WITH(io::load_state_dict(path, *other, io::RecordsPolicy::Apply),
                    Catch::Contains("does not have as a parameter"));

  CHECK_THROWS_WITH(io::save_state_dict(dir.file("x.safetensors"), *saved, {{"kern.param", "{}"}}),
                    Catch::Contains("reserved prefix"));
}

TEST_CASE("kern inspect shows a checkpoint's parameterization records as a table", "[checkpoint][records][cli]") {
  kern::test::TempDir dir;
  auto saved = mup_mlp();
  const std::string path = dir.file("mup.safetensors");
  io::save_state_dict(path, *saved);
  const kern::test::RunResult r = kern::test::run_program({kern::test::kKern, "inspect", path}, dir);
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.out, Catch::Contains("kern.param: parameterization records, scheme mup, 6 parameters") &&
                        Catch::Contains("4.weight") && Catch::Contains("output") && Catch::Contains("lr_adam"));
  // Records that do not parse are shown as text with the reason (the file is still valid).
  const std::string odd = dir.file("odd.safetensors");
  io::save_safetensors(odd, {{"w", kern::ones({2})}}, {{"kern.param", "not json"}});
  const kern::test::RunResult s = kern::test::run_program({kern::test::kKern, "inspect", odd}, dir);
  REQUIRE(s.status == 0);
  CHECK_THAT(s.out, Catch::Contains("not valid parameterization records"));
}
