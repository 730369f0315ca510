// Accumulation kernels of the structured NTK: symmetric (block lower-triangle) Gram
// products with an optional per-sample-pair scale, batched small products, the pairwise
// contraction, and in-place additions into the kernel.
//
// Products run in ONE OpenMP region each, with single-threaded GEMMs inside (oneDNN sgemm
// and Eigen do not start threads inside a parallel region): a loop of kern::bmm/mm calls
// would pay a thread barrier per product, which on a loaded machine costs more than the
// products themselves. The GEMMs are the backend's own through kern::gemm (kern/gemm.hpp:
// oneDNN sgemm for float32 on the fast backend, Eigen otherwise), called with the destination's
// leading dimension and beta, so results land (or accumulate) in place: no temporaries,
// no copies, no per-call tensor overhead.
// Eigen's AVX-512 paths trip GCC 12's -Wmaybe-uninitialized inside the intrinsics headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>

#include <algorithm>
#include <exception>
#include <type_traits>
#include <utility>
#include <vector>

#include <kern/gemm.hpp>

#include "ntk_internal.hpp"

namespace kern::tools::detail {
namespace {

template <typename T>
MatrixRef<T> mat(const T* p, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return {p, rows, cols, rs, cs};
}

// K[r0 + i, c0 + j] += C[i, j] * q, q = Q[row / O, col / O] (or 1); with `mirror`, also
// K[c0 + j, r0 + i] += the same. With Q, r0, c0, rows and cols are multiples of O, so q is
// constant over runs of O entries (no division in the inner loops).
template <typename T>
void add_block(T* K, int64_t ldk, const T* C, int64_t rows, int64_t cols, int64_t r0, int64_t c0, const T* Q,
               int64_t ldq, int64_t O, bool mirror) {
#pragma omp parallel for schedule(static) if (rows * cols > 32768)
  for (int64_t i = 0; i < rows; ++i) {
    const T* crow = C + i * cols;
    T* krow = K + (r0 + i) * ldk + c0;
    if (Q) {
      const T* qrow = Q + ((r0 + i) / O) * ldq + c0 / O;
      for (int64_t jb = 0, b = 0; jb < cols; jb += O, ++b) {
        const T q = qrow[b];
        for (int64_t p = 0; p < O; ++p) krow[jb + p] += crow[jb + p] * q;
      }
    } else {
      for (int64_t j = 0; j < cols; ++j) krow[j] += crow[j];
    }
  }
  if (!mirror) return;
#pragma omp parallel for schedule(static) if (rows * cols > 32768)
  for (int64_t j = 0; j < cols; ++j) {
    T* krow = K + (c0 + j) * ldk + r0;
    if (Q) {
      const T* qcol = Q + (r0 / O) * ldq + (c0 + j) / O;
      for (int64_t ib = 0, b = 0; ib < rows; ib += O, ++b) {
        const T q = qcol[b * ldq];
        for (int64_t p = 0; p < O; ++p) krow[ib + p] += C[(ib + p) * cols + j] * q;
      }
    } else {
      for (int64_t i = 0; i < rows; ++i) krow[i] += C[i * cols + j];
    }
  }
}

// k[j, i] = k[i, j] for i > j, k [M, M] row-major, by 32 x 32 tiles (a plain loop writes
// with stride M: 4x slower). Serial: ~50 us for 320 x 320, less than a barrier costs on a
// loaded machine.
template <typename T>
void mirror_lower(T* k, int64_t M) {
  constexpr int64_t B = 32;
  for (int64_t i0 = 0; i0 < M; i0 += B)
    for (int64_t j0 = 0; j0 <= i0; j0 += B) {
      const int64_t ie = std::min(M, i0 + B), je = std::min(M, j0 + B);
      for (int64_t j = j0; j < je; ++j) {
        T* dst = k + j * M;
        for (int64_t i = std::max(i0, j + 1); i < ie; ++i) dst[i] = k[i * M + j];
      }
    }
}

// K += G1 G2^T by blocks of ~80 rows (or columns), all block products in ONE parallel
// region (dynamic schedule), each a single-threaded kern::gemm. With `symmetric`
// only the lower block triangle is multiplied: measured on these machines, the 80-row
// blocks of 320 x 320 x K beat one full product by ~25% through the saved upper triangle,
// and give the threads enough pieces to balance.
// Without Q the products accumulate straight into K (beta = 1) and, when symmetric, the
// lower triangle is computed by column panels K[j:, j:j+80] += G1[j:] G1[j:j+80]^T (the
// panel's 80 rows are packed once for all the rows below: 6.0 ms vs 7.9 ms for 80 x 80
// blocks of 320 x 320 x 4640, single thread; biggest panel first balances two threads),
// then the strict upper triangle is rewritten from the lower one (K is symmetric on entry,
// so this adds the mirrored blocks). With Q a block goes through a per-thread buffer and
// add_block (scaled, mirrored).
// (sgemm also runs ~25% faster with the operands features-major, G^T [F, M] as 'T','N',
// but transposing G costs as much on these memory-shared machines: measured equal.)
template <typename T>
void add_gram_t(Tensor& K, const Tensor& G1, const Tensor& G2, bool symmetric, const Tensor& Q, int64_t O) {
  const int64_t M1 = G1.size(0), M2 = G2.size(0), F = G1.size(1);
  T* k = K.data_ptr<T>();
  const T* g1 = G1.data_ptr<T>();
  const T* g2 = G2.data_ptr<T>();
  const T* q = Q.defined() ? Q.data_ptr<T>() : nullptr;
  const int64_t ldq = Q.defined() ? Q.size(1) : 0;
  // With Q, blocks are whole samples (multiples of O rows).
  const int64_t nb = std::max<int64_t>(1, (M1 + 40) / 80);
  const int64_t bs = ((M1 + nb - 1) / nb + O - 1) / O * O;
  // (row start, col start); col start -1: all columns; row start -1: the column panel of
  // rows [col start, M1)
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t i = 0; i < M1; i += bs) {
    if (!symmetric) blocks.emplace_back(i, -1);
    else if (!q) blocks.emplace_back(-1, i);
    else
      for (int64_t j = 0; j <= i; j += bs) blocks.emplace_back(i, j);
  }
  std::exception_ptr error;
#pragma omp parallel if (blocks.size() > 1)
  {
    std::vector<T> buf;
#pragma omp for schedule(dynamic, 1)
    for (size_t b = 0; b < blocks.size(); ++b) {
      try {
        const auto [i0, j] = blocks[b];
        const int64_t i = i0 < 0 ? j : i0, ri = i0 < 0 ? M1 - j : std::min(bs, M1 - i);
        const int64_t c0 = j < 0 ? 0 : j, cols = j < 0 ? M2 : std::min(bs, M1 - j);
        // rows [i, i + ri) of G1 times rows [c0, c0 + cols) of G1 (symmetric) or G2, transposed
        const auto a = mat<T>(g1 + i * F, ri, F, F, 1), bt = mat<T>((j >= 0 ? g1 : g2) + c0 * F, F, cols, 1, F);
        if (!q) {
          kern::gemm<T>(a, bt, k + i * M2 + c0, M2, T(1));
        } else {
          buf.resize(ri * cols);
          kern::gemm<T>(a, bt, buf.data(), cols, T(0));
          add_block<T>(k, M2, buf.data(), ri, cols, i, c0, q, ldq, O, j >= 0 && j != i);
        }
      } catch (...) {
#pragma omp critical(kern_ntk_gram)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
  if (symmetric && !q) mirror_lower<T>(k, M1);
}

template <typename T>
void add_into_t(Tensor& K, const Tensor& part) {
  Tensor p = part.contiguous();
  T* k = K.data_ptr<T>();
  const T* s = p.data_ptr<T>();
  const int64_t n = K.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) k[i] += s[i];
}

template <typename T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using ConstMap = Eigen::Map<const RowMat<T>, 0, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;
template <typename T>
using OutMap = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<Eigen::Dynamic>>;

template <typename T>
ConstMap<T> cmap(const T* p, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return ConstMap<T>(p, rows, cols, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(rs, cs));
}

// float32 on the fast backend: products of at least this many multiply-adds run as oneDNN
// sgemm straight into `out` (measured 84 GFLOP/s for 16 x 28 x 256 vs 57 for Eigen);
// smaller ones, other dtypes and layouts sgemm cannot take as Eigen products.
constexpr int64_t kSgemmMinWork = int64_t(1) << 12;

template <typename T>
void batched_matmul_t(const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t B = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  const T* pa = a.data_ptr<T>();
  const T* pb = b.data_ptr<T>();
  T* pc = out.data_ptr<T>();
  const auto &sa = a.strides(), &sb = b.strides(), &sc = out.strides();
  // Eigen's fast product kernels need a unit inner stride in the map's storage order:
  // row-major when the column stride is 1, column-major when the row stride is 1.
  using ColMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  using RowMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<Eigen::Dynamic>>;
  using ColMap = Eigen::Map<const ColMat, 0, Eigen::OuterStride<Eigen::Dynamic>>;
  const bool a_row = sa[2] == 1, a_col = !a_row && sa[1] == 1;
  const bool b_row = sb[2] == 1, b_col = !b_row && sb[1] == 1;
  const bool sgemm = std::is_same_v<T, float> && get_backend() == Backend::Fast && M * N * K >= kSgemmMinWork &&
                     gemm_fast_layout(mat<T>(pa, M, K, sa[1], sa[2])) && gemm_fast_layout(mat<T>(pb, K, N, sb[1], sb[2])) &&
                     sc[1] >= N;
  std::exception_ptr error;
#pragma omp parallel for schedule(static) if (B > 1 && B * M * N * K > 65536)
  for (int64_t i = 0; i < B; ++i) {
    if (sgemm) {
      try {
        kern::gemm<T>(mat<T>(pa + i * sa[0], M, K, sa[1], sa[2]), mat<T>(pb + i * sb[0], K, N, sb[1], sb[2]),
                pc + i * sc[0], sc[1], T(0));
      } catch (...) {
#pragma omp critical(kern_ntk_batched)
        if (!error) error = std::current_exception();
      }
      continue;
    }
    OutMap<T> C(pc + i * sc[0], M, N, Eigen::OuterStride<Eigen::Dynamic>(sc[1]));
    const T* ai = pa + i * sa[0];
    const T* bi = pb + i * sb[0];
    auto with_b = [&](const auto& A) {
      if (b_row) C.noalias() = A * RowMap(bi, K, N, Eigen::OuterStride<Eigen::Dynamic>(sb[1]));
      else if (b_col) C.noalias() = A * ColMap(bi, K, N, Eigen::OuterStride<Eigen::Dynamic>(sb[2]));
      else C.noalias() = A * cmap<T>(bi, K, N, sb[1], sb[2]);
    };
    if (a_row) with_b(RowMap(ai, M, K, Eigen::OuterStride<Eigen::Dynamic>(sa[1])));
    else if (a_col) with_b(ColMap(ai, M, K, Eigen::OuterStride<Eigen::Dynamic>(sa[2])));
    else with_b(cmap<T>(ai, M, K, sa[1], sa[2]));
  }
  if (error) std::rethrow_exception(error);
}

// c[o, p] = sum_k a[k, o] b[idx[k], p] for a [cnt, O], b [R, O] row-major: the O x O block
// of one sample pair over the rows of a that are not all zero (packed, see pairwise_t). O
// is a template constant (1..16) so the accumulators stay in registers; measured 44
// GFLOP/s for O = 10 vs 17 for Eigen and 21 for oneDNN on these tiny shapes.
template <typename T, int O>
void small_tn(const T* a, const int32_t* idx, int64_t cnt, const T* b, T* c) {
  T acc[O][O] = {};
  for (int64_t r = 0; r < cnt; ++r) {
    const T* ar = a + r * O;
    const T* br = b + int64_t(idx[r]) * O;
    for (int o = 0; o < O; ++o) {
      const T av = ar[o];
      for (int p = 0; p < O; ++p) acc[o][p] += av * br[p];
    }
  }
  for (int o = 0; o < O; ++o)
    for (int p = 0; p < O; ++p) c[o * O + p] = acc[o][p];
}

// The same for any O (> 16), accumulators in c.
template <typename T>
void small_tn_any(const T* a, const int32_t* idx, int64_t cnt, const T* b, int64_t O, T* c) {
  std::fill(c, c + O * O, T(0));
  for (int64_t r = 0; r < cnt; ++r) {
    const T* ar = a + r * O;
    const T* br = b + int64_t(idx[r]) * O;
    for (int64_t o = 0; o < O; ++o)
      for (int64_t p = 0; p < O; ++p) c[o * O + p] += ar[o] * br[p];
  }
}

template <typename T>
using SmallTn = void (*)(const T*, const int32_t*, int64_t, const T*, T*);

template <typename T, int... Os>
SmallTn<T> pick_small_tn(int64_t O, std::integer_sequence<int, Os...>) {
  SmallTn<T> f = nullptr;
  ((O == Os + 1 ? (f = &small_tn<T, Os + 1>, 0) : 0), ...);
  return f;
}

// K[(n,o),(m,p)] += sum_{s,t} Q[(n,s),(m,t)] <D1[n,s,:,o], D2[m,t,:,p]>, one parallel
// region over m: U = Q[(n,s), m-block] D2[m] ([N1*S, S] x [S, og*O], one GEMM), then per
// n K_nm = D1[n]^T U[n] ([O, S*og] x [S*og, O]). sym: D2 is D1, only n >= m, mirrored.
// The rows (s, c) of D1[n] that are zero for every o (a ReLU's inactive units: about half
// of them) add nothing, so D1 is first packed to its nonzero rows (the sum over the rest
// is skipped, not rounded differently: those terms are exact zeros).
template <typename T>
void pairwise_t(Tensor& K, const Tensor& Q, const Tensor& D1, const Tensor& D2, bool sym) {
  const int64_t N1 = D1.size(0), N2 = D2.size(0), S = D1.size(1), og = D1.size(2), O = D1.size(3);
  const int64_t R = S * og, ldq = Q.size(1), ldk = K.size(1);
  KERN_CHECK(R < (int64_t(1) << 31), "ntk: pairwise form with ", R, " rows per sample");
  const T* q = Q.data_ptr<T>();
  const T* d1 = D1.data_ptr<T>();
  const T* d2 = D2.data_ptr<T>();
  T* k = K.data_ptr<T>();
  const SmallTn<T> tn = pick_small_tn<T>(O, std::make_integer_sequence<int, 16>());
  // Packed D1: sample n's nonzero rows are packed[start[n] .. start[n + 1]), their row
  // numbers in idx.
  std::vector<T> packed;
  std::vector<int32_t> idx;
  std::vector<int64_t> start(N1 + 1, 0);
  packed.reserve(N1 * R * O);
  idx.reserve(N1 * R);
  for (int64_t n = 0; n < N1; ++n) {
    for (int64_t r = 0; r < R; ++r) {
      const T* row = d1 + (n * R + r) * O;
      if (std::any_of(row, row + O, [](T v) { return v != T(0); })) {
        packed.insert(packed.end(), row, row + O);
        idx.push_back(static_cast<int32_t>(r));
      }
    }
    start[n + 1] = static_cast<int64_t>(idx.size());
  }
  std::exception_ptr error;
#pragma omp parallel
  {
    std::vector<T> U, blk(O * O);
#pragma omp for schedule(dynamic, 1)
    for (int64_t m = 0; m < N2; ++m) {
      try {
        const int64_t n0 = sym ? m : 0, cnt = N1 - n0;
        U.resize(cnt * R * O);
        kern::gemm<T>(mat<T>(q + n0 * S * ldq + m * S, cnt * S, S, ldq, 1), mat<T>(d2 + m * R * O, S, og * O, og * O, 1),
                U.data(), og * O, T(0));
        for (int64_t n = n0; n < N1; ++n) {
          const T* a = packed.data() + start[n] * O;
          const int32_t* rows = idx.data() + start[n];
          const int64_t nnz = start[n + 1] - start[n];
          const T* b = U.data() + (n - n0) * R * O;
          if (tn) tn(a, rows, nnz, b, blk.data());
          else small_tn_any<T>(a, rows, nnz, b, O, blk.data());
          for (int64_t o = 0; o < O; ++o)
            for (int64_t p = 0; p < O; ++p) {
              k[(n * O + o) * ldk + m * O + p] += blk[o * O + p];
              if (sym && n != m) k[(m * O + p) * ldk + n * O + o] += blk[o * O + p];
            }
        }
      } catch (...) {
#pragma omp critical(kern_ntk_pairwise)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace

void batched_matmul(const Tensor& a, const Tensor& b, Tensor& out) {
  KERN_CHECK(a.dim() == 3 && b.dim() == 3 && out.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(1) &&
                 out.size(0) == a.size(0) && out.size(1) == a.size(1) && out.size(2) == b.size(2) && out.stride(2) == 1,
             "ntk: batched_matmul: ", a.shape(), " x ", b.shape(), " -> ", out.shape());
  if (a.dtype() == DType::Float64) batched_matmul_t<double>(a, b, out);
  else batched_matmul_t<float>(a, b, out);
}

void add_pairwise(Tensor& K, const Tensor& Q, const Tensor& D1, const Tensor& D2, bool sym) {
  KERN_CHECK(K.is_contiguous() && Q.is_contiguous() && D1.is_contiguous() && D2.is_contiguous(),
             "ntk: add_pairwise needs contiguous operands");
  if (K.dtype() == DType::Float64) pairwise_t<double>(K, Q, D1, D2, sym);
  else pairwise_t<float>(K, Q, D1, D2, sym);
}

void add_gram(Tensor& K, const Tensor& G1, const Tensor& G2, bool symmetric, const Tensor& Q, int64_t O) {
  NoGradGuard ng;
  KERN_CHECK(K.is_contiguous() && K.dim() == 2 && K.size(0) == G1.size(0) && K.size(1) == G2.size(0),
             "ntk: add_gram: kernel ", K.shape(), " does not match ", G1.shape(), " x ", G2.shape());
  Tensor q = Q.defined() ? Q.contiguous() : Q;
  Tensor g1 = G1.contiguous(), g2 = symmetric ? g1 : G2.contiguous();
  if (K.dtype() == DType::Float64) add_gram_t<double>(K, g1, g2, symmetric, q, O);
  else add_gram_t<float>(K, g1, g2, symmetric, q, O);
}

void add_into(Tensor& K, const Tensor& part) {
  NoGradGuard ng;
  KERN_CHECK(K.is_contiguous() && part.shape() == K.shape() && part.dtype() == K.dtype(), "ntk: add_into: ",
             K.shape(), " += ", part.shape());
  if (K.dtype() == DType::Float64) add_into_t<double>(K, part);
  else add_into_t<float>(K, part);
}

}  // namespace kern::tools::detail
