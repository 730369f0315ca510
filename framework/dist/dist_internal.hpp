#pragma once
#ifndef KERN_BUILDING_FRAMEWORK  // private to kern_dist: see CMakeLists.txt (layering)
#error "framework/dist/dist_internal.hpp is private to kern_dist"
#endif
// What kern_dist's MPI front end (dist.cpp) and its node shared memory (shared_memory.cpp)
// share. Not installed (it includes mpi.h, which the public headers never do).
#include <kern/dist/dist.hpp>

#include <mpi.h>

namespace kern::dist::detail {

// ---- dist.cpp

/// MPI's return code -> kern::Error naming the call.
void check_mpi(int rc, const char* call);
/// kern's duplicate of MPI_COMM_WORLD; throws when no Environment is alive.
MPI_Comm comm();
/// float32 / float64 / int64 -> MPI's type; throws naming dist::<op> otherwise.
MPI_Datatype mpi_type(DType d, const char* op);
/// The most elements one MPI call carries: 2^31 - 1 (MPI's int count), or KERN_DIST_MAX_COUNT
/// when that is smaller (>= 1; tests of the collectives cut into pieces). all_reduce,
/// broadcast and all_gather agree on the smallest over the ranks.
int64_t max_count();

// ---- shared_memory.cpp

/// Collective over kern's communicator (at environment start): is every rank on this node,
/// and does no rank set KERN_DIST_SHM=0? Makes the node communicator.
void shm_probe();
/// True when shm_probe found every rank on this node with shared memory wanted.
bool shm_usable();
/// At the end of the Environment: frees ReduceBuffers' windows, all_reduce_async's window and
/// the node communicator (collective).
void shm_teardown();
/// Collective over the node: t (contiguous float32/float64) = the sum of t over the ranks,
/// through all_reduce_async's window. Returns false on every rank, t untouched, when the
/// window cannot grow to t's size (too little room in /dev/shm on some rank): the caller
/// reduces otherwise (MPI_Iallreduce).
bool shm_sum(Tensor& t);

}  // namespace kern::dist::detail
