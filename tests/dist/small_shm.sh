#!/bin/sh
# all_reduce_async and ReduceBuffers in a 12 MB /dev/shm (mounted in a private mount namespace:
# needs root and unshare, else the test is skipped): async_all_reduce's sums would grow the
# shared-memory window to 24 MB per rank, which does not fit; they must take MPI_Iallreduce
# and still equal MPI_Allreduce's bit for bit (without the room check MPI_Win_allocate_shared
# failed with MPI_ERR_INTERN). The tests expect shared memory only where the library's room
# rule finds room (dist::detail::async_window_room, reduce_buffers_room), so they run
# unchanged here. `timeout 100` only guards this script: a run that needs it fails.
#   small_shm.sh MPIRUN KERN_DIST_TESTS
mpirun="$1"; bin="$2"
if ! unshare -m sh -c 'mount -t tmpfs -o size=1m tmpfs /dev/shm' 2>/dev/null; then
  echo "small_shm.sh: SKIP: cannot mount a private /dev/shm (needs root and unshare)"
  exit 77
fi
OMP_NUM_THREADS=1 timeout 100 unshare -m sh -c \
  'mount -t tmpfs -o size=12m tmpfs /dev/shm && df -h /dev/shm && exec "$0" -np 2 --oversubscribe --allow-run-as-root "$1" collectives async_all_reduce' \
  "$mpirun" "$bin"
rc=$?
[ "$rc" -ne 124 ] || { echo "small_shm.sh: FAIL: the job hung (killed by timeout after 100 s)"; exit 1; }
[ "$rc" -eq 0 ] || { echo "small_shm.sh: FAIL: exit status $rc"; exit 1; }
echo "small_shm.sh: PASS"
