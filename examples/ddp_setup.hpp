// --ddp for the training examples (fashion_mnist, zoo_train): data parallel over the ranks of
// an mpirun job, with kern::dist when kern was built with MPI (KERN_EXAMPLE_DIST) and a clear
// error when it was not. Keeps the examples free of #ifdefs.
#pragma once

#include <kern/kern.hpp>
#ifdef KERN_EXAMPLE_DIST
#include <kern/dist/ddp.hpp>
#endif

#include <exception>
#include <memory>
#include <optional>
#include <string>

namespace examples {

// This process's place in the job: rank 0 of 1 without --ddp.
struct Ranks {
#ifdef KERN_EXAMPLE_DIST
  std::optional<kern::dist::Environment> env;  // MPI, started by start_ranks with --ddp
#endif
  bool ddp = false;
  int rank = 0, world = 1;
};

// Starts MPI when ddp is set; a rank then runs one thread unless threads_given. Returns false
// after printing "<program>: error: ..." when this kern was built without MPI.
inline bool start_ranks(const std::string& program, bool ddp, bool threads_given, int& argc, char**& argv,
                        int& threads, Ranks& r) {
  if (!ddp) return true;
#ifdef KERN_EXAMPLE_DIST
  r.env.emplace(argc, argv);
  r.ddp = true;
  r.rank = kern::dist::rank();
  r.world = kern::dist::world_size();
  if (!threads_given) threads = 1;
  return true;
#else
  (void)threads_given, (void)argc, (void)argv, (void)threads, (void)r;
  fmt::print(stderr, "{}: error: --ddp: this kern was built without MPI (KERN_WITH_MPI=OFF)\n", program);
  return false;
#endif
}

// What forward runs: the model itself, or DistributedDataParallel around it (which broadcasts
// rank 0's initial weights).
inline std::shared_ptr<kern::nn::Module> wrap_ddp(const Ranks& r, std::shared_ptr<kern::nn::Module> model) {
#ifdef KERN_EXAMPLE_DIST
  if (r.ddp) return std::make_shared<kern::nn::DistributedDataParallel>(model);
#else
  (void)r;
#endif
  return model;
}

// The mean of a scalar over the ranks (itself without --ddp).
inline kern::Tensor mean_over_ranks(const Ranks& r, const kern::Tensor& scalar) {
#ifdef KERN_EXAMPLE_DIST
  if (r.ddp) {
    kern::Tensor t = scalar.detach().reshape({1}).contiguous().clone();
    kern::dist::all_reduce(t, kern::dist::ReduceOp::Mean);
    return t;
  }
#else
  (void)r;
#endif
  return scalar;
}

// Reports an error and returns the exit code 1; under --ddp it ends every rank of the job
// (a rank that returned alone would leave the others waiting in a collective).
inline int fail(const std::string& program, const Ranks& r, const std::exception& e) {
#ifdef KERN_EXAMPLE_DIST
  if (r.ddp) kern::dist::abort(fmt::format("{}: error: {}", program, e.what()));
#else
  (void)r;
#endif
  fmt::print(stderr, "{}: error: {}\n", program, e.what());
  return 1;
}

}  // namespace examples
