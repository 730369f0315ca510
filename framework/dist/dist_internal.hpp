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
