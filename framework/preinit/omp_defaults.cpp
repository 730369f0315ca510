// kern's OpenMP defaults for a shared machine, in place before libgomp starts.
//
// libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, in its own constructor. That runs
// before any constructor of libkern_*.so (they depend on it), and even an executable's
// .preinit_array cannot simply setenv(): it runs before libc's initialization, which then
// resets `environ` to the process's original environment block. So this hook, in the
// executable's .preinit_array (before any library constructor has run, no thread exists),
// re-executes the program once (/proc/self/exe, same pid, argv and open files) with the
// default added to its environment, as the JDK's launcher does for its own variables.
//
// The default: OMP_WAIT_POLICY=passive. A thread that waits for work (between parallel
// regions) or for a slower thread (at a region's end) sleeps in the kernel at once instead of
// spinning (libgomp's default spins 300000 iterations, about 3 ms). On a busy machine a
// spinning thread burns its time slice while the thread it waits for is descheduled: with two
// busy processes on the 2 cores, mlp_train took 11x its idle time with libgomp's default,
// 3.1x with a 10000-iteration spin and 2.2x passive. The price on an idle machine is the
// wake-up latency: +5% on mlp_train, +11% on a convnext_atto forward (README: "Performance on
// a shared machine" has the measurements; bench/shared_machine.py makes them).
//
// Nothing happens when the environment already sets OMP_WAIT_POLICY or GOMP_SPINCOUNT, when
// KERN_OMP_DEFAULTS=0, when the program was started through the dynamic loader
// (`ld.so ./prog`) or under valgrind, or when the re-execution fails (the program then runs with libgomp's
// defaults). Child processes inherit the variable.
//
// CMake links this file into every executable that links kern::kern (never into a shared
// library: the loader ignores .preinit_array there).
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

namespace {

constexpr char kDefault[] = "OMP_WAIT_POLICY=passive";

bool starts_with(const char* s, const char* prefix) { return std::strncmp(s, prefix, std::strlen(prefix)) == 0; }

void kern_omp_defaults(int, char** argv, char** envp) {
  if (!argv || !envp) return;
  size_t n = 0;
  for (; envp[n]; ++n) {
    if (starts_with(envp[n], "OMP_WAIT_POLICY=") || starts_with(envp[n], "GOMP_SPINCOUNT=")) return;
    if (starts_with(envp[n], "KERN_OMP_DEFAULTS=0")) return;
    // under valgrind the re-executed program would run outside of it
    if (starts_with(envp[n], "LD_PRELOAD=") && std::strstr(envp[n], "vgpreload")) return;
  }
  // Started as `ld-linux-x86-64.so.2 ./prog`: /proc/self/exe is the loader; leave it alone.
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len <= 0) return;
  exe[len] = '\0';
  const char* base = std::strrchr(exe, '/');
  base = base ? base + 1 : exe;
  if (starts_with(base, "ld-") || starts_with(base, "ld.so")) return;
  // libc is not initialized yet: no malloc, no getenv; the new block comes from mmap.
  void* mem = mmap(nullptr, (n + 2) * sizeof(char*), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return;
  char** env = static_cast<char**>(mem);
  for (size_t i = 0; i < n; ++i) env[i] = envp[i];
  env[n] = const_cast<char*>(kDefault);
  env[n + 1] = nullptr;
  execve("/proc/self/exe", argv, env);
  munmap(mem, (n + 2) * sizeof(char*));  // execve failed: carry on with libgomp's defaults
}

}  // namespace

// The loader calls the functions of an executable's .preinit_array with (argc, argv, envp)
// before it runs any shared library's initializer. `used`: kept though nothing names it.
extern "C" {
__attribute__((section(".preinit_array"), used)) void (*const kern_omp_defaults_preinit)(int, char**, char**) =
    kern_omp_defaults;
}
