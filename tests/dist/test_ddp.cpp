// DistributedDataParallel == one process on the concatenated batch (issue 15): k = 5 SGD and
// AdamW steps of a small CNN, without BatchNorm and with SyncBatchNorm, and with no_sync
// accumulation. The reference runs inside every rank on the whole global batch with plain
// nn modules (no dist code): loss mean over n*B examples equals the mean over ranks of
// each rank's mean over B, so the parameters must agree to rounding.
#include "check.hpp"

#include <kern/dist/ddp.hpp>
#include <kern/dist/sync_batch_norm.hpp>
#include <kern/optim/optim.hpp>

#include <cstdlib>

using namespace kern;

namespace {

constexpr int64_t kB = 4;  // examples per rank and step
constexpr int kSteps = 5;

std::shared_ptr<nn::Module> make_cnn(bool batchnorm, DType dt, uint64_t seed) {
  manual_seed(seed);
  auto m = std::make_shared<nn::Sequential>();
  // No conv bias before BatchNorm (as in real CNNs): BN cancels it, its gradient is rounding
  // noise, and Adam's g / sqrt(v) would turn that noise into O(lr) updates in both runs.
  m->push_back(nn::Conv2d(nn::Conv2dOptions(3, 4, 3).padding(1).bias(!batchnorm)));
  if (batchnorm) m->push_back(nn::BatchNorm2d(4));
  m->push_back(nn::ReLU());
  m->push_back(nn::MaxPool2d(2));
  m->push_back(nn::Flatten());
  m->push_back(nn::Linear(4 * 4 * 4, 5));
  m->to(dt);
  return m;
}

enum class Opt { SGD, AdamW };
std::unique_ptr<optim::Optimizer> make_opt(std::vector<Tensor> params, Opt o) {
  if (o == Opt::SGD) return std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3});
  return std::make_unique<optim::AdamW>(params, optim::AdamWOptions{.lr = 1e-2, .weight_decay = 1e-2});
}

// The global batch of a step: [n*B, 3, 8, 8] and labels [n*B], the same on every rank.
std::pair<Tensor, Tensor> global_batch(int step, DType dt) {
  Generator gen(1000 + step);
  int64_t nb = kB * dist::world_size();
  Tensor x = randn({nb, 3, 8, 8}, dt, &gen);
  Tensor y = randint(0, 5, {nb}, &gen);
  return {x, y};
}

struct Case {
  DType dt;
  Opt opt;
  bool sync_bn = false;
  bool no_sync = false;
  double tol;
};

void compare(const nn::Module& got, const nn::Module& want, double tol, const char* what) {
  auto a = got.named_parameters(), b = want.named_parameters();
  DCHECK(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    double d = maxdiff(a[i].second, b[i].second);
    DCHECK(d <= tol, what, ": parameter ", a[i].first, " differs by ", d, " (tolerance ", tol, ")");
  }
  auto c = got.named_buffers(), e = want.named_buffers();
  DCHECK(c.size() == e.size());
  for (size_t i = 0; i < c.size(); ++i) {
    double d = maxdiff(c[i].second, e[i].second);
    DCHECK(d <= tol, what, ": buffer ", c[i].first, " differs by ", d);
  }
}

// One DDP training run: its own copy of the model, DDP and optimizer.
struct Replica {
  std::shared_ptr<nn::Module> local;
  std::shared_ptr<nn::DistributedDataParallel> ddp;
  std::unique_ptr<optim::Optimizer> opt;
};

// shared_memory = false: KERN_DIST_SHM=0 while the DDP is made (its buckets take MPI_Iallreduce).
Replica make_replica(const Case& c, bool shared_memory, bool grad_views) {
  const int r = dist::rank();
  Replica rep;
  // Different initial weights per rank: DDP must start every rank from rank 0's.
  rep.local = make_cnn(c.sync_bn, c.dt, 100 + r);
  if (c.sync_bn) rep.local = nn::convert_sync_batchnorm(rep.local);
  ShmOff off(!shared_memory);
  // A tiny bucket cap: several buckets, several all-reduces in flight during backward.
  rep.ddp = std::make_shared<nn::DistributedDataParallel>(
      rep.local, nn::DistributedDataParallelOptions().bucket_cap_mb(1e-3).gradient_as_bucket_view(grad_views));
  DCHECK(rep.ddp->bucket_layout().size() > 1, "expected several buckets");
  rep.opt = make_opt(rep.ddp->parameters(), c.opt);
  return rep;
}

// Every case trains three DDPs side by side: buckets in node shared memory (the default on
// one node), buckets reduced by MPI_Iallreduce (KERN_DIST_SHM=0), and shared memory with
// gradient_as_bucket_view. With 2 ranks the three must agree bit for bit (the shared-memory
// sum adds in MPI_Allreduce's order), and each must match one process on the global batch.
void run_case(const Case& c, const char* what) {
  const int r = dist::rank();
  std::vector<Replica> reps;
  reps.push_back(make_replica(c, true, false));
  reps.push_back(make_replica(c, false, false));
  reps.push_back(make_replica(c, true, true));
  const char* names[] = {"shared memory", "MPI_Iallreduce", "gradient_as_bucket_view"};
  auto ref = make_cnn(c.sync_bn, c.dt, 100);
  auto ref_opt = make_opt(ref->parameters(), c.opt);
  for (int step = 0; step < kSteps; ++step) {
    auto [x, y] = global_batch(step, c.dt);
    Tensor xr = x.narrow(0, r * kB, kB), yr = y.narrow(0, r * kB, kB);
    for (size_t k = 0; k < reps.size(); ++k) {
      auto& [local, ddp, opt] = reps[k];
      Tensor held = local->named_parameters().back().second.grad();  // the previous step's
      opt->zero_grad();
      if (c.no_sync) {
        // two micro-batches of B/2: the first accumulates locally, the second reduces the sum
        {
          auto guard = ddp->no_sync();
          cross_entropy((*ddp)(xr.narrow(0, 0, kB / 2)), yr.narrow(0, 0, kB / 2)).backward();
        }
        // not reduced yet: this rank's gradient differs from the other's
        auto parts = dist::all_gather(local->named_parameters().back().second.grad());
        DCHECK(maxdiff(parts[0], parts[1]) > 0, "no_sync: gradients were reduced");
        cross_entropy((*ddp)(xr.narrow(0, kB / 2, kB / 2)), yr.narrow(0, kB / 2, kB / 2)).backward();
      } else {
        cross_entropy((*ddp)(xr), yr).backward();
        // the first buckets (last layers) were reduced while backward still ran
        DCHECK(ddp->buckets_launched_early() >= 1, "no all-reduce overlapped backward");
      }
      // gradient_as_bucket_view: .grad is the bucket, which the next backward overwrote
      if (held.defined())
        DCHECK(held.shares_storage(local->named_parameters().back().second.grad()) == (k == 2), what, ": ",
               names[k], ": .grad of two steps share storage: ", k != 2);
      opt->step();
    }
    ref_opt->zero_grad();
    // the sum of n*2 micro-batch means over n ranks = 2 * the global mean
    Tensor ref_loss = cross_entropy((*ref)(x), y);
    if (c.no_sync) ref_loss = ref_loss * 2.0;
    ref_loss.backward();
    ref_opt->step();
  }
  compare(*reps[0].local, *ref, c.tol, what);
  for (size_t k = 1; k < reps.size(); ++k) {
    auto a = reps[0].local->named_parameters(), b = reps[k].local->named_parameters();
    for (size_t i = 0; i < a.size(); ++i)
      DCHECK(maxdiff(a[i].second, b[i].second) == 0.0, what, ": ", names[k], " differs from ", names[0],
             " in parameter ", a[i].first, " by ", maxdiff(a[i].second, b[i].second));
  }
}

Register r1("ddp_sgd_f64", [] { run_case({.dt = DType::Float64, .opt = Opt::SGD, .tol = 1e-12}, "ddp_sgd_f64"); });
Register r2("ddp_adamw_f64", [] { run_case({.dt = DType::Float64, .opt = Opt::AdamW, .tol = 1e-12}, "ddp_adamw_f64"); });
Register r3("ddp_sgd_f32", [] { run_case({.dt = DType::Float32, .opt = Opt::SGD, .tol = 1e-5}, "ddp_sgd_f32"); });
Register r4("ddp_adamw_f32", [] { run_case({.dt = DType::Float32, .opt = Opt::AdamW, .tol = 1e-5}, "ddp_adamw_f32"); });
Register r5("ddp_syncbn_sgd_f64", [] {
  run_case({.dt = DType::Float64, .opt = Opt::SGD, .sync_bn = true, .tol = 1e-12}, "ddp_syncbn_sgd_f64");
});
Register r6("ddp_syncbn_adamw_f64", [] {
  run_case({.dt = DType::Float64, .opt = Opt::AdamW, .sync_bn = true, .tol = 1e-12}, "ddp_syncbn_adamw_f64");
});
Register r7("ddp_syncbn_sgd_f32", [] {
  run_case({.dt = DType::Float32, .opt = Opt::SGD, .sync_bn = true, .tol = 1e-5}, "ddp_syncbn_sgd_f32");
});
Register r8("ddp_no_sync_sgd_f64", [] {
  run_case({.dt = DType::Float64, .opt = Opt::SGD, .no_sync = true, .tol = 1e-12}, "ddp_no_sync_sgd_f64");
});
Register r9("ddp_no_sync_adamw_f64", [] {
  run_case({.dt = DType::Float64, .opt = Opt::AdamW, .no_sync = true, .tol = 1e-12}, "ddp_no_sync_adamw_f64");
});

// A module with a parameter its forward never uses.
struct WithUnused : nn::Module {
  WithUnused() {
    fc = register_module("fc", std::make_shared<nn::Linear>(6, 3));
    unused = register_module("unused", std::make_shared<nn::Linear>(6, 3));
    to(DType::Float64);
  }
  Tensor forward(const Tensor& x) override { return (*fc)(x); }
  std::shared_ptr<nn::Linear> fc, unused;
};

struct UsedOnLastRank : WithUnused {
  bool use_unused = false;
  Tensor forward(const Tensor& x) override { return use_unused ? (*fc)(x) + (*unused)(x) : (*fc)(x); }
};

// (shared_memory, grad_views) as in run_case
void unused_parameters_with(bool shared_memory, bool grad_views) {
  const int r = dist::rank(), n = dist::world_size();
  ShmOff off(!shared_memory);  // for every DDP made here
  const auto options = nn::DistributedDataParallelOptions().gradient_as_bucket_view(grad_views);
  Generator gen(5);
  Tensor x = randn({2 * n, 6}, DType::Float64, &gen);
  Tensor y = randint(0, 3, {2 * n}, &gen);
  Tensor xr = x.narrow(0, 2 * r, 2), yr = y.narrow(0, 2 * r, 2);
  {
    auto ddp = std::make_shared<nn::DistributedDataParallel>(std::make_shared<WithUnused>(), options);
    DCHECK_THROWS(cross_entropy((*ddp)(xr), yr).backward(), "received no gradient", "module.unused.weight",
                  "module.unused.bias", "find_unused_parameters");
  }
  manual_seed(9);
  auto model = std::make_shared<WithUnused>();
  auto ddp = std::make_shared<nn::DistributedDataParallel>(model,
      nn::DistributedDataParallelOptions(options).find_unused_parameters(true));
  cross_entropy((*ddp)(xr), yr).backward();
  DCHECK(!model->unused->weight.tensor().grad().defined(), "a parameter no rank used keeps .grad undefined");
  // reference: the gradient of the global mean, in this process
  manual_seed(9);
  auto ref = std::make_shared<WithUnused>();
  cross_entropy((*ref)(x), y).backward();
  DCHECK(maxdiff(model->fc->weight.tensor().grad(), ref->fc->weight.tensor().grad()) <= 1e-14);
  DCHECK(maxdiff(model->fc->bias.tensor().grad(), ref->fc->bias.tensor().grad()) <= 1e-14);
  // `unused` used by the last rank only: every rank gets its averaged gradient (the others
  // reduce zeros for it)
  manual_seed(9);
  auto some = std::make_shared<UsedOnLastRank>();
  auto some_ddp = std::make_shared<nn::DistributedDataParallel>(some,
      nn::DistributedDataParallelOptions(options).find_unused_parameters(true));
  some->use_unused = r == n - 1;
  cross_entropy((*some_ddp)(xr), yr).backward();
  manual_seed(9);
  auto ref2 = std::make_shared<UsedOnLastRank>();
  Tensor ref_loss;
  for (int q = 0; q < n; ++q) {  // the mean over ranks of each rank's loss
    ref2->use_unused = q == n - 1;
    Tensor l = cross_entropy((*ref2)(x.narrow(0, 2 * q, 2)), y.narrow(0, 2 * q, 2)) / static_cast<double>(n);
    ref_loss = ref_loss.defined() ? ref_loss + l : l;
  }
  ref_loss.backward();
  auto got = some->named_parameters(), want = ref2->named_parameters();
  for (size_t i = 0; i < got.size(); ++i) {
    const Tensor g = got[i].second.grad();
    DCHECK(g.defined() && maxdiff(g, want[i].second.grad()) <= 1e-14, "used on the last rank only: ",
           got[i].first, "'s gradient differs from one process's");
  }
}
void unused_parameters() {
  unused_parameters_with(true, false);
  unused_parameters_with(false, false);
  unused_parameters_with(true, true);
}
Register r10("ddp_unused_parameters", unused_parameters);

// The fault test (tests/dist/fault.sh): rank 1 throws in the middle of training; the job
// must end non-zero, naming the rank and the error, while rank 0 waits in a collective.
void fault() {
  const int r = dist::rank();
  auto ddp = std::make_shared<nn::DistributedDataParallel>(make_cnn(false, DType::Float32, 1));
  auto opt = make_opt(ddp->parameters(), Opt::SGD);
  for (int step = 0; step < 100; ++step) {
    auto [x, y] = global_batch(step, DType::Float32);
    if (r == 1 && step == 3) throw Error("injected failure at step 3");
    opt->zero_grad();
    cross_entropy((*ddp)(x.narrow(0, r * kB, kB)), y.narrow(0, r * kB, kB)).backward();
    opt->step();
  }
}
Register r11("fault_injected", fault);

}  // namespace
