// Checkpoint and resume under DDP (issue 15, item 3): rank 0 writes the checkpoint, every rank
// reads it, and the resumed run is bit-identical to the uninterrupted one.
//
// Run A trains 3 epochs of a small BatchNorm CNN with AdamW, a cosine schedule and a shuffling
// DistributedSampler, and rank 0 saves a checkpoint after epoch 1. Run B builds everything
// afresh from a different initialization, loads that checkpoint on every rank and trains
// epochs 2..3. Parameters, BatchNorm buffers and the optimizer state must be equal bit for bit
// (maxdiff == 0), on both ranks.
#include "check.hpp"

#include <kern/dist/ddp.hpp>
#include <kern/optim/optim.hpp>

#include <unistd.h>

#include <filesystem>

using namespace kern;

namespace {

constexpr int64_t kExamples = 38;  // not a multiple of 2 ranks x 4: the sampler pads
constexpr int64_t kBatchPerRank = 4;
constexpr int64_t kEpochs = 3;
constexpr int64_t kSeed = 11;

std::shared_ptr<nn::Module> make_net(uint64_t init_seed) {
  manual_seed(init_seed);
  auto m = std::make_shared<nn::Sequential>();
  m->push_back(nn::Conv2d(nn::Conv2dOptions(3, 4, 3).padding(1).bias(false)));
  m->push_back(nn::BatchNorm2d(4));
  m->push_back(nn::ReLU());
  m->push_back(nn::MaxPool2d(2));
  m->push_back(nn::Flatten());
  m->push_back(nn::Linear(4 * 4 * 4, 5));
  m->to(DType::Float64);
  return m;
}

struct Run {
  std::shared_ptr<nn::Module> model;
  std::shared_ptr<nn::DistributedDataParallel> ddp;
  std::unique_ptr<optim::AdamW> opt;
  std::unique_ptr<optim::CosineAnnealingLR> schedule;
  data::DistributedSampler sampler;
  int64_t steps_per_epoch;

  Run(uint64_t init_seed, int64_t size)
      : model(make_net(init_seed)),
        sampler(size, {.num_replicas = dist::world_size(), .rank = dist::rank(), .shuffle = true, .seed = kSeed}) {
    ddp = std::make_shared<nn::DistributedDataParallel>(model);
    opt = std::make_unique<optim::AdamW>(ddp->parameters(), optim::AdamWOptions{.lr = 1e-2, .weight_decay = 1e-2});
    steps_per_epoch = static_cast<int64_t>(sampler.batches(kBatchPerRank).size());
    schedule = std::make_unique<optim::CosineAnnealingLR>(*opt, kEpochs * steps_per_epoch);
  }

  // Trains epochs [first, last); after each finished epoch calls on_epoch(epoch, step).
  void train(const data::TensorDataset& ds, int64_t first, int64_t last,
             const std::function<void(int64_t, int64_t)>& on_epoch = {}) {
    int64_t step = first * steps_per_epoch;
    for (int64_t epoch = first; epoch < last; ++epoch) {
      sampler.set_epoch(epoch);
      for (auto& idx : sampler.batches(kBatchPerRank)) {
        auto batch = ds.get_batch(idx);
        opt->zero_grad();
        cross_entropy((*ddp)(batch.x), batch.y).backward();
        opt->step();
        schedule->step();
        ++step;
      }
      if (on_epoch) on_epoch(epoch, step);
    }
  }
};

void expect_bit_identical(const std::vector<std::pair<std::string, Tensor>>& got,
                          const std::vector<std::pair<std::string, Tensor>>& want, const char* what) {
  DCHECK(got.size() == want.size(), what, ": ", got.size(), " vs ", want.size(), " entries");
  for (size_t i = 0; i < got.size(); ++i) {
    DCHECK(got[i].first == want[i].first, what, ": ", got[i].first, " vs ", want[i].first);
    DCHECK(got[i].second.shape() == want[i].second.shape(), what, ": ", got[i].first, " shapes differ");
    const double d = maxdiff(got[i].second, want[i].second);
    DCHECK(d == 0.0, what, ": ", got[i].first, " differs by ", d, " after resume (must be bit-identical)");
  }
}

void ddp_resume() {
  Generator gen(3);
  data::TensorDataset ds(randn({kExamples, 3, 8, 8}, DType::Float64, &gen), randint(0, 5, {kExamples}, &gen));

  // rank 0 picks the checkpoint's directory (its pid) and tells the others
  Tensor pid = full({1}, static_cast<double>(::getpid()), DType::Int64);
  dist::broadcast(pid);
  const auto dir = std::filesystem::temp_directory_path() /
                   ("kern_ddp_resume_" + std::to_string(pid.to_vector<int64_t>()[0]));
  const std::string path = (dir / "epoch1.safetensors").string();
  if (dist::rank() == 0) std::filesystem::create_directories(dir);

  // A: uninterrupted; rank 0 saves after epoch 1 (as examples/fashion_mnist does)
  Run a(100 + dist::rank(), kExamples);  // different inits per rank: DDP broadcasts rank 0's
  a.train(ds, 0, kEpochs, [&](int64_t epoch, int64_t step) {
    if (epoch == 0 && dist::rank() == 0) io::save_checkpoint(path, *a.model, *a.opt, step);
  });
  dist::barrier();  // the file is complete before anyone reads it

  // B: a fresh model from another init, resumed on every rank from rank 0's file
  Run b(500 + dist::rank(), kExamples);
  const int64_t step = io::load_checkpoint(path, *b.model, *b.opt);
  DCHECK(step == b.steps_per_epoch, "checkpoint step ", step, ", expected ", b.steps_per_epoch);
  b.schedule->set_step(step);
  b.train(ds, step / b.steps_per_epoch, kEpochs);

  expect_bit_identical(b.model->state_dict(), a.model->state_dict(), "model state");
  expect_bit_identical(b.opt->state_dict(), a.opt->state_dict(), "optimizer state");
  // and the ranks agree with each other
  for (auto& [name, t] : a.model->named_parameters()) {
    auto parts = dist::all_gather(t);
    DCHECK(maxdiff(parts[0], parts[1]) == 0.0, name, " differs between ranks");
  }
  dist::barrier();
  if (dist::rank() == 0) std::filesystem::remove_all(dir);
}
Register r("ddp_resume_bit_identical", ddp_resume);

}  // namespace
