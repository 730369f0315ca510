// Checkpoints: atomic writes survive a writer killed mid-save; resuming continues
// bit-identically (same losses, same weights) to an uninterrupted run.
#include <kern/kern.hpp>
#include <kern/optim/optim.hpp>

#include <catch2/catch.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

using namespace kern;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kern_ckpt_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::shared_ptr<nn::Sequential> small_model() {
  return std::make_shared<nn::Sequential>(nn::Linear(6, 32), nn::Tanh(), nn::Dropout(0.2), nn::Linear(32, 3));
}

// Trains epochs [first, last) and returns every batch loss.
std::vector<double> train(nn::Module& model, optim::SGD& opt, data::DataLoader& loader, int first, int last) {
  std::vector<double> losses;
  for (int e = first; e < last; ++e) {
    loader.set_epoch(e);
    for (auto& batch : loader) {
      Tensor loss = cross_entropy(model(batch.x), batch.y);
      opt.zero_grad();
      loss.backward();
      opt.step();
      losses.push_back(loss.item());
    }
  }
  return losses;
}

}  // namespace

TEST_CASE("resuming from a checkpoint continues bit-identically", "[checkpoint]") {
  Generator g(3);
  data::TensorDataset ds(randn({200, 6}, DType::Float32, &g), randint(0, 3, {200}, &g));
  const optim::SGDOptions sgd{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-4, .nesterov = true};
  fs::path dir = temp_dir("resume");

  manual_seed(11);
  auto full = small_model();
  optim::SGD opt_full(full->parameters(), sgd);
  data::DataLoader loader_full(ds, {.batch_size = 32, .seed = 5});
  auto losses_full = train(*full, opt_full, loader_full, 0, 3);

  manual_seed(11);
  auto first = small_model();
  optim::SGD opt_first(first->parameters(), sgd);
  data::DataLoader loader_first(ds, {.batch_size = 32, .seed = 5});
  auto losses_first = train(*first, opt_first, loader_first, 0, 1);
  io::save_checkpoint((dir / "ck.safetensors").string(), *first, opt_first, 1);

  manual_seed(999);  // a different initialization and generator state, all overwritten by the load
  auto resumed = small_model();
  optim::SGD opt_resumed(resumed->parameters(), sgd);
  REQUIRE(io::load_checkpoint((dir / "ck.safetensors").string(), *resumed, opt_resumed) == 1);
  data::DataLoader loader_resumed(ds, {.batch_size = 32, .seed = 5});
  auto losses_rest = train(*resumed, opt_resumed, loader_resumed, 1, 3);

  losses_first.insert(losses_first.end(), losses_rest.begin(), losses_rest.end());
  REQUIRE(losses_first == losses_full);
  auto a = full->state_dict(), b = resumed->state_dict();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    REQUIRE(max_abs_diff(a[i].second, b[i].second) == 0.0);
  }
  fs::remove_all(dir);
}

TEST_CASE("a writer killed during save leaves the previous checkpoint loadable", "[checkpoint]") {
  fs::path dir = temp_dir("kill");
  const std::string path = (dir / "ck.safetensors").string();
  auto model = small_model();
  optim::SGD opt(model->parameters(), {.lr = 0.1});
  io::save_checkpoint(path, *model, opt, 7);
  const auto before = io::read_checkpoint(path);
  for (int delay_ms : {5, 30, 80, 200}) {
    INFO("killed after " << delay_ms << " ms");
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // Child: keeps overwriting the checkpoint with a large (~256 MB) one until killed.
      io::Checkpoint big;
      big.model.emplace_back("huge", ones({64 * 1024 * 1024}));
      big.step = 8;
      for (;;) io::write_checkpoint(path, big);
    }
    usleep(delay_ms * 1000);
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    REQUIRE(WIFSIGNALED(status));
    // Either the old or a complete new checkpoint, never a torn one.
    io::Checkpoint after = io::read_checkpoint(path);
    if (after.step == 7) {
      REQUIRE(after.model.size() == before.model.size());
      for (size_t i = 0; i < after.model.size(); ++i)
        REQUIRE(max_abs_diff(after.model[i].second, before.model[i].second) == 0.0);
    } else {
      REQUIRE(after.step == 8);
      REQUIRE(after.model[0].second.numel() == 64 * 1024 * 1024);
    }
  }
  // The killed writers' temp files (up to 256 MB each) are removed by the next save.
  io::save_checkpoint(path, *model, opt, 9);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  REQUIRE(left == std::vector<std::string>{"ck.safetensors"});
  fs::remove_all(dir);
}

TEST_CASE("checkpoint errors name the file and the problem", "[checkpoint][errors]") {
  fs::path dir = temp_dir("errors");
  const std::string plain = (dir / "plain.safetensors").string();
  io::save_safetensors(plain, {{"w", ones({2})}});
  REQUIRE_THROWS_WITH(io::read_checkpoint(plain), Catch::Contains(plain) && Catch::Contains("not a kern checkpoint"));
  auto model = small_model();
  optim::SGD opt(model->parameters(), {.lr = 0.1});
  const std::string ck = (dir / "ck.safetensors").string();
  io::save_checkpoint(ck, *model, opt, 3);
  auto other = std::make_shared<nn::Sequential>(nn::Linear(6, 5));
  optim::SGD opt2(other->parameters(), {.lr = 0.1});
  REQUIRE_THROWS_WITH(io::load_checkpoint(ck, *other, opt2), Catch::Contains("missing") || Catch::Contains("unexpected"));
  REQUIRE_THROWS_WITH(io::read_checkpoint((dir / "absent.safetensors").string()), Catch::Contains("absent.safetensors"));
  fs::remove_all(dir);
}
