#pragma once
// Indexing ops with int64 indices, differentiable in their float argument.
#include <kern/tensor.hpp>

namespace kern {

/// x: [..., n, ...] along dim, index: [k] int64 -> [..., k, ...]
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
/// out[i][j] = x[i][index[i][j]] (dim = 1), torch.gather; index has x's rank.
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
/// self + scatter of src: out[i][index[i][j]] += src[i][j] (dim = 1), torch.scatter_add.
Tensor scatter_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src);
/// self + src rows added at index along dim, torch.index_add.
Tensor index_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src);
/// One-hot rows: labels [N] int64 -> [N, num_classes] of dtype.
Tensor one_hot(const Tensor& labels, int64_t num_classes, DType dtype = DType::Float32);

}  // namespace kern
